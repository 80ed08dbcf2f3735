"""The transparency log as its readers see it (docs/protocol.md §9): leaves, proofs, promises. No I/O.

Shared by the node's log watcher, the completeness audit and the auditor's tool. The hub
writes these formats (hub/server/log.py); tests/test_log.py checks both sides agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

from hub.protocol import codec
from hub.protocol.certs import Certificate
from hub.protocol.checkpoint import Checkpoint, check_uint, open_checkpoint, parse_hash
from hub.protocol.errors import DecodeError, LogError
from hub.protocol.keys import SigningPublicKey
from hub.protocol.logformat import (  # noqa: F401  (re-exported: the readers' view of the format)
    LEAF_VERSION, PROMISE_BATCH_HEADER, PROMISE_BATCH_MAX, b64, batch_promise_entries, leaf_data, leaf_hash_for,
    log_origin,
)
from hub.protocol.merkle import MAX_PROOF_HASHES, leaf_hash, verify_inclusion
from hub.protocol.note import CosignatureVerifier, NoteVerifier, open_note
from hub.protocol.promise import PROMISE_HEADER, Promise, verify_promise
from hub.protocol.roster import Roster

PROOF_VERSION: Final[int] = 1
#: Longest merge delay a reader accepts in a promise (the hub promises 60 s).
MAX_ACCEPTED_MMD: Final[int] = 3600
#: Largest leaf: a header of 64 recipients is about 6 KiB.
MAX_LEAF_BYTES: Final[int] = 64 * 1024










def _note_keys(key: SigningPublicKey) -> tuple[Ed25519PublicKey, MLDSA65PublicKey]:
    return Ed25519PublicKey.from_public_bytes(key.ed25519), MLDSA65PublicKey.from_public_bytes(key.mldsa65)


def hub_verifier(roster: Roster) -> NoteVerifier:
    """The hub's hybrid note verifier, from the roster's hub key."""
    return NoteVerifier(log_origin(roster.hub_name), *_note_keys(roster.hub_key))


def witness_verifier(cert: Certificate) -> CosignatureVerifier:
    """A node's cosignature verifier: key name ``<nation>/<subject>``, the node certificate's keys."""
    return CosignatureVerifier(cert.name, *_note_keys(cert.signing))


def open_hub_checkpoint(note: str | bytes, roster: Roster) -> Checkpoint:
    """Verify a checkpoint's hub signature (both halves) and origin."""
    return open_checkpoint(note, hub_verifier(roster), log_origin(roster.hub_name))


# -- leaves -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One log entry, decoded: what the hub accepted at ``index`` and when."""

    index: int
    time: int
    header: bytes
    hash: bytes
    packet_id: str
    sender: str
    topic: str
    recipients: tuple[str, ...]
    expires: int


def decode_leaf(index: int, data: bytes) -> Leaf:
    """Strictly decode a leaf's data (canonical, closed schema) and the routing fields of its header."""
    try:
        d = codec.decode(data, max_size=MAX_LEAF_BYTES)
        if type(d) is not dict or d.keys() != {"header", "time", "v"} or d["v"] != LEAF_VERSION:
            raise DecodeError("leaf must be a map of header, time and v = 1")
        header, t = d["header"], d["time"]
        if type(header) is not bytes or type(t) is not int or t < 0:
            raise DecodeError("leaf header must be bytes and time a non-negative integer")
        h = codec.decode(header, max_size=MAX_LEAF_BYTES, max_items=80)
        if type(h) is not dict:
            raise DecodeError("leaf header is not a map")
        pid, sender, to = h.get("id"), h.get("sender"), h.get("to")
        if type(pid) is not bytes or len(pid) != 16 or type(sender) is not dict or type(to) is not list:
            raise DecodeError("leaf header lacks id, sender or to")
        nations = tuple(r["nation"] for r in to if type(r) is dict and type(r.get("nation")) is str)
        topic, expires = h.get("topic"), h.get("expires")
        if len(nations) != len(to) or type(topic) is not str or type(expires) is not int \
                or type(sender.get("nation")) is not str:
            raise DecodeError("leaf header has malformed routing fields")
    except DecodeError as exc:
        raise LogError(f"leaf {index}: {exc}") from None
    return Leaf(index, t, header, leaf_hash(data), str(uuid.UUID(bytes=pid)), sender["nation"], topic,
                nations, expires)


def decode_leaves(body: bytes, start: int, count: int) -> list[Leaf]:
    """The body of ``GET /v1/log/leaves``: exactly ``count`` leaves from ``start``."""
    try:
        d = codec.decode(body, max_size=(MAX_LEAF_BYTES + 16) * 1000 + 64, max_items=1000)
    except DecodeError as exc:
        raise LogError(f"leaves: {exc}") from None
    if type(d) is not dict or d.keys() != {"start", "leaves"} or d["start"] != start \
            or type(d["leaves"]) is not list or len(d["leaves"]) != count:
        raise LogError(f"leaves: expected {count} leaves from {start}")
    out = []
    for i, data in enumerate(d["leaves"]):
        if type(data) is not bytes:
            raise LogError(f"leaf {start + i} is not bytes")
        out.append(decode_leaf(start + i, data))
    return out


def header_of_packet(packet: bytes) -> tuple[bytes, str | None]:
    """A packet's signed header bytes and its id, from its structure alone (no signature check)."""
    try:
        p = codec.decode(packet, max_size=max(len(packet), 1))
        if type(p) is not dict or type(p.get("header")) is not bytes:
            raise DecodeError("packet has no header")
        h = codec.decode(p["header"], max_items=128)
    except DecodeError as exc:
        raise LogError(f"packet: {exc}") from None
    pid = h.get("id") if type(h) is dict else None
    return p["header"], str(uuid.UUID(bytes=pid)) if type(pid) is bytes and len(pid) == 16 else None


# -- inclusion proofs ---------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProof:
    """Leaf ``index``, accepted at ``time``, is in the tree of ``size`` (when known) by ``path``."""

    index: int
    time: int
    size: int | None = None
    path: tuple[bytes, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": PROOF_VERSION, "time": self.time}
        if self.size is not None:
            d["size"] = self.size
            d["path"] = [b64(h) for h in self.path]
        return d

    def verify(self, header: bytes, checkpoint: Checkpoint) -> None:
        """Raise :class:`LogError` unless this packet header's leaf is in ``checkpoint``'s tree."""
        if self.size != checkpoint.size:
            raise LogError(f"proof is for a tree of size {self.size}, the checkpoint has {checkpoint.size}")
        verify_inclusion(leaf_hash_for(header, self.time), self.index, checkpoint.size, list(self.path),
                         checkpoint.root)


def _hash_list(value: object, what: str) -> tuple[bytes, ...]:
    if type(value) is not list or len(value) > MAX_PROOF_HASHES:
        raise LogError(f"{what} must be a list of at most {MAX_PROOF_HASHES} hashes")
    out = []
    for i, h in enumerate(value):
        if type(h) is not str:
            raise LogError(f"{what}[{i}] must be base64 text")
        out.append(parse_hash(h, f"{what}[{i}]"))
    return tuple(out)


def proof_from_wire(d: object, index: int) -> InclusionProof:
    """Parse the ``proof`` of a deliver frame, or one entry of ``GET /v1/log/inclusion``, strictly."""
    if type(d) is not dict:
        raise LogError("proof must be a map")
    allowed = {"v", "time", "size", "path", "index"}
    if not {"v", "time"} <= d.keys() <= allowed or ("size" in d) != ("path" in d):
        raise LogError(f"proof must hold v, time, and size with path together; got {sorted(d)}")
    if d["v"] != PROOF_VERSION or type(d["v"]) is not int:
        raise LogError(f"proof version {d['v']!r} is not {PROOF_VERSION}")
    if "index" in d and d["index"] != index:
        raise LogError(f"proof is for leaf {d['index']!r}, not {index}")
    t = check_uint(d["time"], "proof time")
    if "size" not in d:
        return InclusionProof(index, t)
    return InclusionProof(index, t, check_uint(d["size"], "proof size"), _hash_list(d["path"], "proof path"))


def consistency_from_wire(d: object, old: int, new: int) -> tuple[bytes, ...]:
    """The path of a ``GET /v1/log/consistency`` answer, checked to be for ``old`` → ``new``."""
    if type(d) is not dict or d.get("old") != old or d.get("new") != new or "path" not in d:
        raise LogError(f"consistency answer is not for sizes {old} -> {new}")
    return _hash_list(d["path"], "consistency path")


# -- promises -----------------------------------------------------------------------------




def open_promise(note: str | bytes, roster: Roster, *, index: int, header: bytes,
                 max_mmd: int = MAX_ACCEPTED_MMD) -> Promise:
    """Verify the hub's promise for the packet with ``header`` at ``index``; either form (§9.4).

    Returns a :class:`Promise` for :func:`hub.protocol.promise.check_promise_kept`: its
    ``time`` is the promise's own (the deadline runs from it) and its leaf hash the packet's.
    """
    origin = log_origin(roster.hub_name)
    verifier = hub_verifier(roster)
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise LogError("promise is not UTF-8") from None
    if note.startswith(PROMISE_HEADER + "\n"):
        p = verify_promise(note, verifier, origin, max_mmd=max_mmd)
        if p.index != index:
            raise LogError(f"promise is for leaf {p.index}, the packet was accepted at {index}")
        if p.leaf_hash != leaf_hash_for(header, p.time):
            raise LogError("promise is for a different leaf than this packet's")
        return p
    text, _ = open_note(note, verifier)
    t, mmd, entries = batch_promise_entries(text, origin)
    if mmd > max_mmd:
        raise LogError(f"promise merge delay {mmd}s exceeds the accepted {max_mmd}s")
    if index not in entries:
        raise LogError(f"batch promise does not list leaf {index}")
    accepted_at, leaf = entries[index]
    if leaf != leaf_hash_for(header, accepted_at):
        raise LogError("promise is for a different leaf than this packet's")
    return Promise(origin, index, leaf, t, mmd)


def hashes_from_b64(values: Sequence[str]) -> list[bytes]:
    """Base64 hashes as stored in JSON (the node store, the watcher's tables), strictly."""
    return [parse_hash(v, f"hash {i}") if type(v) is str else _not_text(i) for i, v in enumerate(values)]


def _not_text(i: int) -> bytes:
    raise LogError(f"hash {i} is not base64 text")
