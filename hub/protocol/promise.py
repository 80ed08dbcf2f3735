"""The hub's signed promise of inclusion (like a CT SCT, RFC 6962 §3.2). No I/O.

When the hub accepts a packet it appends the packet's leaf hash to its log and
returns a promise, a signed note (see note.py) whose text is::

    intelhub promise v1                              header (has spaces: never a checkpoint origin)
    intelhub.example/log                             log origin
    1048575                                          leaf index, decimal
    ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWVmZGVhZGJlZWY=     leaf hash, base64 of 32 bytes
    time 1764395258                                  acceptance time, POSIX seconds
    mmd 60                                           maximum merge delay, seconds

It states: "the leaf with this hash is at this index of this log, and every
checkpoint with time at or after ``time + mmd`` includes it". Because the index
is promised too, the publisher checks inclusion at exactly that position. A
checkpoint at or after the deadline whose tree does not contain the leaf at that
index, together with the promise, is evidence against the hub
(:func:`check_promise_kept`). The hub signs with its hybrid key: both the
Ed25519 and the ML-DSA-65 lines must verify.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .checkpoint import (
    Checkpoint,
    check_hub_verifiers,
    check_uint,
    parse_decimal,
    parse_hash,
    parse_keyword,
    split_lines,
)
from .errors import LogError
from .merkle import HASH_SIZE, verify_inclusion
from .note import NoteSigner, NoteVerifier, check_name, open_note, sign_note

PROMISE_HEADER: Final[str] = "intelhub promise v1"


@dataclass(frozen=True)
class Promise:
    """The hub's promise that ``leaf_hash`` is leaf ``index`` of ``origin`` by ``time + mmd``."""

    origin: str
    index: int
    leaf_hash: bytes
    time: int
    mmd: int

    def __post_init__(self) -> None:
        check_name(self.origin, "origin")
        check_uint(self.index, "leaf index")
        check_uint(self.time, "time")
        check_uint(self.mmd, "maximum merge delay")
        if not isinstance(self.leaf_hash, bytes) or len(self.leaf_hash) != HASH_SIZE:
            raise LogError(f"leaf hash must be {HASH_SIZE} bytes")

    @property
    def deadline(self) -> int:
        """Every checkpoint with a time at or after this includes the leaf."""
        return self.time + self.mmd

    def body(self) -> str:
        """The promise note text."""
        leaf = base64.b64encode(self.leaf_hash).decode("ascii")
        return (
            f"{PROMISE_HEADER}\n{self.origin}\n{self.index}\n{leaf}\n"
            f"time {self.time}\nmmd {self.mmd}\n"
        )


def parse_promise_body(text: str) -> Promise:
    """Parse a promise text strictly; :meth:`Promise.body` of the result equals ``text``."""
    header, origin, index, leaf, time, mmd = split_lines(text, 6, "promise")
    if header != PROMISE_HEADER:
        raise LogError(f"promise must start with {PROMISE_HEADER!r}")
    return Promise(
        origin=check_name(origin, "promise origin"),
        index=parse_decimal(index, "promise leaf index"),
        leaf_hash=parse_hash(leaf, "promise leaf hash"),
        time=parse_keyword(time, "time", "promise"),
        mmd=parse_keyword(mmd, "mmd", "promise"),
    )


def sign_promise(promise: Promise, signers: NoteSigner | Sequence[NoteSigner]) -> str:
    """The promise as a signed note."""
    if not isinstance(promise, Promise):
        raise LogError("sign_promise needs a Promise")
    return sign_note(promise.body(), signers)


def verify_promise(
    note: str | bytes,
    verifiers: NoteVerifier | Sequence[NoteVerifier],
    origin: str,
    *,
    leaf_hash: bytes | None = None,
    max_mmd: int | None = None,
    hybrid: bool = True,
) -> Promise:
    """Verify a promise signed by any one of the hub's keys; check what the caller expects.

    ``leaf_hash``: the hash the publisher computed for its packet. ``max_mmd``:
    the merge delay the federation agreed to; a promise for longer is refused.
    """
    text, _ = open_note(note, check_hub_verifiers(verifiers, hybrid), required=1)
    promise = parse_promise_body(text)
    if promise.origin != origin:
        raise LogError(f"promise is for log {promise.origin!r}, expected {origin!r}")
    if leaf_hash is not None and promise.leaf_hash != leaf_hash:
        raise LogError("promise is for a different leaf hash")
    if max_mmd is not None and promise.mmd > max_mmd:
        raise LogError(f"promise merge delay {promise.mmd}s exceeds the agreed {max_mmd}s")
    return promise


def check_promise_kept(promise: Promise, checkpoint: Checkpoint, proof: Sequence[bytes]) -> bool:
    """Whether ``checkpoint`` (already verified) shows the promise kept.

    Returns True when the tree contains the leaf at the promised index (``proof``
    is its inclusion proof), False when the tree is too small but the checkpoint
    is still before the deadline. Raises :class:`LogError` when the promise is broken: the
    checkpoint is past the deadline without the leaf, or the proof fails.
    """
    if checkpoint.origin != promise.origin:
        raise LogError("checkpoint and promise are for different logs")
    if checkpoint.size <= promise.index:
        if checkpoint.time >= promise.deadline:
            raise LogError(
                f"promise broken: leaf {promise.index} missing from a tree of size "
                f"{checkpoint.size} at time {checkpoint.time}, deadline {promise.deadline}"
            )
        return False
    verify_inclusion(promise.leaf_hash, promise.index, checkpoint.size, proof, checkpoint.root)
    return True
