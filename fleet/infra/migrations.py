"""Re-runnable CQL migrations from ``schemas/cql/NNN_name.cql``.

Each file is applied once per keyspace, in number order, and recorded in
``<keyspace>.schema_migrations`` (version = file stem, with a checksum). Files name tables without
a keyspace: the session is set to the target keyspace, so tests can migrate a throwaway one.

File format: CQL statements, each ending with ``;`` at the end of a line; lines that are only a
``--`` or ``//`` comment are dropped. Statements should use ``IF NOT EXISTS`` so a migration that
failed halfway can simply be run again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.config import Settings
from fleet.infra.errors import InfraError

if TYPE_CHECKING:  # the driver ships no type hints: Any to mypy, a name for the reader
    from cassandra.cluster import Session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "schemas" / "cql"
_FILE_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.cql$")
# Keyspace names are interpolated into CQL, so they must be plain identifiers.
_KEYSPACE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    applied_at timestamp,
    checksum text
)"""


@dataclass(frozen=True)
class Migration:
    number: int
    version: str  # the file stem, e.g. "001_registry"
    path: Path
    statements: tuple[str, ...]
    checksum: str


def split_statements(text: str) -> list[str]:
    """Split CQL text into statements at lines ending with ``;`` (the ``;`` is dropped)."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not current and not stripped:
            continue
        if stripped.startswith(("--", "//")):
            continue
        current.append(line.rstrip())
        if stripped.endswith(";"):
            statement = "\n".join(current).strip()[:-1].strip()
            if statement:
                statements.append(statement)
            current = []
    leftover = "\n".join(current).strip()
    if leftover:
        raise ValueError(f"unterminated statement (no ';' at a line end): {leftover[:80]!r}")
    return statements


def load_migration(path: Path) -> Migration:
    match = _FILE_NAME.match(path.name)
    if not match:
        raise ValueError(f"migration file name must look like 001_name.cql: {path.name}")
    text = path.read_text(encoding="utf-8")
    try:
        statements = split_statements(text)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    return Migration(
        number=int(match.group(1)), version=path.stem, path=path, statements=tuple(statements),
        checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migrations in ``directory`` in number order; other files are ignored."""
    migrations = sorted(
        (load_migration(p) for p in directory.glob("*.cql") if _FILE_NAME.match(p.name)),
        key=lambda m: m.number,
    )
    seen: dict[int, str] = {}
    for m in migrations:
        if m.number in seen:
            raise ValueError(f"two migrations numbered {m.number:03d}: {seen[m.number]} and {m.path.name}")
        seen[m.number] = m.path.name
    return migrations


def apply_migrations(settings: Settings, session: Session | None = None, keyspace: str | None = None,
                     directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Create the keyspace if absent and apply the pending migrations; returns the versions applied.

    ``session``: an open cassandra-driver Session (its keyspace is switched to ``keyspace`` and
    back); without one a session is opened and closed here.
    """
    keyspace = keyspace or settings.cassandra_keyspace
    if not _KEYSPACE_NAME.match(keyspace):
        raise InfraError(f"invalid keyspace name {keyspace!r}")
    migrations = discover(directory)
    own_session = session is None
    if session is None:
        from fleet.infra.cassandra import open_session

        session = open_session(settings)
    previous_keyspace = session.keyspace
    try:
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            f"{{'class': 'SimpleStrategy', 'replication_factor': {int(settings.cassandra_replication_factor)}}}"
        )
        session.set_keyspace(keyspace)
        session.execute(MIGRATIONS_TABLE)
        applied = {row.version: row.checksum for row in session.execute("SELECT version, checksum FROM schema_migrations")}
        done: list[str] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    # Applied migrations are history: a change needs a new file, not an edit.
                    log.warning("migration %s changed after it was applied to %s; not re-applied "
                                "(add a new migration instead)", m.version, keyspace)
                continue
            for statement in m.statements:
                try:
                    session.execute(statement)
                except Exception as exc:
                    raise InfraError(f"migration {m.path.name} failed on keyspace {keyspace}: {exc}\n"
                                     f"statement:\n{statement}") from exc
            session.execute(
                "INSERT INTO schema_migrations (version, applied_at, checksum) VALUES (%s, toTimestamp(now()), %s)",
                (m.version, m.checksum),
            )
            log.info("applied migration %s to keyspace %s", m.version, keyspace)
            done.append(m.version)
        return done
    finally:
        if own_session:
            session.cluster.shutdown()
        elif previous_keyspace and previous_keyspace != keyspace:
            session.set_keyspace(previous_keyspace)
