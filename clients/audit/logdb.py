"""The log watcher's tables, kept in the node store's SQLite file (docs/audit.md, "What a node keeps").

They sit beside the store's own tables under their own migrations
(``log_schema_migrations``), written through a separate connection, so the store and
the watcher never wait on each other's schema. The auditor's tool reads them back.

* ``log_head``: the newest checkpoint this node verified as consistent with all before it.
* ``log_checkpoints``: *pinned* checkpoints, those inclusion proofs refer to, each with the
  consistency proof from the previous pin, so an auditor re-checks the chain offline.
* ``log_inclusion``: per received packet, its leaf (header, time) and inclusion proof.
* ``log_promises``: promises of inclusion of packets this nation published, and their fate.
* ``log_witnesses``: the newest cosigned checkpoint of each other nation checked.
* ``log_evidence``: every contradiction found, with the signed objects that prove it.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hub.migrations import migrate
from hub.protocol import codec
from hub.protocol.errors import StoreError
from hub.sqlrows import read_only_uri

from .tlog import b64

MIGRATIONS_TABLE: Final[str] = "log_schema_migrations"
MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE log_head (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        size        INTEGER NOT NULL,
        root        BLOB NOT NULL,
        time        INTEGER NOT NULL,
        note        TEXT NOT NULL,           -- the hub-signed checkpoint note
        verified_at INTEGER NOT NULL
    );
    CREATE TABLE log_checkpoints (
        size        INTEGER PRIMARY KEY,
        root        BLOB NOT NULL,
        time        INTEGER NOT NULL,
        note        TEXT NOT NULL,
        pinned_at   INTEGER NOT NULL,
        prev        INTEGER,                 -- size of the previous pinned checkpoint
        consistency TEXT                     -- JSON base64 hashes: the proof prev -> size
    );
    CREATE TABLE log_inclusion (
        log_index   INTEGER PRIMARY KEY,
        packet_id   TEXT,
        header      BLOB NOT NULL,           -- the packet's signed header: the leaf is E({header, time, v})
        time        INTEGER,                 -- when the hub accepted it; NULL until the hub said
        checkpoint  INTEGER,                 -- size of the checkpoint the path leads to
        path        TEXT,                    -- JSON base64 hashes
        status      TEXT NOT NULL,           -- pending | verified | failed
        received_at INTEGER NOT NULL
    );
    CREATE INDEX log_inclusion_status ON log_inclusion (status) WHERE status != 'verified';
    CREATE TABLE log_promises (
        packet_id   TEXT PRIMARY KEY,
        log_index   INTEGER NOT NULL,
        header      BLOB NOT NULL,
        promise     TEXT NOT NULL,
        status      TEXT NOT NULL,           -- pending | kept | broken | invalid
        checked_at  INTEGER NOT NULL,
        detail      TEXT
    );
    CREATE INDEX log_promises_pending ON log_promises (status) WHERE status = 'pending';
    CREATE TABLE log_witnesses (
        nation      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        root        BLOB NOT NULL,
        time        INTEGER NOT NULL,        -- the cosignature's time
        note        TEXT NOT NULL,
        checked_at  INTEGER NOT NULL
    );
    CREATE TABLE log_evidence (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,           -- fork | inconsistent | bad_inclusion | broken_promise | bad_leaves
        detected_at INTEGER NOT NULL,
        summary     TEXT NOT NULL,
        digest      BLOB NOT NULL UNIQUE,    -- SHA-256 of data: the same contradiction is kept once
        data        BLOB NOT NULL            -- E(evidence map), docs/audit.md
    );
    CREATE TABLE log_state (
        key         TEXT PRIMARY KEY,
        value       INTEGER NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class Evidence:
    """A contradiction in what the hub signed; ``data`` holds the signed objects that show it."""

    kind: str
    summary: str
    data: dict[str, Any]
    detected_at: int
    id: int | None = None

    def encode(self) -> bytes:
        return codec.encode(self.data)


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the store file for the log tables (created if missing, unless ``readonly``)."""
    p = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(read_only_uri(p), uri=True, isolation_level=None, check_same_thread=False)
            return conn
        conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may lose the last watcher rows, never corrupt them; the packets
        # themselves are the store's (FULL), and a lost row is re-derived by the next audit.
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn, MIGRATIONS, "node log", table=MIGRATIONS_TABLE)
        return conn
    except sqlite3.Error as exc:
        raise StoreError(f"{p}: cannot open the log tables ({exc})") from None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One short write transaction (IMMEDIATE: no upgrade deadlock with the store's writer)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def has_log_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log_inclusion'").fetchone()
    return row is not None


def paths_json(path: tuple[bytes, ...] | list[bytes]) -> str:
    return json.dumps([b64(h) for h in path])


def save_evidence(conn: sqlite3.Connection, ev: Evidence) -> bool:
    """Keep ``ev``; False if this very contradiction was already kept."""
    import hashlib

    data = ev.encode()
    cur = conn.execute("INSERT OR IGNORE INTO log_evidence (kind, detected_at, summary, digest, data) "
                       "VALUES (?, ?, ?, ?, ?)", (ev.kind, ev.detected_at, ev.summary,
                                                  hashlib.sha256(data).digest(), data))
    return cur.rowcount == 1


def evidence(conn: sqlite3.Connection) -> list[Evidence]:
    if not has_log_tables(conn):
        return []
    rows = conn.execute("SELECT id, kind, summary, data, detected_at FROM log_evidence ORDER BY id").fetchall()
    return [Evidence(k, s, codec.decode(d, max_size=64 << 20), t, i) for i, k, s, d, t in rows]


def pinned_checkpoints(conn: sqlite3.Connection) -> list[tuple[int, str, int | None, str | None]]:
    """(size, note, prev, consistency JSON) of every pinned checkpoint, oldest first."""
    if not has_log_tables(conn):
        return []
    return conn.execute("SELECT size, note, prev, consistency FROM log_checkpoints ORDER BY size").fetchall()


def head_note(conn: sqlite3.Connection) -> str | None:
    if not has_log_tables(conn):
        return None
    row = conn.execute("SELECT note FROM log_head WHERE id = 1").fetchone()
    return row[0] if row else None


def inclusion_at(conn: sqlite3.Connection, index: int) -> tuple[int | None, int | None, str | None, str] | None:
    """(time, checkpoint size, path JSON, status) of the leaf at ``index``, if tracked."""
    if not has_log_tables(conn):
        return None
    row = conn.execute("SELECT time, checkpoint, path, status FROM log_inclusion WHERE log_index = ?",
                       (index,)).fetchone()
    return tuple(row) if row else None  # type: ignore[return-value]
