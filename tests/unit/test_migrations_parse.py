"""Migration files: statement splitting, discovery order, and the shipped schema files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.infra.migrations import MIGRATIONS_DIR, discover, load_migration, split_statements


def test_splits_on_semicolon_at_line_end():
    text = """
    CREATE TABLE IF NOT EXISTS a (
        id text PRIMARY KEY
    );

    CREATE TABLE IF NOT EXISTS b (id text PRIMARY KEY) WITH comment = 'x';
    """
    statements = split_statements(text)
    assert len(statements) == 2
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS a (")
    assert statements[0].endswith(")")
    assert statements[1] == "CREATE TABLE IF NOT EXISTS b (id text PRIMARY KEY) WITH comment = 'x'"


def test_semicolon_inside_a_line_does_not_split():
    text = "INSERT INTO t (k, v) VALUES ('a', 'x; y');\n"
    assert split_statements(text) == ["INSERT INTO t (k, v) VALUES ('a', 'x; y')"]


def test_comment_lines_and_blanks_are_dropped():
    text = "-- header;\n// another;\n\nCREATE TABLE IF NOT EXISTS a (id text PRIMARY KEY);\n-- trailer\n"
    assert split_statements(text) == ["CREATE TABLE IF NOT EXISTS a (id text PRIMARY KEY)"]


def test_trailing_whitespace_after_semicolon_is_fine():
    assert split_statements("SELECT 1 FROM t;   \n") == ["SELECT 1 FROM t"]


def test_unterminated_statement_is_an_error():
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE a (id text PRIMARY KEY)\n")


def _write(directory: Path, name: str, body: str = "SELECT 1 FROM t;\n") -> None:
    (directory / name).write_text(body)


def test_discover_orders_by_number_and_ignores_other_files(tmp_path: Path):
    _write(tmp_path, "010_later.cql")
    _write(tmp_path, "002_second.cql")
    _write(tmp_path, "001_first.cql")
    _write(tmp_path, "README.md")
    _write(tmp_path, "notes.cql")
    versions = [m.version for m in discover(tmp_path)]
    assert versions == ["001_first", "002_second", "010_later"]


def test_duplicate_numbers_are_rejected(tmp_path: Path):
    _write(tmp_path, "001_a.cql")
    _write(tmp_path, "001_b.cql")
    with pytest.raises(ValueError, match="two migrations numbered 001"):
        discover(tmp_path)


def test_checksum_follows_content(tmp_path: Path):
    _write(tmp_path, "001_a.cql", "SELECT 1 FROM t;\n")
    first = load_migration(tmp_path / "001_a.cql").checksum
    _write(tmp_path, "001_a.cql", "SELECT 2 FROM t;\n")
    assert load_migration(tmp_path / "001_a.cql").checksum != first


def test_shipped_migrations_parse_and_are_rerunnable():
    migrations = discover(MIGRATIONS_DIR)
    assert migrations and migrations[0].version == "001_registry"
    for m in migrations:
        assert m.statements, m.path
        for statement in m.statements:
            head = " ".join(statement.split()[:5]).upper()
            if head.startswith(("CREATE TABLE", "CREATE KEYSPACE", "CREATE INDEX", "CREATE TYPE", "CREATE CUSTOM INDEX")):
                assert "IF NOT EXISTS" in head or "IF NOT EXISTS" in statement.upper(), statement
            # Files must not name a keyspace: they are applied to whichever one the session uses.
            assert "fleet." not in statement.lower(), statement


def test_registry_tables_present():
    text = " ".join(discover(MIGRATIONS_DIR)[0].statements)
    for table in ("devices", "devices_by_group", "devices_by_status", "audit_log"):
        assert f"CREATE TABLE IF NOT EXISTS {table} (" in text
    assert "CLUSTERING ORDER BY (ts DESC)" in text
