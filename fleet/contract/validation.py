"""Compiled JSON Schema checks for device payloads (schemas/mqtt/*.schema.json).

The schema files (draft 2020-12) are the contract. For speed on the bridge's hot path they are
compiled to plain Python with fastjsonschema when it is installed (a few microseconds per
telemetry message against tens with jsonschema); jsonschema's validator is the reference and
is used to explain a failure (JSON path + message) and as the fallback. The schemas use only
keywords whose meaning is identical across drafts 2019-09 and 2020-12 (fastjsonschema's newest
generator), and tests/unit/test_validation.py checks both engines agree on every table case.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from fleet.contract.topics import Uplink

try:  # Optional accelerator; the reference validator alone is correct, just slower.
    import fastjsonschema
except ImportError:  # pragma: no cover - exercised only where fastjsonschema is absent
    # A None module stands for "not installed"; a typed alternative would hide the module's own hints.
    fastjsonschema = None  # type: ignore[assignment]

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


class SchemaViolation(ValueError):
    """A payload that does not match its schema; str() is '<json path>: <message>'."""


def load_schema(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        schema: dict[str, Any] = json.load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def explain(validator: jsonschema.protocols.Validator, instance: Any) -> str:
    """The most relevant error as '$.path.to.field: message' (only called on failure)."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return "$: valid according to the reference validator"
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message
    if len(message) > 300:  # messages embed the offending value, which may be large
        message = message[:297] + "..."
    return f"{path}: {message}"


@dataclass(frozen=True)
class CompiledSchema:
    name: str
    schema: dict[str, Any]
    reference: jsonschema.protocols.Validator
    # Returns True/False without building error objects: the hot path.
    is_valid: Callable[[Any], bool]

    def check(self, instance: Any) -> None:
        if not self.is_valid(instance):
            raise SchemaViolation(explain(self.reference, instance))


def compile_schema(name: str, schema: dict[str, Any], engine: str = "auto") -> CompiledSchema:
    """engine: "auto" (fastjsonschema if installed), "fast" or "reference"."""
    reference = jsonschema.Draft202012Validator(schema)
    use_fast = engine == "fast" or (engine == "auto" and fastjsonschema is not None)
    if use_fast:
        if fastjsonschema is None:
            raise RuntimeError("fastjsonschema is not installed")
        # (detailed_exceptions=False would save little and breaks if/then/else in 2.22.)
        fast = fastjsonschema.compile(schema, use_default=False, use_formats=False)
        exc = fastjsonschema.JsonSchemaValueException

        def is_valid(instance: Any) -> bool:
            try:
                fast(instance)
            except exc:
                return False
            return True
    else:
        is_valid = reference.is_valid
    return CompiledSchema(name, schema, reference, is_valid)


class UplinkValidators:
    """One compiled schema per uplink kind, looked up by Uplink."""

    def __init__(self, schema_dir: Path = DEFAULT_SCHEMA_DIR, engine: str = "auto"):
        self.schema_dir = schema_dir
        self.engine = engine
        self._by_kind: Mapping[Uplink, CompiledSchema] = {
            kind: compile_schema(kind.schema_name, load_schema(schema_dir / "mqtt" / f"{kind.schema_name}.schema.json"), engine)
            for kind in Uplink
        }

    def __getitem__(self, kind: Uplink) -> CompiledSchema:
        return self._by_kind[kind]


@lru_cache(maxsize=4)
def default_validators(engine: str = "auto") -> UplinkValidators:
    """Validators for the repository's schemas, compiled once per process (compiling costs ms)."""
    return UplinkValidators(DEFAULT_SCHEMA_DIR, engine)


@cache
def kafka_schema(name: str) -> CompiledSchema:
    """schemas/kafka/<name>.schema.json, e.g. "envelope" or "dead-letter" (for tests and consumers)."""
    return compile_schema(name, load_schema(DEFAULT_SCHEMA_DIR / "kafka" / f"{name}.schema.json"))
