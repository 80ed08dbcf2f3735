"""Evidence bundles (docs/audit.md §4): one self-contained file that verifies offline, years later.

A bundle is ``MAGIC || E(bundle map)`` (canonical msgpack, §2 of the protocol) holding the
packets, the roster, every certificate and revocation list, the hub-signed checkpoints with
the consistency proofs linking them, each packet's leaf time and inclusion path, receipts,
optionally the disclosed content (salt and plaintext the signed commitment covers), and any
evidence the node saved against the hub.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from hub.protocol import codec, envelope
from hub.protocol.errors import DecodeError, IntelhubError, ValidationError
from hub.protocol.merkle import verify_consistency
from hub.protocol.roster import Roster
from hub.protocol.trust import Trust

from . import logdb, storeread
from .fetch import LogClient
from .tlog import open_hub_checkpoint
from .verify import CheckpointSet, LogMaterial, Report, check_packet, evidence_entry, proof_hashes

MAGIC: Final[bytes] = b"intelhub-evidence-bundle v1\n"
VERSION: Final[int] = 1
MAX_BUNDLE_BYTES: Final[int] = 1 << 30
_FIELDS: Final = {"v", "created", "note", "roster", "certs", "revocations", "checkpoints", "consistency",
                  "packets", "evidence"}
_PACKET_FIELDS: Final = {"packet", "role", "index", "time", "size", "path", "salt", "content"}
ROLES: Final = ("subject", "receipt")


@dataclass
class BundlePacket:
    """A packet in a bundle, with what places it in the log and, optionally, its disclosed content."""

    packet: bytes
    role: str = "subject"
    index: int | None = None
    time: int | None = None
    size: int | None = None
    path: list[bytes] = field(default_factory=list)
    salt: bytes | None = None
    content: bytes | None = None

    def to_map(self) -> dict[str, Any]:
        d: dict[str, Any] = {"packet": self.packet, "role": self.role}
        if self.index is not None and self.time is not None and self.size is not None:
            d.update(index=self.index, time=self.time, size=self.size, path=list(self.path))
        if self.salt is not None and self.content is not None:
            d.update(salt=self.salt, content=self.content)
        return d


@dataclass
class Bundle:
    roster: bytes
    created: int
    note: str = ""
    certs: list[bytes] = field(default_factory=list)
    revocations: list[bytes] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    consistency: list[dict[str, Any]] = field(default_factory=list)
    packets: list[BundlePacket] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        return MAGIC + codec.encode({
            "v": VERSION, "created": self.created, "note": self.note, "roster": self.roster, "certs": self.certs,
            "revocations": self.revocations, "checkpoints": self.checkpoints, "consistency": self.consistency,
            "packets": [p.to_map() for p in self.packets], "evidence": [codec.encode(e) for e in self.evidence],
        })


def is_bundle(data: bytes) -> bool:
    return data.startswith(MAGIC)


def _typed(d: dict[str, Any], key: str, typ: type, what: str) -> Any:
    if type(d.get(key)) is not typ:
        raise DecodeError(f"bundle: {what}.{key} must be {typ.__name__}")
    return d[key]


def decode_bundle(data: bytes) -> Bundle:
    """Parse a bundle strictly: magic, version, closed schema, canonical encoding."""
    if not is_bundle(data):
        raise DecodeError("not an intelhub evidence bundle (wrong magic)")
    body = data[len(MAGIC):]
    d = codec.decode(body, max_size=MAX_BUNDLE_BYTES, max_items=1 << 20)
    if type(d) is not dict or d.keys() != _FIELDS:
        raise DecodeError(f"bundle: must hold exactly {', '.join(sorted(_FIELDS))}")
    if d["v"] != VERSION:
        raise DecodeError(f"bundle version {d['v']!r} is not supported (this is v{VERSION})")
    for key, typ in (("created", int), ("note", str), ("roster", bytes), ("certs", list), ("revocations", list),
                     ("checkpoints", list), ("consistency", list), ("packets", list), ("evidence", list)):
        _typed(d, key, typ, "bundle")
    packets = []
    for i, p in enumerate(d["packets"]):
        if type(p) is not dict or not {"packet", "role"} <= p.keys() <= _PACKET_FIELDS or p["role"] not in ROLES:
            raise DecodeError(f"bundle: packets[{i}] has wrong fields")
        for key, typ in (("index", int), ("time", int), ("size", int), ("path", list), ("salt", bytes),
                         ("content", bytes)):
            if key in p:
                _typed(p, key, typ, f"packets[{i}]")
        if any(type(h) is not bytes for h in p.get("path", [])):
            raise DecodeError(f"bundle: packets[{i}].path must hold hashes (bytes)")
        packets.append(BundlePacket(_typed(p, "packet", bytes, f"packets[{i}]"), p["role"], p.get("index"),
                                    p.get("time"), p.get("size"), list(p.get("path", [])), p.get("salt"),
                                    p.get("content")))
    return Bundle(d["roster"], d["created"], d["note"], list(d["certs"]), list(d["revocations"]),
                  list(d["checkpoints"]), list(d["consistency"]), packets,
                  [codec.decode(e, max_size=64 << 20) for e in d["evidence"]])


# -- export ---------------------------------------------------------------------------------


async def export_bundle(ids: Iterable[str], store: Path, trust: Trust, *, hub_url: str | None = None,
                        content: bool = True, receipts: bool = True, note: str = "",
                        now: int | None = None) -> Bundle:
    """Gather packets by id from a node store, with everything needed to verify them offline.

    Log material comes from the node's watcher tables; with ``hub_url``, packets they do not
    prove yet (and packets this nation sent) are proven against the hub's latest checkpoint,
    itself proven consistent with the node's pinned checkpoints.
    """
    conn = storeread.open_readonly(store)
    try:
        b = Bundle(trust.roster.raw, int(time.time()) if now is None else now, note,
                   [c.raw for c in trust.certs.values()], [r.raw for r in trust.revocations.values()])
        chain = logdb.pinned_checkpoints(conn)
        notes = {size: n for size, n, _, _ in chain}
        wanted: list[tuple[storeread.StoredPacket, str]] = []
        for pid in ids:
            envelope.parse_packet_id(pid)
            sp = storeread.packet_by_id(conn, pid)
            if sp is None:
                raise ValidationError("id", f"packet {pid} is not in {store}")
            wanted.append((sp, "subject"))
            if receipts:
                wanted += [(r, "receipt") for r in map(lambda x: storeread.packet_by_id(conn, x),
                                                       storeread.receipt_ids(conn, pid)) if r is not None]
        used: set[int] = set()
        unproven: list[BundlePacket] = []
        for sp, role in wanted:
            bp = BundlePacket(sp.raw, role)
            if content and sp.salt is not None and sp.content is not None:
                bp.salt, bp.content = sp.salt, sp.content
            row = logdb.inclusion_at(conn, sp.log_index) if sp.log_index is not None else None
            if row is not None and row[3] == "verified" and row[1] in notes:
                bp.index, bp.time, bp.size, bp.path = sp.log_index, row[0], row[1], list(proof_hashes(row[2]))
                used.add(row[1])  # type: ignore[arg-type]
            else:
                unproven.append(bp)
            b.packets.append(bp)
        if used:
            _add_chain(b, chain, min(used), max(used))
        if unproven and hub_url:
            await _prove_with_hub(b, unproven, trust.roster, hub_url, chain)
        b.evidence = [e.data for e in logdb.evidence(conn)]
        return b
    finally:
        conn.close()


def _add_chain(b: Bundle, chain: list[tuple[int, str, int | None, str | None]], lo: int, hi: int) -> None:
    """The pinned checkpoints from ``lo`` to ``hi`` and the proofs linking each to the one before."""
    held = [c for c in chain if lo <= c[0] <= hi]
    for i, (size, note, prev, cons) in enumerate(held):
        b.checkpoints.append(note)
        if i > 0 and prev == held[i - 1][0]:
            b.consistency.append({"old": prev, "new": size, "path": list(proof_hashes(cons))})


async def _prove_with_hub(b: Bundle, packets: list[BundlePacket], roster: Roster, hub_url: str,
                          chain: list[tuple[int, str, int | None, str | None]]) -> None:
    async with aiohttp.ClientSession() as s:
        client = LogClient(s, hub_url)
        note = await client.checkpoint()
        cp = open_hub_checkpoint(note, roster)
        if chain:  # link the hub's checkpoint to what the node verified before
            last = open_hub_checkpoint(chain[-1][1], roster)
            if last.size <= cp.size:
                path = await client.consistency(last.size, cp.size)
                verify_consistency(last.size, cp.size, last.root, cp.root, list(path))
                if chain[-1][1] not in b.checkpoints:
                    b.checkpoints.append(chain[-1][1])
                if last.size < cp.size:
                    b.consistency.append({"old": last.size, "new": cp.size, "path": list(path)})
        for bp in packets:
            pid = envelope.parse_packet(bp.packet).header.packet_id
            p = await client.inclusion_by_id(pid, cp.size)
            p.verify(envelope.parse_packet(bp.packet).header.raw, cp)
            bp.index, bp.time, bp.size, bp.path = p.index, p.time, cp.size, list(p.path)
        if note not in b.checkpoints:
            b.checkpoints.append(note)


# -- verification ---------------------------------------------------------------------------


def verify_bundle(b: Bundle, report: Report, *, source: str, pinned_roster: bytes | None = None) -> CheckpointSet | None:
    """Check everything in a bundle with only what it holds (and the pinned roster fingerprint)."""
    try:
        roster = Roster.parse(b.roster).verify()
    except IntelhubError as exc:
        report.problems.append(f"{source}: the roster does not verify: {exc}")
        return None
    if pinned_roster is not None and roster.fp != pinned_roster:
        report.problems.append(f"{source}: the bundle's roster {roster.fp.hex()[:16]} is not the pinned roster "
                               f"{pinned_roster.hex()[:16]}")
    elif pinned_roster is None:
        report.notes.append(f"{source}: roster fingerprint {roster.fp.hex()} (not pinned: compare it with the "
                            "federation's published fingerprint)")
    trust = Trust(roster)
    for raw in b.certs:
        try:
            trust.add_certificate(raw)
        except IntelhubError as exc:
            report.problems.append(f"{source}: a certificate does not verify: {exc}")
    for raw in b.revocations:
        try:
            trust.add_revocations(raw)
        except IntelhubError as exc:
            report.problems.append(f"{source}: a revocation list does not verify: {exc}")
    cs = CheckpointSet(roster, report)
    held = {}
    for note in b.checkpoints:
        cp = cs.add(note, source) if type(note) is str else None
        if cp is not None:
            held[cp.size] = cp
    for c in b.consistency:
        try:
            old, new = held[c["old"]], held[c["new"]]
            cs.check_chain(old, new, c["path"], source)
        except (KeyError, TypeError):
            report.problems.append(f"{source}: a consistency proof names checkpoints the bundle lacks")
    linked = {(c.get("old"), c.get("new")) for c in b.consistency if type(c) is dict}
    sizes = sorted(held)
    for a, z in zip(sizes, sizes[1:]):
        if (a, z) not in linked:
            report.notes.append(f"{source}: no consistency proof links the checkpoints of size {a} and {z}")
    for i, bp in enumerate(b.packets):
        mat, status = None, "not proven: the bundle holds no inclusion proof for it"
        if bp.index is not None and bp.time is not None and bp.size is not None:
            if bp.size in held:
                mat = LogMaterial(bp.index, bp.time, held[bp.size], tuple(bp.path))
            else:
                status = f"FAIL: the bundle lacks the checkpoint of size {bp.size}"
                report.problems.append(f"{source}: packet {i} refers to a checkpoint the bundle lacks")
        disclosure = (bp.salt, bp.content) if bp.salt is not None and bp.content is not None else None
        r = check_packet(bp.packet, trust, f"{source}#{i} ({bp.role})", log=mat, log_status=status,
                         disclosure=disclosure)
        report.packets.append(r)
    for ev in b.evidence:
        report.evidence.append(evidence_entry(ev, roster, source))
    return cs


def load_bundle(path: Path) -> Bundle:
    try:
        return decode_bundle(path.read_bytes())
    except OSError as exc:
        raise ValidationError("bundle", f"{path}: cannot read ({exc.strerror})") from None


def bundle_summary(b: Bundle) -> dict[str, Any]:
    roster = Roster.parse(b.roster)
    return {"created": b.created, "roster": roster.fp.hex(), "packets": len(b.packets),
            "checkpoints": len(b.checkpoints), "evidence": len(b.evidence),
            "with_content": sum(1 for p in b.packets if p.content is not None)}
