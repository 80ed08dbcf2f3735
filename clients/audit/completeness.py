"""Provable completeness (docs/audit.md §2): every packet the log holds for this nation is in the store.

The audit fetches the log's leaves (signed headers and acceptance times, never content) up
to a checkpoint, checks that they hash to its signed root — so the hub cannot show the
auditor a list other than the one it committed to — and sorts every leaf addressed to the
nation: received (stored, dropped by a filter, or quarantined), *missing*, not subscribed
(no subscription pattern matches its topic), expired before it could be delivered, or still
in flight. It also lists packets the node received under an index where the log holds
something else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.protocol.checkpoint import Checkpoint
from hub.protocol.errors import LogError
from hub.protocol.merkle import root_from_leaf_hashes, verify_consistency
from hub.protocol.roster import Roster
from hub.protocol.topics import any_match

from . import logdb, storeread
from .fetch import LEAVES_PER_REQUEST, LogClient
from .tlog import Leaf, open_hub_checkpoint

#: Leaf pages fetched at once: enough to hide the round trip, few enough to spare the hub.
PARALLEL_PAGES = 4


@dataclass
class CompletenessReport:
    nation: str
    checkpoint: Checkpoint
    leaves: int = 0
    addressed: int = 0
    received: int = 0
    missing: list[Leaf] = field(default_factory=list)
    not_subscribed: list[Leaf] = field(default_factory=list)
    expired: list[Leaf] = field(default_factory=list)
    in_flight: list[Leaf] = field(default_factory=list)
    misplaced: list[tuple[int, str | None, str]] = field(default_factory=list)  # (index, ours, the log's)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        # Expired packets the node never got are missed too; they are listed apart because the
        # hub no longer delivers them (§8.4), so only the sender can send them again.
        return not (self.missing or self.expired or self.misplaced or self.problems)

    def as_dict(self) -> dict[str, Any]:
        def rows(leaves: list[Leaf]) -> list[dict[str, Any]]:
            return [{"index": x.index, "id": x.packet_id, "sender": x.sender, "topic": x.topic,
                     "accepted_at": x.time, "expires": x.expires} for x in leaves]

        cp = self.checkpoint
        return {
            "complete": self.complete, "nation": self.nation,
            "checkpoint": {"size": cp.size, "time": cp.time, "root": cp.root.hex()},
            "leaves": self.leaves, "addressed": self.addressed, "received": self.received,
            "missing": rows(self.missing), "not_subscribed": rows(self.not_subscribed),
            "expired": rows(self.expired), "in_flight": rows(self.in_flight),
            "misplaced": [{"index": i, "ours": o, "log": t} for i, o, t in self.misplaced],
            "problems": self.problems,
        }


async def fetch_all_leaves(client: LogClient, size: int, progress: Callable[[int, int], None] | None = None) -> list[Leaf]:
    """Leaves [0, size), a few pages at a time, in order."""
    out: list[Leaf] = []
    starts = list(range(0, size, LEAVES_PER_REQUEST))
    for i in range(0, len(starts), PARALLEL_PAGES):
        pages = await asyncio.gather(*(client.leaves(s, min(size, s + LEAVES_PER_REQUEST))
                                       for s in starts[i:i + PARALLEL_PAGES]))
        for page in pages:
            out += page
        if progress is not None:
            progress(len(out), size)
    return out


async def audit_completeness(client: LogClient, roster: Roster, store: Path, nation: str, *,
                             patterns: tuple[str, ...] | None = None, grace: int = 60,
                             progress: Callable[[int, int], None] | None = None,
                             has_packet: Callable[[str], bool] | None = None) -> CompletenessReport:
    """Compare the log up to its latest checkpoint with what the store at ``store`` received.

    ``patterns``: the node's subscription patterns (None: every topic counts). ``grace``:
    leaves accepted this many seconds before the checkpoint may still be on their way.
    ``has_packet``: the store's own lookup by id, for packets it holds without a log index.
    """
    note = await client.checkpoint()
    cp = open_hub_checkpoint(note, roster)
    report = CompletenessReport(nation, cp)
    conn = storeread.open_readonly(store)
    try:
        watched = logdb.head_note(conn)
        held = storeread.received_indexes(conn)
    finally:
        conn.close()
    if watched is not None:  # what the node saw before must be a prefix of what is audited now
        old = open_hub_checkpoint(watched, roster)
        if old.size <= cp.size:
            try:
                verify_consistency(old.size, cp.size, old.root, cp.root, list(await client.consistency(old.size, cp.size)))
            except LogError as exc:
                report.problems.append(f"the hub's checkpoint does not extend the one this node verified: {exc}")
    leaves = await fetch_all_leaves(client, cp.size, progress)
    report.leaves = len(leaves)
    if root_from_leaf_hashes([x.hash for x in leaves]) != cp.root:
        report.problems.append("the leaves the hub served do not hash to its signed root: it shows the auditor "
                               "a different log than the one it signed")
    now_cut = cp.time - grace
    for leaf in leaves:
        ours = held.get(leaf.index, ...)
        if ours is not ... and ours is not None and ours != leaf.packet_id:
            report.misplaced.append((leaf.index, ours, leaf.packet_id))
        if nation not in leaf.recipients:
            continue
        report.addressed += 1
        if ours is not ... and (ours is None or ours == leaf.packet_id) or (has_packet and has_packet(leaf.packet_id)):
            report.received += 1
        elif patterns is not None and not any_match(patterns, leaf.topic):
            report.not_subscribed.append(leaf)
        elif leaf.time > now_cut:
            report.in_flight.append(leaf)
        elif leaf.expires <= cp.time:
            report.expired.append(leaf)
        else:
            report.missing.append(leaf)
    return report


def utc(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
