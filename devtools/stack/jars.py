"""Pinned jar sets resolved once from Maven Central and cached under ``<var>/jars/<set>``.

Each set has its own POM in ``devtools/stack/maven/<set>/pom.xml`` so services with conflicting
dependencies (Kafka, Cassandra, Flink connectors) never share a classpath. A set is resolved
again only when its POM changes (a hash is stored beside the jars): a second start downloads
nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from devtools.stack.process import StackError, run_checked

MAVEN_DIR = Path(__file__).resolve().parent / "maven"


def pom_path(jar_set: str) -> Path:
    return MAVEN_DIR / jar_set / "pom.xml"


def resolve(jar_set: str, jar_root: Path) -> Path:
    """Directory holding every jar of ``jar_set``, downloading them on first use."""
    pom = pom_path(jar_set)
    if not pom.exists():
        raise StackError(f"no jar manifest for {jar_set!r} at {pom}")
    target = jar_root / jar_set
    stamp = target / ".pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest and any(target.glob("*.jar")):
        return target
    if shutil.which("mvn") is None:
        raise StackError("Maven ('mvn') is needed once to download the service jars; install the 'maven' package")
    staging = jar_root / f".{jar_set}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run_checked(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        what=f"resolving the {jar_set} jars from Maven Central",
        timeout=1800,
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    stamp.write_text(digest)
    return target


def classpath(jar_dir: Path) -> str:
    return ":".join(str(p) for p in sorted(jar_dir.glob("*.jar")))


def find_jar(jar_dir: Path, prefix: str) -> Path:
    matches = sorted(jar_dir.glob(f"{prefix}*.jar"))
    if not matches:
        raise StackError(f"no jar starting with {prefix!r} in {jar_dir}")
    return matches[0]
