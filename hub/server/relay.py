"""The hub's logic, free of any transport: accept packets, route them, track acknowledgements.

The WebSocket adapter (:mod:`hub.server.session`) and the HTTP endpoints
(:mod:`hub.server.http`) call into one :class:`Relay`. Checks run cheapest first
(size, rate, structure) so a flood costs the hub little; signature checks run on
a thread pool (pyca/cryptography releases the GIL, so they use every core).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from aiohttp import WSCloseCode

from hub.aio import TurnBatcher
from hub.protocol import envelope
from hub.protocol.roster import RevocationList
from hub.protocol.errors import (DecodeError, FutureSkew, IntelhubError, InvalidPacket, ProtocolError, StoreError,
                                 UntrustedSigner)
from hub.protocol.topics import any_match_cached
from hub.protocol.trust import Trust

from .config import HubConfig
from .metrics import Metrics
from .storage import Appended, NewPacket, Storage

if TYPE_CHECKING:
    from .log import HubLog

log = logging.getLogger("intelhub.hub")

#: Most packets verified in one task on a verify thread.
VERIFY_CHUNK: Final = 16
#: Client addresses whose HTTP publishes the hub meters before verifying them (oldest forgotten first).
MAX_ADDRESS_BUCKETS: Final = 4096


def reject(code: str, reason: str) -> ProtocolError:
    return ProtocolError(reason, code)


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Accepted:
    index: int
    packet_id: bytes
    duplicate: bool
    accepted_at: int
    promise: str | None


def _verify_each(verify: Any, items: list[tuple[bytes, int]]) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for raw, now in items:
        try:
            out.append((True, verify(raw, now)))
        except Exception as exc:  # noqa: BLE001 - handed to the packet's own publish
            out.append((False, exc))
    return out


class Relay:
    def __init__(self, config: HubConfig, trust: Trust, storage: Storage, metrics: Metrics,
                 hub_log: HubLog | None = None) -> None:
        self.config = config
        self.trust = trust
        self.storage = storage
        self.metrics = metrics
        self.hub_log = hub_log
        # A packet that comes alone is checked on the event loop (see TurnBatcher): through a verify
        # thread its 0.3 ms check took a publish ~5 ms at 500 packets/s on a loaded machine. Bursts
        # go to the threads, which spread them over the cores.
        self._verify_batched = TurnBatcher(self._verify_chunk, workers=config.verify_threads, chunk=VERIFY_CHUNK,
                                           inline=partial(_verify_each, self._verify))
        self.pool = ThreadPoolExecutor(config.verify_threads, thread_name_prefix="hub-verify") \
            if config.verify_threads > 0 else None
        #: nation -> its publish budget, shared by its sessions and its officers' HTTP publishes
        self._buckets: dict[str, TokenBucket] = {}
        #: client address -> a flood guard for HTTP publishes, checked before any signature is
        #: (enough for every nation at once: one proxy may carry them all)
        self._address_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: nations whose revocation list in force could not be written to disk yet
        self._unsaved_revocations: set[str] = set()
        #: nation -> callbacks woken when a packet for that nation is committed
        self._listeners: dict[str, set[asyncio.Event]] = defaultdict(set)
        #: (nation, subscription name) -> the session feeding it; one feeder at a time
        self._feed_owners: dict[tuple[str, str], Any] = {}
        self._background: set[asyncio.Future[Any]] = set()
        #: nation -> its authenticated sessions (capped at limits.max_sessions_per_nation)
        self.sessions_by_nation: dict[str, set[Any]] = defaultdict(set)

    # -- clock ----------------------------------------------------------------

    def now(self) -> int:
        return int(time.time())

    # -- certificates and revocations (the key directory) ------------------------

    async def learn_certificate(self, raw: bytes) -> Any:
        """Check a certificate against the roster; remember it in the directory if new."""
        try:
            known = len(self.trust.certs)
            cert = self.trust.add_certificate(raw)
        except DecodeError as exc:
            raise reject("malformed", f"certificate: {exc}") from None
        except UntrustedSigner as exc:
            raise reject("untrusted_signer", str(exc)) from None
        if len(self.trust.certs) != known:
            try:
                await self._put_blob("cert", cert.fp, cert.raw)
            except ProtocolError:
                # Not kept in memory either: the directory serves what the disk holds, and the next
                # packet that carries the certificate tries the write again.
                self.trust.forget_certificate(cert.fp)
                raise
        return cert

    async def _put_blob(self, kind: str, key: bytes, data: bytes) -> None:
        try:
            await self.storage.put_blob(kind, key, data)
        except StoreError as exc:
            log.error("store refused a write: %s", exc)
            raise reject("unavailable", "the hub cannot store this right now; retry later") from None

    async def learn_revocations(self, raw: bytes) -> Any:
        try:
            before = self.trust.revocations.get(RevocationList.parse(raw).nation)
            rl = self.trust.add_revocations(raw)
        except DecodeError as exc:
            raise reject("malformed", f"revocations: {exc}") from None
        except UntrustedSigner as exc:
            raise reject("untrusted_signer", str(exc)) from None
        if rl is not before or rl.nation in self._unsaved_revocations:
            # Sessions of the certificates it revokes end now, not at their next reconnect: a stolen
            # node key must not keep taking its nation's packets (and acknowledging them away).
            now = self.now()
            for sessions in self.sessions_by_nation.values():
                for s in list(sessions):
                    why = self.trust.usable_at(s.cert, now) if s.cert is not None else None
                    if why:
                        self.spawn(s.end_invalid(why))
                    else:  # every other connected node hears of it at once (they also poll the directory)
                        self.spawn(s.send("notice", kind="revocations", data=rl.raw))
            # In force from now on even if the disk refuses it (a revocation must not wait for a disk),
            # and written again when it is posted again.
            self._unsaved_revocations.add(rl.nation)
            await self._put_blob("revocations", rl.nation.encode(), rl.raw)
            self._unsaved_revocations.discard(rl.nation)
        return rl

    def load_directory(self) -> None:
        """Certificates and revocation lists learnt in earlier runs."""
        for _, raw in self.storage.blobs("cert"):
            try:
                self.trust.add_certificate(raw)
            except IntelhubError as exc:
                log.warning("stored certificate no longer verifies: %s", exc)
        for _, raw in self.storage.blobs("revocations"):
            try:
                self.trust.add_revocations(raw)
            except IntelhubError as exc:
                log.warning("stored revocation list no longer verifies: %s", exc)

    # -- publishing ------------------------------------------------------------------

    def _check_rate(self, nation: str) -> None:
        limits = self.config.limits
        bucket = self._buckets.get(nation)
        if bucket is None:
            bucket = self._buckets[nation] = TokenBucket(limits.publish_rate, limits.publish_burst)
        if not bucket.take():
            raise reject("rate_limited", f"more than {limits.publish_rate:g} packets/s from {nation}; slow down and retry")

    def _check_address(self, address: str) -> None:
        limits = self.config.limits
        bucket = self._address_buckets.get(address)
        if bucket is None:
            if len(self._address_buckets) >= MAX_ADDRESS_BUCKETS:
                self._address_buckets.popitem(last=False)
            n = max(1, len(self.trust.roster.nations))
            bucket = self._address_buckets[address] = TokenBucket(limits.publish_rate * n, limits.publish_burst * n)
        else:
            self._address_buckets.move_to_end(address)
        if not bucket.take():
            raise reject("rate_limited", f"more publishes from {address} than every nation's rate together; "
                         "slow down and retry")

    def _verify(self, raw: bytes, now: int) -> envelope.Verified:
        return envelope.verify(raw, self.trust, now)

    async def _verify_chunk(self, items: list[tuple[bytes, int]]) -> list[tuple[bool, Any]]:
        """:meth:`_verify` of a chunk of packets on a verify thread; each packet's outcome, its
        exception included, goes back to its own publish."""
        assert self.pool is not None
        return await asyncio.get_running_loop().run_in_executor(self.pool, _verify_each, self._verify, items)

    async def publish(self, raw: bytes, *, nation: str | None, cert: bytes | None = None,
                      address: str | None = None) -> Accepted:
        """Run every acceptance check, then append durably. ``nation`` is the session's, if any;
        without one (HTTP), ``address`` is the client's, and the packet's signer names the nation
        whose rate it counts against."""
        t0 = time.perf_counter()
        try:
            accepted = await self._publish(raw, nation, cert, address)
        except ProtocolError as exc:
            self.metrics.rejected.labels(exc.code).inc()
            raise
        self.metrics.accepted.inc()
        self.metrics.accept_latency.observe(time.perf_counter() - t0)
        return accepted

    async def _publish(self, raw: bytes, nation: str | None, cert: bytes | None, address: str | None) -> Accepted:
        limits = self.config.limits
        if len(raw) > limits.max_packet_bytes:
            raise reject("too_large", f"packet is {len(raw)} bytes; the limit is {limits.max_packet_bytes}")
        if nation is not None:
            self._check_rate(nation)
        else:
            self._check_address(address or "unknown")
        if cert is not None:
            await self.learn_certificate(cert)
        now = self.now()
        try:
            if self.pool is None:
                v = self._verify(raw, now)
            else:
                ok, value = await self._verify_batched((raw, now))
                if not ok:
                    raise value
                v = value
        except DecodeError as exc:
            raise reject("malformed", str(exc)) from None
        except InvalidPacket as exc:
            raise reject("invalid_packet", str(exc)) from None
        except FutureSkew as exc:  # the protocol's own limit ahead, before max_clock_skew is looked at
            raise reject("clock_skew", str(exc)) from None
        except UntrustedSigner as exc:
            raise reject("untrusted_signer", str(exc)) from None
        h = v.header
        if nation is None:
            self._check_rate(h.sender)  # an officer's HTTP publish spends its nation's budget
        elif h.sender != nation:
            raise reject("wrong_nation", f"this session is authenticated as {nation}; it cannot publish packets of {h.sender}")
        if not any_match_cached(self.config.publish_patterns(h.sender), h.topic):
            raise reject("forbidden_topic", f"{h.sender} may not publish to {h.topic} "
                         f"(allowed: {', '.join(self.config.publish_patterns(h.sender))})")
        try:
            self._check_new(h, now)
        except ProtocolError:
            # A packet accepted before is answered as before, however long ago it was sealed (an
            # idempotent retry after an outage) until it expires: these checks are for packets not
            # yet held. Looked up only here; on the common path the append finds duplicates.
            existing = self.storage.get(h.id)
            if existing is None or h.expires <= now:
                raise
            if existing.header != h.raw:
                raise reject("conflict", f"a different packet was already accepted under id {h.packet_id}") from None
            return Accepted(existing.index, h.id, True, existing.accepted_at, None)
        item = NewPacket(h.id, h.sender, h.sender_cert, h.topic, h.nations, h.created, h.expires, h.raw, raw)
        try:
            [result] = await self.storage.append([item], now)
        except StoreError as exc:
            log.error("store refused a write: %s", exc)
            raise reject("unavailable", "the hub cannot store packets right now; nothing was accepted, retry later") from None
        if not isinstance(result, Appended):
            raise reject("conflict", f"a different packet was already accepted under id {h.packet_id}")
        if not result.duplicate:
            self.wake(h.nations)
        promise = await self.hub_log.promise(item, result) if self.hub_log else None
        return Accepted(result.index, h.id, result.duplicate, result.accepted_at, promise)

    def _check_new(self, h: envelope.Header, now: int) -> None:
        limits = self.config.limits
        skew = limits.max_clock_skew
        if abs(h.created - now) > skew:
            raise reject("clock_skew", f"packet created {h.created - now:+d} s from the hub's clock (window ±{skew} s); check the clock")
        if h.expires <= now:
            raise reject("expired", "packet has already expired")
        if len(h.to) > limits.max_recipients:
            raise reject("too_many_recipients", f"{len(h.to)} recipients; the limit is {limits.max_recipients}")
        unknown = [n for n in h.nations if n not in self.trust.roster.nations]
        if unknown:
            raise reject("unknown_recipient", f"{', '.join(unknown)} not in the roster")

    # -- delivery wake-ups ----------------------------------------------------------

    def listen(self, nation: str, event: asyncio.Event) -> None:
        self._listeners[nation].add(event)

    def unlisten(self, nation: str, event: asyncio.Event) -> None:
        self._listeners[nation].discard(event)

    def wake(self, nations: tuple[str, ...] | list[str]) -> None:
        for n in nations:
            for ev in self._listeners.get(n, ()):
                ev.set()

    def spawn(self, coro: Any) -> None:
        """Run a background write; errors are logged (a lost ack only means a redelivery)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background write failed: %s", task.exception())

    def claim_feed(self, session: Any, name: str) -> None:
        """A subscription is fed to one session at a time: a reconnecting node takes it over."""
        key = (session.nation, name)
        old = self._feed_owners.get(key)
        if old is not None and old is not session:
            old.drop_feed(name)
        self._feed_owners[key] = session

    def end_feed(self, nation: str, name: str) -> None:
        """Stop feeding a subscription that is being removed."""
        owner = self._feed_owners.pop((nation, name), None)
        if owner is not None:
            owner.drop_feed(name)

    def feeding(self, nation: str, name: str) -> bool:
        """Whether a connected session feeds (or is subscribing) this subscription."""
        return (nation, name) in self._feed_owners

    async def end_session_feeding(self, nation: str, name: str, why: str) -> None:
        """Close the session feeding ``name`` (if any): its node reconnects and subscribes afresh."""
        owner = self._feed_owners.pop((nation, name), None)
        if owner is None:
            return
        owner.drop_feed(name)
        await owner.close_within(2.0, WSCloseCode.SERVICE_RESTART, why.encode()[:120])

    def release_feeds(self, session: Any) -> None:
        for key, owner in list(self._feed_owners.items()):
            if owner is session:
                del self._feed_owners[key]

    def may_subscribe(self, nation: str, topic: str) -> bool:
        return any_match_cached(self.config.subscribe_patterns(nation), topic)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
