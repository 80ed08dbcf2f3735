"""Numbered schema migrations for SQLite databases, applied in a transaction and recorded.

Each store (hub, node) keeps its migrations as a list of SQL scripts; the index
in the list is the version. A database newer than the code is refused rather
than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from hub.protocol.errors import StoreError


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], name: str, table: str = "schema_migrations") -> int:
    """Bring ``conn`` to the latest version; returns it. Runs each step in its own transaction.

    ``table`` records the versions applied: several independent schemas can share one file
    (the node store and the log watcher's tables), each with its own table.
    """
    if not table.isidentifier():
        raise StoreError(f"{name} database: {table!r} is not a valid table name")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    row = conn.execute(f"SELECT MAX(version) FROM {table}").fetchone()
    current = row[0] or 0
    if current > len(migrations):
        raise StoreError(f"{name} database is at schema version {current}, newer than this intelhub ({len(migrations)}); upgrade intelhub")
    for version in range(current + 1, len(migrations) + 1):
        script = migrations[version - 1]
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {table} VALUES (?, datetime('now'))", (version,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"{name} database: migration {version} failed ({exc})") from None
    return len(migrations)


def _statements(script: str) -> list[str]:
    # sqlite3.complete_statement lets triggers with inner semicolons stay whole.
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
