"""The auditor's checks (docs/audit.md): packets, node stores and evidence bundles, from public keys only.

For every packet: its structure; each signature half (Ed25519, and ML-DSA-65 when the
suite requires it) under the signer's certificate; that certificate's chain to its
nation's root in the roster; that it was neither expired, revoked nor superseded when
the packet was signed; and, when the material is at hand, the packet's inclusion in the
hub's log under a hub-signed checkpoint. Checkpoints are checked for the hub's signature
and for consistency with each other; saved evidence is re-confirmed from what it holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

from hub.protocol import envelope
from hub.protocol.checkpoint import Checkpoint
from hub.protocol.errors import DecodeError, IntelhubError, InvalidPacket, LogError, UntrustedSigner
from hub.protocol.keys import signing_input
from hub.protocol.merkle import verify_consistency, verify_inclusion
from hub.protocol.promise import check_promise_kept
from hub.protocol.roster import Roster
from hub.protocol.trust import Trust

from .tlog import leaf_hash_for, open_hub_checkpoint, open_promise

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LogMaterial:
    """What places a packet in the log: its index and time, and a path to a hub-signed checkpoint."""

    index: int
    time: int
    checkpoint: Checkpoint
    path: tuple[bytes, ...]


@dataclass
class PacketResult:
    """Every check on one packet; ``failures`` empty means it verified."""

    source: str
    packet_id: str | None = None
    signer: str | None = None
    suite: str | None = None
    topic: str | None = None
    created: int | None = None
    ed25519: str = "-"
    mldsa65: str = "-"
    certificate: str = "-"
    log: str = "not checked"
    disclosure: str | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Report:
    """The outcome of ``intelhub audit verify`` over all its inputs."""

    packets: list[PacketResult] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.ok for p in self.packets)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "packets": [p.as_dict() for p in self.packets], "checkpoints": self.checkpoints,
                "evidence": self.evidence, "problems": self.problems, "notes": self.notes}


def _check_halves(packet: envelope.Packet, trust: Trust, r: PacketResult) -> None:
    """Each signature half on its own, so the report says which one failed."""
    cert = trust.certs.get(packet.header.sender_cert)
    if cert is None:
        return
    msg = signing_input("packet", packet.header.raw)
    ed, ml = packet.sig.get("ed25519"), packet.sig.get("mldsa65")
    try:
        if type(ed) is not bytes:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(cert.signing.ed25519).verify(ed, msg)
        r.ed25519 = "ok"
    except (InvalidSignature, ValueError):
        r.ed25519 = "FAIL"
        r.failures.append("the Ed25519 signature does not verify")
    if not packet.header.suite.mldsa:
        r.mldsa65 = "not required" if ml is None else "FAIL: present in a classic packet"
        if ml is not None:
            r.failures.append("an ML-DSA-65 half is present although the suite has none")
        return
    try:
        if type(ml) is not bytes:
            raise InvalidSignature
        MLDSA65PublicKey.from_public_bytes(cert.signing.mldsa65).verify(ml, msg)
        r.mldsa65 = "ok"
    except (InvalidSignature, ValueError):
        r.mldsa65 = "FAIL" if ml is not None else "FAIL: missing"
        r.failures.append("the ML-DSA-65 signature does not verify" if ml is not None else
                          "the ML-DSA-65 half required by the suite is missing")


def check_packet(raw: bytes, trust: Trust, source: str, *, log: LogMaterial | None = None,
                 log_status: str | None = None, disclosure: tuple[bytes, bytes] | None = None,
                 now: int | None = None) -> PacketResult:
    """Verify one packet from public material; ``log`` proves its inclusion, ``disclosure`` its content."""
    r = PacketResult(source)
    try:
        packet = envelope.parse_packet(raw)
    except DecodeError as exc:
        r.failures.append(f"malformed: {exc}")
        return r
    h = packet.header
    r.packet_id, r.suite, r.topic, r.created = h.packet_id, h.suite.id, h.topic, h.created
    cert = trust.certs.get(h.sender_cert)
    if cert is None:
        r.certificate = "FAIL: unknown certificate"
        r.failures.append(f"signer certificate {h.sender_cert.hex()[:16]} is not in the roster's directory")
    else:
        r.signer = cert.name
        why = trust.usable_at(cert, h.created) or (None if cert.nation == h.sender else
                                                   f"certificate of {cert.nation} cannot sign for {h.sender}")
        r.certificate = f"FAIL: {why}" if why else f"ok: {cert.name} #{cert.serial}, issued by the {cert.nation} root"
        if why:
            r.failures.append(why)
        _check_halves(packet, trust, r)
    if not r.failures:
        try:  # the whole of §5.7 once more: suite allowed, digests of ct and wrapped keys
            envelope.verify(packet, trust, int(time.time()) if now is None else now)
        except InvalidPacket:
            r.failures.append("a digest of the ciphertext or of a wrapped key does not match the signed header")
        except UntrustedSigner as exc:
            r.failures.append(str(exc))
    if log is not None:
        try:
            verify_inclusion(leaf_hash_for(h.raw, log.time), log.index, log.checkpoint.size, list(log.path),
                             log.checkpoint.root)
            r.log = f"included: leaf {log.index} of {log.checkpoint.size} (accepted {log.time})"
        except LogError as exc:
            r.log = f"FAIL: {exc}"
            r.failures.append(f"log inclusion: {exc}")
    elif log_status is not None:
        r.log = log_status
    if disclosure is not None:
        try:
            content = envelope.check_disclosure(h, *disclosure)
            r.disclosure = f"ok: the signed commitment matches the disclosed {content.get('type', '?')}"
        except (InvalidPacket, DecodeError):
            r.disclosure = "FAIL"
            r.failures.append("the disclosed content does not match the signed commitment")
    return r


class CheckpointSet:
    """Hub-signed checkpoints gathered from every input, checked pairwise where possible."""

    def __init__(self, roster: Roster, report: Report) -> None:
        self.roster, self.report = roster, report
        self.by_size: dict[int, dict[bytes, list[str]]] = {}

    def add(self, note: str, source: str) -> Checkpoint | None:
        try:
            cp = open_hub_checkpoint(note, self.roster)
        except LogError as exc:
            self.report.problems.append(f"{source}: checkpoint signature does not verify: {exc}")
            return None
        sources = self.by_size.setdefault(cp.size, {}).setdefault(cp.root, [])
        if source not in sources:
            sources.append(source)
            self.report.checkpoints.append({"source": source, "size": cp.size, "time": cp.time,
                                            "root": cp.root.hex()})
        return cp

    def check_chain(self, old: Checkpoint, new: Checkpoint, path: Iterable[bytes], source: str) -> bool:
        try:
            verify_consistency(old.size, new.size, old.root, new.root, list(path))
            return True
        except LogError as exc:
            self.report.problems.append(f"{source}: checkpoints of size {old.size} and {new.size} are "
                                        f"inconsistent: {exc}")
            return False

    def forks(self) -> list[tuple[int, list[list[str]]]]:
        """Sizes with more than one root: the hub signed two different logs."""
        return [(size, list(roots.values())) for size, roots in sorted(self.by_size.items()) if len(roots) > 1]

    def finish(self) -> None:
        for size, groups in self.forks():
            self.report.problems.append(
                f"fork: the hub signed different roots for tree size {size} (seen by "
                + " vs ".join(", ".join(g) for g in groups) + ")")

    def sorted_heads(self) -> list[tuple[int, bytes, str]]:
        return [(size, root, srcs[0]) for size, roots in sorted(self.by_size.items()) for root, srcs in roots.items()]


def confirm_evidence(data: dict[str, Any], roster: Roster) -> tuple[bool, str]:
    """Re-check saved evidence from the signed objects it holds alone: does the contradiction stand?"""
    try:
        kind = data["kind"]
        cps = [open_hub_checkpoint(n, roster) for n in data.get("checkpoints", [])]
        if kind in ("fork", "inconsistent"):
            if len(cps) == 2 and cps[0].size == cps[1].size and cps[0].root != cps[1].root:
                return True, f"two hub-signed checkpoints of size {cps[0].size} with different roots"
            c = data.get("consistency")
            if c is not None and len(cps) == 2:
                old, new = sorted(cps, key=lambda cp: cp.size)
                if (c["old"], c["new"]) != (old.size, new.size):
                    return False, "the consistency proof is for other sizes"
                try:
                    verify_consistency(old.size, new.size, old.root, new.root, list(c["path"]))
                except LogError as exc:
                    return True, f"the hub's own consistency proof between its two signed checkpoints fails ({exc})"
                return False, "the consistency proof verifies: no contradiction"
            return False, "no two checkpoints that contradict each other"
        if kind == "bad_inclusion":
            inc, cp = data["inclusion"], cps[0]
            if inc["size"] != cp.size:
                return False, "the proof is for another tree size than the checkpoint"
            try:
                verify_inclusion(leaf_hash_for(inc["header"], inc["time"]), inc["index"], cp.size, inc["path"],
                                 cp.root)
            except LogError as exc:
                return True, (f"the hub's proof does not place this packet at leaf {inc['index']} ({exc}); "
                              "a completeness audit shows what the log holds there")
            return False, "the inclusion proof verifies"
        if kind == "broken_promise":
            inc, cp = data["inclusion"], cps[0]
            promise = open_promise(data["promise"], roster, index=inc["index"], header=inc["header"])
            try:
                kept = check_promise_kept(promise, cp, list(inc.get("path", [])))
            except LogError as exc:
                return True, f"the hub's signed promise and its signed checkpoint contradict: {exc}"
            return False, "the promise is kept" if kept else "the promise's deadline has not passed"
        return False, f"unknown kind of evidence {kind!r}"
    except (LogError, KeyError, TypeError, IntelhubError) as exc:
        return False, f"the evidence is incomplete or does not verify: {exc}"


def evidence_entry(data: dict[str, Any], roster: Roster, source: str) -> dict[str, Any]:
    confirmed, why = confirm_evidence(data, roster)
    return {"source": source, "kind": data.get("kind"), "summary": data.get("summary"), "confirmed": confirmed,
            "why": why}


def proof_hashes(path_json: str | None) -> tuple[bytes, ...]:
    from .tlog import hashes_from_b64

    return tuple(hashes_from_b64(json.loads(path_json))) if path_json else ()
