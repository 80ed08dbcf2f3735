"""The national node service (``intelhub node run``): receive, verify, decrypt, filter, store, acknowledge.

For each delivery: skip it if already stored (acknowledge again); otherwise verify
and decrypt on a worker thread (the crypto releases the GIL), apply the filters,
commit to the store in one transaction, and only then acknowledge to the hub.
A packet that fails any check is quarantined with the reason and acknowledged,
so it never blocks the queue. Signed *delivered* (and *processed*) receipts go back
to the originator.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from collections.abc import AsyncIterator
from typing import Any, Callable, TypeVar

from clients.connection import RETRY_SUB_CODES, Delivery, HubClient, backoff_delay
from hub.aio import wait_event
from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir
from hub.protocol import codec, envelope
from hub.protocol.roster import RevocationList
from hub.protocol.envelope import Header, Opened
from hub.protocol.certs import Certificate
from hub.protocol.content import default_topic, validate_content
from hub.protocol.errors import ConfigError, DecodeError, IntelhubError, KeyFileError, ProtocolError, ValidationError
from hub.protocol.keys import KemKey, SigningKey
from hub.protocol.trust import Trust

from .config import NodeConfig
from .cryptopool import CryptoPool
from .filters import Decision, FilterSet
from .sinks import SinkRunner, sinks_from_config
from .store import Incoming, NodeStore
from .watch import LogWatcher

log = logging.getLogger("intelhub.node")
#: Failures of connecting and subscribing at start that are tried again: the hub down or slow.
START_RETRY_CODES = RETRY_SUB_CODES | {"unreachable", "timeout"}
#: Seconds between "still not connected" warnings while the node waits for the hub at start.
START_WARN_EVERY = 60.0
T = TypeVar("T")

#: Packet types that get receipts (receipts themselves do not, or they would echo forever).
RECEIPTED = frozenset({"alert", "freeze", "amend", "withdraw"})
#: Fault injection for the crash tests only: "after_store:N" exits abruptly after the N-th commit,
#: before its acknowledgement; "before_store:N" exits just before the N-th commit.
FAULT_ENV = "INTELHUB_FAULT"
#: Deliveries being verified and decrypted at once, and most committed in one transaction.
#: Internal outbox "sinks" for the receipts a node owes (drained by NodeService.receipts).
RECEIPT_SINKS = {"delivered": "intelhub.receipt.delivered", "processed": "intelhub.receipt.processed"}
PIPELINE = 256
MAX_BATCH = 128
#: How long a commit waits for packets already being opened to join its batch (seconds).
BATCH_WAIT = 0.01
#: Packet ids remembered in memory, so redeliveries after a reconnect skip the crypto.
RECENT_IDS = 65536


@dataclass
class Prepared:
    """A delivery made ready for the store: opened and filtered, or known bad, or already stored."""

    delivery: Delivery
    received: int
    header: Header | None
    opened: Opened | None = None
    decision: Decision | None = None
    error: IntelhubError | None = None
    duplicate: bool = False


class StoreThread:
    """Every call to the store runs on one thread: one SQLite connection, one writer, no interleaving."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="node-store")

    async def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args, **kw))

    def sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return self.pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        self.pool.submit(self.store.close).result()
        self.pool.shutdown()


class _Outbox:
    """The store's outbox as the sinks see it, routed through the store thread."""

    def __init__(self, st: StoreThread) -> None:
        self.st = st

    def outbox_pending(self, sink: str, limit: int = 100, now: int | None = None) -> Any:
        return self.st.sync(self.st.store.outbox_pending, sink, limit, now)

    def outbox_done(self, ids: Any) -> None:
        self.st.sync(self.st.store.outbox_done, ids)

    def outbox_failed(self, item_id: int, error: str, retry_at: int) -> None:
        self.st.sync(self.st.store.outbox_failed, item_id, error, retry_at)


def _parse_fault(spec: str) -> tuple[str, int] | None:
    point, _, n = spec.partition(":")
    if point in ("after_store", "before_store") and n.isdigit():
        return point, int(n)
    return None


def iso_now(t: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class NodeIdentity:
    """The node's keys, certificate and trust, loaded and cross-checked."""

    def __init__(self, config: NodeConfig) -> None:
        keys = load_private_keys(config.key)
        if keys.signing is None or keys.kem is None:
            raise KeyFileError(f"{config.key}: a node key needs both signing and recipient (HPKE) keys")
        self.signing: SigningKey = keys.signing
        self.kem: KemKey = keys.kem
        self.trust: Trust = load_trust_dir(config.trust)
        self.cert: Certificate = self.trust.add_certificate(load_certificate(config.cert).raw)
        if self.cert.role != "node" or self.cert.nation != config.nation:
            raise ConfigError(f"node.cert: {self.cert.name} is a {self.cert.role} certificate of {self.cert.nation}, "
                              f"not a node certificate of {config.nation}")
        if self.cert.signing.key_id != self.signing.public().key_id or self.cert.kem != self.kem.public():
            raise KeyFileError(f"{config.key}: does not hold the keys certified by {config.cert}")
        self.nation = config.nation

    def ssl_context(self, config: NodeConfig) -> ssl.SSLContext | None:
        if config.hub.startswith("https://"):
            return ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        return None

    def seal_receipt(self, ref: str, status: str, originator: str, now: int) -> tuple[bytes, dict[str, Any]]:
        content = validate_content({"type": "receipt", "ref": ref, "status": status, "at": iso_now(now)})
        raw = envelope.seal(content, signer=self.signing, signer_cert=self.cert,
                            recipients=[self.trust.recipient(originator, now)], topic=default_topic(content), now=now)
        return raw, content


class NodeService:
    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.me = NodeIdentity(config)
        self.filters = FilterSet.from_config(config.doc, config.base)
        self.sinks = sinks_from_config(config.doc, config.base)
        self.st = StoreThread(NodeStore(config.store))
        self.runner = SinkRunner(_Outbox(self.st), self.sinks) if self.sinks else None
        self.client = HubClient(config.hub, signing=self.me.signing, cert=self.me.cert,
                                roster_fp=self.me.trust.roster.fp, hub_name=self.me.trust.roster.hub_name,
                                window=config.window, ssl_context=self.me.ssl_context(config))
        self.crypto = CryptoPool(config.crypto_workers, self.me.nation, self.me.kem)
        self.sealer = ThreadPoolExecutor(1, thread_name_prefix="node-seal")
        # Watches the hub's log: inclusion of every packet, consistent checkpoints, cosignatures.
        self.watcher = LogWatcher(config.store, self.me.trust, nation=self.me.nation, signing=self.me.signing,
                                  cert=self.me.cert, ssl_context=self.me.ssl_context(config), pin_interval=10.0)
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fault = _parse_fault(os.environ.get(FAULT_ENV, ""))
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._receipts_due = asyncio.Event()

    def now(self) -> int:
        return int(self.clock())

    # -- one delivery ------------------------------------------------------------------

    async def handle(self, d: Delivery) -> str:
        """Process one delivery to the point where it may be acknowledged; returns what happened."""
        [what] = await self.commit([await self.prepare(d)])
        return what

    async def prepare(self, d: Delivery) -> Prepared:
        """Everything before the store: parse, skip known packets, verify and decrypt (on a worker
        thread or process: see cryptopool), filter. Never raises for a bad packet."""
        received = self.now()
        if self.crypto.processes:
            fast = await self._prepare_peeked(d, received)
            if fast is not None:
                return fast
        try:
            if d.cert is not None:
                self.me.trust.add_certificate(d.cert)
            packet = envelope.parse_packet(d.packet)
            header = packet.header
        except IntelhubError as exc:
            return Prepared(d, received, None, error=exc)
        # A redelivery of something just stored skips the crypto; anything else already stored is
        # found by the store itself (ingest returns "duplicate"), without a store round trip here.
        if header.packet_id in self._recent_ids:
            return Prepared(d, received, header, duplicate=True)
        try:
            # The trust decision here, against the live trust store; the rest on any core.
            signer = envelope.check_signer(packet.header, self.me.trust, received)
            opened = await self.crypto.open(packet, signer)
        except IntelhubError as exc:
            return Prepared(d, received, header, error=exc)
        return Prepared(d, received, header, opened, self.filters.decide(opened.header, opened.content))

    async def _prepare_peeked(self, d: Delivery, received: int) -> Prepared | None:
        """:meth:`prepare` for the common case with worker processes, without a strict parse here.

        The trust decision is taken on fields peeked from the header; the worker parses strictly
        and its header must carry the same fields. Outcomes are the full path's: a failed packet
        is parsed strictly here, so a malformed one is reported as that first, as it would be.
        None (the caller takes the full path) for a certificate to learn, a packet the peek
        cannot read, or a recent id."""
        peek = envelope.peek_header(d.packet) if d.cert is None else None
        if peek is None or peek.packet_id in self._recent_ids:
            return None
        try:
            signer = envelope.check_signer(peek, self.me.trust, received)
            opened = await self.crypto.open_raw(d.packet, signer)
            if not envelope.peek_agrees(peek, opened.header):
                raise DecodeError("the header reads differently strictly and permissively")
        except IntelhubError as exc:
            # The bytes a strict parse accepts read the same permissively, so the full path would
            # have reached the same check with the same fields, and failed the same way.
            try:
                header = envelope.parse_packet(d.packet).header
            except IntelhubError as bad:
                return Prepared(d, received, None, error=bad)
            return Prepared(d, received, header, error=exc)
        return Prepared(d, received, opened.header, opened, self.filters.decide(opened.header, opened.content))

    async def commit(self, batch: list[Prepared]) -> list[str]:
        """Store a batch in one transaction (quarantining what failed), then act on it.

        After this returns every delivery of the batch may be acknowledged: its packet is
        committed, or quarantined, or was already stored.
        """
        results = await self.st.call(self._store_batch, batch)
        for p, what in zip(batch, results):
            d = p.delivery
            if p.header is not None and what in ("stored", "dropped", "duplicate"):
                self._recent_ids[p.header.packet_id] = None
                if len(self._recent_ids) > RECENT_IDS:
                    self._recent_ids.popitem(last=False)
            # Every delivery, quarantined ones too, is a leaf the hub says it logged: check its inclusion.
            self.watcher.on_delivery(d.index, d.packet, d.proof,
                                     (p.header.raw, p.header.packet_id) if p.header is not None else None)
            self.counts[what] += 1
            if what != "stored" or p.opened is None or p.decision is None:
                continue
            if self.runner and p.decision.sinks:
                self.runner.kick()
        if any(r == "stored" for r in results):
            self._receipts_due.set()
        return results

    def _receipt_sinks(self, o: Opened, dec: Decision) -> tuple[str, ...]:
        """Receipts owed for a packet: queued in the store's outbox in the packet's own transaction,
        so a crash after the commit cannot lose them (the receipt worker sends them)."""
        if dec.action != "store" or o.content["type"] not in RECEIPTED or o.header.sender == self.me.nation:
            return ()
        return ((RECEIPT_SINKS["delivered"],) if self.config.send_delivered else ()) + \
            ((RECEIPT_SINKS["processed"],) if dec.processed else ())

    def _store_batch(self, batch: list[Prepared]) -> list[str]:
        """On the store thread: quarantine failures, ingest the rest in ONE transaction (one fsync)."""
        store = self.st.store
        out: list[str] = []
        todo: list[tuple[int, Incoming]] = []
        seen: set[str] = set()
        for i, p in enumerate(batch):
            d = p.delivery
            if p.error is not None:
                store.quarantine(raw=d.packet, reason=f"{p.error.code}: {p.error}", log_index=d.index,
                                 received_at=p.received, packet_id=p.header.packet_id if p.header else None)
                log.warning("quarantined delivery %d: %s", d.index, p.error)
                out.append("quarantined")
            elif p.duplicate or p.header is None or p.header.packet_id in seen or p.opened is None:
                out.append("duplicate")
            else:
                seen.add(p.header.packet_id)
                o, dec = p.opened, p.decision
                sinks = tuple(dec.sinks) + self._receipt_sinks(o, dec)  # type: ignore[arg-type, union-attr]
                todo.append((i, Incoming(d.packet, o.header, o.signer, o.content, o.salt, o.content_bytes, d.index,
                                         p.received, d.proof, dec.action, dec.rule, sinks,  # type: ignore[union-attr]
                                         dec.processed)))  # type: ignore[union-attr]
                out.append("")
        self._maybe_crash("before_store", len(todo))
        try:
            stored = store.ingest_many([inc for _, inc in todo])
        except ValidationError:
            # One bad amendment must not sink the batch: store them one by one, quarantining the bad.
            stored = []
            for _, inc in todo:
                try:
                    stored.append(store.ingest_many([inc])[0])
                except ValidationError as exc:
                    store.quarantine(raw=inc.raw, reason=f"{exc.code}: {exc}", log_index=inc.log_index,
                                     received_at=inc.received_at, packet_id=inc.header.packet_id)
                    log.warning("quarantined delivery %s: %s", inc.log_index, exc)
                    stored.append("quarantined")
        for (i, inc), result in zip(todo, stored):
            out[i] = ("dropped" if inc.action == "drop" else "stored") if result == "stored" else result
        self._maybe_crash("after_store", len(todo))
        return out

    def _maybe_crash(self, point: str, packets: int) -> None:
        if self._fault and self._fault[0] == point and packets:
            self._fault = (point, self._fault[1] - packets)
            if self._fault[1] <= 0:
                os._exit(137)  # as abrupt as SIGKILL: no cleanup, no ack

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def receipts(self) -> None:
        """Send the receipts queued in the store's outbox, oldest first, until none are due.

        A receipt leaves the outbox only once the hub accepted it (and it is recorded as sent), in
        that order: a crash in between re-sends the same receipt, which the hub takes as a retry."""
        store = self.st.store
        while True:
            self._receipts_due.clear()
            failed = False
            for status, sink in RECEIPT_SINKS.items():
                for item in await self.st.call(store.outbox_pending, sink, 32, self.now()):
                    if not await self._send_receipt(item, status):
                        failed = True
                        break
            await wait_event(self._receipts_due, 5.0 if failed else 60.0)

    async def _still_valid(self, raw: bytes) -> bool:
        """Whether a receipt sealed earlier can still be sent: the hub answers an accepted packet as a
        retry whatever its age, and refuses an unaccepted one outside its clock window."""
        if envelope.parse_packet(raw).header.created >= self.now() - 60:
            return True
        try:
            await self.client.publish(raw, timeout=30)
            return True
        except ProtocolError as exc:
            return exc.code not in ("clock_skew", "expired")

    async def _send_receipt(self, item: Any, status: str) -> bool:
        ref, originator = item.packet_id, item.payload["sender"]
        store = self.st.store
        # Sealed once and recorded before it is published: after a crash the same bytes go again,
        # which the hub answers as a retry, so the originator never holds two receipts for one packet.
        raw = await self.st.call(store.sent_receipt, ref, status)
        if raw is not None and not await self._still_valid(raw):
            raw = None  # the hub never accepted it and now never will (too old): seal anew
        content: dict[str, Any]
        if raw is None:
            sealed: tuple[bytes, dict[str, Any]] = await asyncio.get_running_loop().run_in_executor(
                self.sealer, self.me.seal_receipt, ref, status, originator, self.now())
            raw, content = sealed
            await self.st.call(store.record_sent, raw=raw, header=envelope.parse_packet(raw).header,
                               content=content, log_index=None, promise=None, sent_at=self.now())
        else:
            content = {"type": "receipt", "ref": ref, "status": status}
        try:
            r = await self.client.publish(raw, timeout=30)
        except IntelhubError as exc:
            # Kept, with backoff (no limit on attempts): the originator is owed this receipt.
            retry = self.now() + min(300, 2 ** min(item.attempts, 8))
            await self.st.call(self.st.store.outbox_failed, item.id, str(exc), retry)
            log.info("receipt for %s not sent yet: %s", ref, exc)
            return False
        h = envelope.parse_packet(raw).header
        await self.st.call(self.st.store.record_sent, raw=raw, header=h, content=content, log_index=r.index,
                           promise=r.promise, sent_at=self.now())
        await self.st.call(self.st.store.outbox_done, [item.id])
        self.counts[f"receipts_{status}"] += 1
        return True

    async def pipeline(self, stop: asyncio.Event, source: AsyncIterator[Delivery] | None = None) -> None:
        """Deliveries flow through ``prepare`` concurrently (up to PIPELINE at once) and are committed
        in arrival order, as many per transaction as are ready: one fsync serves a burst.

        ``source`` defaults to the hub connection; the pipeline ends when it is exhausted or ``stop`` is set.
        """
        ready: asyncio.Queue[asyncio.Future[Prepared] | None] = asyncio.Queue(PIPELINE)
        loop = asyncio.get_running_loop()

        async def hub_deliveries() -> AsyncIterator[Delivery]:
            while True:
                yield await self.client.deliveries.get()

        async def reader() -> None:
            async for d in source or hub_deliveries():
                await ready.put(asyncio.ensure_future(self.prepare(d)))
            await ready.put(None)

        async def committer() -> None:
            while True:
                head = await ready.get()
                if head is None:
                    return
                batch = [await head]
                # Group commit: take what is ready, and wait a little for packets already being
                # opened (each commit costs an fsync); never wait for packets not yet received.
                deadline = loop.time() + BATCH_WAIT
                while len(batch) < MAX_BATCH and not ready.empty():
                    nxt = ready._queue[0]  # type: ignore[attr-defined]
                    if nxt is None:
                        break
                    if not nxt.done():
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        await asyncio.wait([nxt], timeout=left)
                        if not nxt.done():
                            break
                    batch.append(await ready.get_nowait())  # type: ignore[misc]
                await self.commit(batch)
                for p in batch:  # acknowledged only now: committed, quarantined, or already stored
                    await self.client.ack(p.delivery.sub, p.delivery.index)

        tasks = [asyncio.create_task(reader()), asyncio.create_task(committer())]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopper, tasks[1]], return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for task in (stopper, *tasks):
                task.cancel()
            await asyncio.gather(stopper, *tasks, return_exceptions=True)
            while not ready.empty():
                f = ready.get_nowait()
                if f is not None:
                    f.cancel()

    async def _unsubscribe_dropped(self) -> None:
        """Remove at the hub the subscriptions this node made that its configuration no longer names."""
        configured = {s.name for s in self.config.subscriptions}
        for name in await self.st.call(self.st.store.hub_subscriptions):
            if name in configured:
                continue
            try:
                await self.client.unsubscribe(name)
            except ProtocolError as exc:
                if exc.code != "unknown_subscription":  # gone already: forget it all the same
                    log.warning("subscription %s not removed at the hub yet: %s", name, exc)
                    continue
            await self.st.call(self.st.store.unsubscribed, name)
            log.info("%s unsubscribed %s (no longer in its configuration)", self.me.nation, name)

    def _learn_revocations(self, raw: bytes, source: str) -> None:
        """A revocation list from the hub: kept only if its nation's root signed it and it is newer."""
        try:
            before = self.me.trust.revocations.get(RevocationList.parse(raw).nation)
            rl = self.me.trust.add_revocations(raw)
            if rl is not before:
                log.warning("revocation list of %s, serial %d, from %s: %d certificate(s) revoked",
                            rl.nation, rl.serial, source, len(rl.entries))
        except IntelhubError as exc:
            log.error("revocation list from %s refused: %s", source, exc)

    async def _directory(self, http: Any) -> None:
        """Refresh certificates and revocation lists from the hub's key directory, every minute.

        Everything in it is signed by a nation's root and checked against the roster here, so the
        hub can withhold an update but not forge one; nations should also exchange revocations out
        of band (docs/security.md)."""
        url = self.config.hub + "/v1/directory"
        while True:
            try:
                async with http.get(url, ssl=self.me.ssl_context(self.config) or True) as r:
                    d = codec.decode(await r.read(), max_size=16 << 20, max_items=65536) if r.status == 200 else {}
                for raw in d.get("certs", []) if isinstance(d, dict) else []:
                    try:
                        self.me.trust.add_certificate(raw)
                    except IntelhubError as exc:
                        log.warning("certificate in the hub's directory refused: %s", exc)
                for raw in d.get("revocations", []) if isinstance(d, dict) else []:
                    self._learn_revocations(raw, "the hub's directory")
            except (OSError, IntelhubError, asyncio.TimeoutError) as exc:
                log.info("key directory not refreshed: %s", exc)
            await asyncio.sleep(60)

    async def _notices(self) -> None:
        """Checkpoints the hub pushes: verified, compared with the last, cosigned by the watcher."""
        while True:
            kind, data = await self.client.notices.get()
            if kind == "revocations":
                self._learn_revocations(data, "the hub's notice")
            elif kind == "checkpoint":
                try:
                    self.watcher.on_checkpoint(data)
                except IntelhubError as exc:
                    log.error("checkpoint from the hub refused: %s", exc)

    # -- the service ---------------------------------------------------------------------

    async def _start(self, ready: asyncio.Event | None) -> None:
        """Connect and subscribe, for as long as it takes: the hub may be down when the node starts
        (the client reconnects with backoff meanwhile); a refusal for good ends it."""
        attempt, warned = 0, -float("inf")
        while True:
            try:
                await self.client.wait_connected(timeout=START_WARN_EVERY)
                for s in self.config.subscriptions:
                    cursor = await self.client.subscribe(s.name, s.patterns)
                    await self.st.call(self.st.store.subscribed, s.name, s.patterns)
                    log.info("%s subscribed %s to %s from log index %d", self.me.nation, s.name,
                             ",".join(s.patterns), cursor)
                break
            except ProtocolError as exc:
                if self.client.fatal or exc.code not in START_RETRY_CODES:
                    raise
                if time.monotonic() - warned >= START_WARN_EVERY:
                    warned = time.monotonic()
                    log.warning("%s node not connected and subscribed yet (%s); still trying", self.me.nation, exc)
                # A hub that answers "unavailable" at once is not asked again at once.
                await asyncio.sleep(backoff_delay(self.client.backoff, attempt))
                attempt += 1
        await self._unsubscribe_dropped()
        if ready:
            ready.set()

    async def run(self, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
        import aiohttp

        stop = stop or asyncio.Event()
        await self.crypto.warm()  # worker processes, if configured, up before the first packet
        # Packets stored before the watcher saw them (a crash between commit and watch): paged, on a thread.
        await asyncio.get_running_loop().run_in_executor(None, self.watcher.backfill, self.st.store.raw_packets())
        await self.client.start()
        runner_task = asyncio.create_task(self.runner.run()) if self.runner else None
        http = aiohttp.ClientSession()
        watch_task = asyncio.create_task(self.watcher.run(http, self.config.hub, post=self.client.post, stop=stop))
        notices_task = asyncio.create_task(self._notices())
        directory_task = asyncio.create_task(self._directory(http))
        receipts_task = asyncio.create_task(self.receipts())
        # If the hub refuses this node for good (its certificate revoked, say), the service stops
        # and says why, rather than stay up receiving nothing.
        gone_task = asyncio.create_task(self.client.wait_stopped())
        gone_task.add_done_callback(lambda _: stop.set() if self.client.fatal else None)
        try:
            # Interrupted by a stop: a node started while the hub is down must still stop on SIGTERM.
            starting = asyncio.create_task(self._start(ready))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                if self.client.fatal:
                    raise self.client.fatal
                log.info("%s node stopped before it was connected and subscribed", self.me.nation)
                return
            starting.result()
            await self.pipeline(stop)
            if self.client.fatal:
                raise self.client.fatal
        finally:
            for t in (notices_task, watch_task, directory_task, receipts_task, gone_task):
                t.cancel()
            await asyncio.gather(notices_task, watch_task, directory_task, receipts_task, gone_task,
                                 return_exceptions=True)
            await http.close()
            self.watcher.close()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)
            if self.runner:
                self.runner.stop()
            if runner_task:
                await asyncio.gather(runner_task, return_exceptions=True)
                await self.runner.close()  # type: ignore[union-attr]
            await self.client.close()
            self.crypto.shutdown(wait=False)
            self.sealer.shutdown(wait=False)
            self.st.close()
