"""What ``intelhub audit verify`` is given — packet files, node stores, evidence bundles — checked into one report.

Checkpoints from every input are pooled: two inputs holding different hub-signed roots for
one tree size prove a split view even offline; with a hub URL, checkpoints of different
sizes are also checked for consistency with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiohttp

from clients.node.store import NodeStore
from hub.keyfiles import read_bytes
from hub.protocol.armor import dearmor
from hub.protocol.errors import IntelhubError, LogError, ValidationError
from hub.protocol.merkle import verify_consistency
from hub.protocol.trust import Trust

from . import logdb, storeread
from .bundle import decode_bundle, is_bundle, verify_bundle
from .fetch import LogClient
from .verify import (
    CheckpointSet, LogMaterial, PacketResult, Progress, Report, check_packet, evidence_entry, proof_hashes,
)

SQLITE_MAGIC = b"SQLite format 3\x00"


def kind_of(path: Path) -> str:
    """``bundle``, ``store`` or ``packet``, by the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if is_bundle(head):
        return "bundle"
    if head.startswith(SQLITE_MAGIC):
        return "store"
    return "packet"


def read_packet_file(path: Path) -> bytes:
    """A packet file: armored (``intelhub packet seal``) or raw canonical bytes."""
    data = read_bytes(path, "packet")
    return dearmor("PACKET", data, str(path)) if data.lstrip().startswith(b"-----BEGIN") else data


def verify_store(path: Path, trust: Trust, cs: CheckpointSet, report: Report, progress: Progress | None = None) -> None:
    """Every received packet of a node store, with the inclusion proofs its log watcher kept."""
    conn = storeread.open_readonly(path)
    src = path.name
    try:
        held = {}
        for size, note, prev, cons in logdb.pinned_checkpoints(conn):
            cp = cs.add(note, src)
            if cp is None:
                continue
            held[size] = cp
            if prev is not None and prev in held:
                cs.check_chain(held[prev], cp, proof_hashes(cons), src)
        head = logdb.head_note(conn)
        if head is not None:
            cs.add(head, src)
        watched = logdb.has_log_tables(conn)
        total = storeread.count_packets(conn)
        store = NodeStore(path)
        try:
            for n, (index, raw) in enumerate(store.raw_packets(), 1):
                mat, status = None, "not proven: no log watcher ran on this store"
                row = logdb.inclusion_at(conn, index) if watched and index is not None else None
                if row is not None and row[3] == "verified" and row[1] in held:
                    mat = LogMaterial(index, row[0], held[row[1]], proof_hashes(row[2]))  # type: ignore[arg-type]
                elif row is not None:
                    status = "FAIL: the hub's proof failed (see evidence)" if row[3] == "failed" else \
                        "not proven yet (pending)"
                elif watched:
                    status = "not proven: not tracked by the log watcher"
                r = check_packet(raw, trust, f"{src}#{index}", log=mat, log_status=status)
                if status.startswith("FAIL"):
                    r.failures.append("the hub could not prove this packet's inclusion")
                report.packets.append(r)
                if progress is not None and (n % 500 == 0 or n == total):
                    progress(n, total)
        finally:
            store.close()
        for ev in logdb.evidence(conn):
            report.evidence.append(evidence_entry(ev.data, trust.roster, src))
    finally:
        conn.close()


async def verify_inputs(paths: Sequence[Path], trust: Trust | None, *, hub_url: str | None = None,
                        progress: Progress | None = None) -> Report:
    """Verify each input; pool their checkpoints; confirm saved evidence. ``trust`` pins the roster."""
    report = Report()
    pools: dict[bytes, CheckpointSet] = {}
    if trust is not None:
        pools[trust.roster.fp] = CheckpointSet(trust.roster, report)
    for path in paths:
        kind = kind_of(path)
        if kind == "bundle":
            cs = verify_bundle(decode_bundle(path.read_bytes()), report, source=path.name,
                               pinned_roster=trust.roster.fp if trust is not None else None)
            if cs is not None:  # pool with inputs of the same roster
                pool = pools.setdefault(cs.roster.fp, cs)
                if pool is not cs:
                    for size, roots in cs.by_size.items():
                        for root, srcs in roots.items():
                            pool.by_size.setdefault(size, {}).setdefault(root, []).extend(srcs)
            continue
        if trust is None:
            raise ValidationError("--trust", f"{path}: a {kind} needs the federation directory (--trust) to verify")
        cs = pools[trust.roster.fp]
        if kind == "store":
            verify_store(path, trust, cs, report, progress)
        else:
            report.packets.append(await _packet_file(path, trust, cs, hub_url))
    for cs in pools.values():
        cs.finish()
        if hub_url:
            await _cross_check(cs, hub_url, report)
    report.problems += [f"{e['source']}: evidence against the hub ({e['kind']}): {e['why']}"
                        for e in report.evidence if e["confirmed"]]
    return report


async def _packet_file(path: Path, trust: Trust, cs: CheckpointSet, hub_url: str | None) -> PacketResult:
    raw = read_packet_file(path)
    if hub_url is None:
        return check_packet(raw, trust, path.name, log_status="not proven: no proof with a bare packet (give --hub)")
    from hub.protocol import envelope

    async with aiohttp.ClientSession() as s:
        client = LogClient(s, hub_url)
        note = await client.checkpoint()
        cp = cs.add(note, f"hub {hub_url}")
        try:
            pid = envelope.parse_packet(raw).header.packet_id
            p = await client.inclusion_by_id(pid, cp.size if cp else None)
        except IntelhubError as exc:
            return check_packet(raw, trust, path.name, log_status=f"FAIL: the hub has no proof ({exc})")
    if cp is None or p.size != cp.size:
        return check_packet(raw, trust, path.name, log_status="FAIL: the hub's checkpoint does not verify")
    return check_packet(raw, trust, path.name, log=LogMaterial(p.index, p.time, cp, p.path))


async def _cross_check(cs: CheckpointSet, hub_url: str, report: Report) -> None:
    """Checkpoints of different sizes from different inputs must be consistent (the hub proves it)."""
    heads = cs.sorted_heads()
    if len(heads) < 2:
        return
    async with aiohttp.ClientSession() as s:
        client = LogClient(s, hub_url)
        for (a, ra, sa), (b, rb, sb) in zip(heads, heads[1:]):
            if a == b:
                continue
            try:
                path = await client.consistency(a, b)
                verify_consistency(a, b, ra, rb, list(path))
            except LogError as exc:
                report.problems.append(f"checkpoints of size {a} ({sa}) and {b} ({sb}) are not consistent: {exc}")
            except IntelhubError as exc:
                report.notes.append(f"could not ask the hub to link sizes {a} and {b}: {exc}")
