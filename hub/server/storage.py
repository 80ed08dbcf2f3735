"""The hub's storage interface: the one seam a replicated backend (NATS JetStream) will fill.

Five operations carry the relay's guarantees: ``append`` (durable before it
returns, assigns the gap-free log index, idempotent by packet id), ``subscribe``
(a durable cursor), ``ack``, ``scan`` (what a nation's subscription reads next)
and ``read_range`` (the log in order). Everything else is housekeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class NewPacket:
    packet_id: bytes
    sender: str
    signer: bytes
    topic: str
    recipients: tuple[str, ...]
    created: int
    expires: int
    header: bytes
    raw: bytes


@dataclass(frozen=True)
class Appended:
    index: int
    accepted_at: int
    #: True when this exact packet had been accepted before (an idempotent retry).
    duplicate: bool


@dataclass(frozen=True)
class Conflict:
    """A different packet was already accepted under this id."""

    index: int


@dataclass(frozen=True)
class StoredPacket:
    index: int
    packet_id: bytes
    sender: str
    signer: bytes
    topic: str
    header: bytes
    accepted_at: int
    expires: int
    #: None once purged after retention; the log keeps the header forever.
    raw: bytes | None
    leaf_hash: bytes


@dataclass(frozen=True)
class Scan:
    """What :meth:`Storage.scan` found: every packet for the nation with ``after < index <= upto``,
    in log order. ``upto`` may pass packets of other nations, so a subscriber far behind moves
    through them in bounded steps rather than rereading them; ``end`` says nothing was committed
    past ``upto`` when the scan looked."""

    packets: list[StoredPacket]
    upto: int
    end: bool


@dataclass(frozen=True)
class Subscription:
    nation: str
    name: str
    patterns: tuple[str, ...]
    #: Every matching packet with index <= cursor has been acknowledged.
    cursor: int
    #: Acknowledged indexes above the cursor (out-of-order acks).
    acked: frozenset[int]


class Storage(Protocol):
    async def append(self, items: list[NewPacket], now: int) -> list[Appended | Conflict]: ...

    async def subscribe(self, nation: str, name: str, patterns: tuple[str, ...], now: int | None = None) -> Subscription: ...

    async def ack(self, nation: str, name: str, indexes: list[int], cursor: int) -> None: ...

    def subscription_names(self, nation: str) -> list[str]: ...

    async def unsubscribe(self, nation: str, name: str) -> bool: ...

    def scan(self, nation: str, after: int, limit: int) -> Scan: ...

    def read_range(self, start: int, stop: int) -> list[StoredPacket]: ...

    def get(self, packet_id: bytes) -> StoredPacket | None: ...

    def size(self) -> int: ...

    def leaf_hashes(self) -> list[bytes]: ...

    async def put_blob(self, kind: str, key: bytes, data: bytes) -> None: ...

    def blobs(self, kind: str) -> list[tuple[bytes, bytes]]: ...

    async def purge(self, now: int, retention: int) -> int: ...

    async def close(self) -> None: ...
