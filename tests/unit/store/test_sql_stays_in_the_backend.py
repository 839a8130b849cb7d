"""SQL and its dialects live in the backends alone — store/sqlite/ (with its migrations,
store/migrations.py) and store/postgres/ — so a backend implements the Store protocol
without touching core."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src" / "sandboxer"
ALLOWED = (SRC / "store" / "sqlite", SRC / "store" / "migrations.py",
           SRC / "store" / "postgres")
SQL_ISMS = re.compile(r"\bsqlite3\b|BEGIN IMMEDIATE|json_extract|PRAGMA|"
                         r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b|"
                         r"store\._conn|\._write\(\)|\bpsycopg|pg_advisory|::jsonb?\b")


def test_no_sql_outside_the_backends() -> None:
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if not any(path == a or a in path.parents for a in ALLOWED)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL_ISMS.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_outbox_and_tokens_import_no_backend() -> None:
    for name in ("outbox.py", "tokens.py", "base.py"):
        text = (SRC / "store" / name).read_text(encoding="utf-8")
        assert "sandboxer.store.sqlite" not in text, name
        assert "sandboxer.store.postgres" not in text, name
