"""The hub operator's view of a hub database: subscriptions and what they are owed.

Read-only, so it runs beside a serving hub (``intelhub hub subscriptions``). Removing a
subscription goes through :class:`~hub.server.sqlite_store.SQLiteStorage` with the hub
stopped: the database belongs to one hub process at a time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hub.protocol.errors import StoreError

from .sqlite_store import reading


@dataclass(frozen=True)
class SubscriptionState:
    nation: str
    name: str
    patterns: list[str]
    #: every matching packet at or below the cursor was acknowledged
    cursor: int
    created: int
    #: when it last acknowledged anything (None: never; 0: before the hub recorded it, schema 3)
    acked_at: int | None
    #: packet bodies held for it: matching, not acknowledged, not expired, not purged
    owed: int
    #: accepted_at of the oldest of them
    oldest_owed: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_OWED = """
    SELECT COUNT(*), MIN(p.accepted_at) FROM packet_recipients r JOIN packets p ON p.log_index = r.log_index
    WHERE r.log_index > :cursor AND r.nation = :nation AND p.raw IS NOT NULL AND p.expires > :now
      AND topic_matches(:patterns, p.topic)
      AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.nation = :nation AND a.name = :name AND a.log_index = r.log_index)
"""


def subscriptions(path: Path, now: int, nation: str | None = None) -> list[SubscriptionState]:
    """Every subscription in the database at ``path`` (of one nation, if given), with what it is owed."""
    with reading(path) as c:
        if c is None:
            raise StoreError(f"{path}: no hub database there; check hub.database")
        columns = {r[1] for r in c.execute("PRAGMA table_info(subscriptions)")}
        if not columns:
            return []  # a new database the hub has not set up yet
        acked = "acked_at" if "acked_at" in columns else "NULL"
        rows = c.execute(f"SELECT nation, name, patterns, cursor, created, {acked} FROM subscriptions "
                         "WHERE ? IS NULL OR nation = ? ORDER BY nation, name", (nation, nation)).fetchall()
        out = []
        for n, name, patterns, cursor, created, acked_at in rows:
            owed, oldest = c.execute(_OWED, {"cursor": cursor, "nation": n, "now": now, "patterns": patterns,
                                             "name": name}).fetchone()
            out.append(SubscriptionState(n, name, json.loads(patterns), cursor, created, acked_at, owed, oldest))
        return out
