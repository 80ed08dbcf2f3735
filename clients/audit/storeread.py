"""Read-only lookups in a node store that its public API (clients/node/store.py) does not offer yet.

The audits need, for a store of a million packets, the log index of every received packet
without reading every packet body, and one packet's bytes and disclosure by id. These
queries read the tables of ``clients/node/schema.py`` and nothing else; if that schema
changes, only this module follows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hub.sqlrows import read_only_uri


@dataclass(frozen=True)
class StoredPacket:
    """A packet held by a node: received (with salt and content when the filters kept it) or sent."""

    packet_id: str
    raw: bytes
    log_index: int | None
    salt: bytes | None
    content: bytes | None
    direction: str  # received | sent | quarantined


def open_readonly(path: Path | str) -> sqlite3.Connection:
    return sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None, check_same_thread=False)


def received_indexes(conn: sqlite3.Connection) -> dict[int, str | None]:
    """log index -> packet id of every packet the node holds as received, quarantined included."""
    out: dict[int, str | None] = {}
    for table in ("quarantine", "packets"):
        try:
            for index, pid in conn.execute(f"SELECT log_index, packet_id FROM {table} WHERE log_index IS NOT NULL"):
                out[index] = pid
        except sqlite3.OperationalError:
            continue  # a store without that table (older or empty)
    return out


def packet_by_id(conn: sqlite3.Connection, packet_id: str) -> StoredPacket | None:
    row = conn.execute("SELECT b.raw, p.log_index, b.salt, b.content FROM packets p JOIN packet_blobs b "
                       "USING (seq) WHERE p.packet_id = ?", (packet_id,)).fetchone()
    if row:
        return StoredPacket(packet_id, row[0], row[1], row[2], row[3], "received")
    row = conn.execute("SELECT raw, log_index FROM sent WHERE packet_id = ?", (packet_id,)).fetchone()
    if row:
        return StoredPacket(packet_id, row[0], row[1], None, None, "sent")
    row = conn.execute("SELECT raw, log_index FROM quarantine WHERE packet_id = ? LIMIT 1", (packet_id,)).fetchone()
    if row:
        return StoredPacket(packet_id, row[0], row[1], None, None, "quarantined")
    return None


def receipt_ids(conn: sqlite3.Connection, packet_id: str) -> list[str]:
    """Ids of the signed receipts this node holds for ``packet_id``."""
    return [r[0] for r in conn.execute("SELECT packet_id FROM receipts WHERE ref = ? ORDER BY received_at, packet_id",
                                       (packet_id,))]


def count_packets(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT COUNT(*) FROM packets").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
