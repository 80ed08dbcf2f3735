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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, TypeVar

from clients.connection import Delivery, HubClient
from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir
from hub.protocol import envelope
from hub.protocol.certs import Certificate
from hub.protocol.content import default_topic, validate_content
from hub.protocol.errors import ConfigError, IntelhubError, KeyFileError, ProtocolError, ValidationError
from hub.protocol.keys import KemKey, SigningKey
from hub.protocol.trust import Trust

from .config import NodeConfig
from .filters import FilterSet
from .sinks import SinkRunner, sinks_from_config
from .store import NodeStore
from .watch import LogWatcher

log = logging.getLogger("intelhub.node")
T = TypeVar("T")

#: Packet types that get receipts (receipts themselves do not, or they would echo forever).
RECEIPTED = frozenset({"alert", "freeze", "amend", "withdraw"})
#: Fault injection for the crash tests only: "after_store:N" exits abruptly after the N-th commit,
#: before its acknowledgement; "before_store:N" exits just before the N-th commit.
FAULT_ENV = "INTELHUB_FAULT"


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
        self.crypto = ThreadPoolExecutor(2, thread_name_prefix="node-crypto")
        # Watches the hub's log: inclusion of every packet, consistent checkpoints, cosignatures.
        self.watcher = LogWatcher(config.store, self.me.trust, nation=self.me.nation, signing=self.me.signing,
                                  cert=self.me.cert, ssl_context=self.me.ssl_context(config), pin_interval=10.0)
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fault = _parse_fault(os.environ.get(FAULT_ENV, ""))

    def now(self) -> int:
        return int(self.clock())

    # -- one delivery ------------------------------------------------------------------

    async def handle(self, d: Delivery) -> str:
        """Process one delivery to the point where it may be acknowledged; returns what happened."""
        what = await self._handle(d)
        # Every delivery, quarantined ones too, is a leaf the hub says it logged: check its inclusion.
        self.watcher.on_delivery(d.index, d.packet, d.proof)
        return what

    async def _handle(self, d: Delivery) -> str:
        received = self.now()
        try:
            if d.cert is not None:
                self.me.trust.add_certificate(d.cert)
            header = envelope.parse_packet(d.packet).header
        except IntelhubError as exc:
            await self.st.call(self.st.store.quarantine, raw=d.packet, reason=f"{exc.code}: {exc}",
                               log_index=d.index, received_at=received)
            return self._count("quarantined", d, exc)
        if await self.st.call(self.st.store.has_packet, header.packet_id):
            return self._count("duplicate", d)
        try:
            opened = await asyncio.get_running_loop().run_in_executor(
                self.crypto, partial(envelope.open_packet, d.packet, nation=self.me.nation, kem=self.me.kem,
                                     trust=self.me.trust, now=received))
        except IntelhubError as exc:
            await self.st.call(self.st.store.quarantine, raw=d.packet, reason=f"{exc.code}: {exc}",
                               log_index=d.index, received_at=received, packet_id=header.packet_id)
            return self._count("quarantined", d, exc)
        decision = self.filters.decide(opened.header, opened.content)
        self._maybe_crash("before_store")
        try:
            result = await self.st.call(
                self.st.store.ingest, raw=d.packet, header=opened.header, signer=opened.signer,
                content=opened.content, salt=opened.salt, content_bytes=opened.content_bytes, log_index=d.index,
                received_at=received, proof=d.proof, action=decision.action, rule=decision.rule,
                sinks=decision.sinks, processed=decision.processed)
        except ValidationError as exc:
            await self.st.call(self.st.store.quarantine, raw=d.packet, reason=f"{exc.code}: {exc}",
                               log_index=d.index, received_at=received, packet_id=header.packet_id)
            return self._count("quarantined", d, exc)
        if result == "duplicate":
            return self._count("duplicate", d)
        self._maybe_crash("after_store")
        if self.runner and decision.sinks:
            self.runner.kick()
        if opened.content["type"] in RECEIPTED and opened.header.sender != self.me.nation:
            if self.config.send_delivered:
                self._spawn(self.send_receipt(opened.header.packet_id, "delivered", opened.header.sender))
            if decision.processed:
                self._spawn(self.send_receipt(opened.header.packet_id, "processed", opened.header.sender))
        return self._count("dropped" if decision.action == "drop" else "stored", d)

    def _maybe_crash(self, point: str) -> None:
        if self._fault and self._fault[0] == point:
            self._fault = (point, self._fault[1] - 1)
            if self._fault[1] <= 0:
                os._exit(137)  # as abrupt as SIGKILL: no cleanup, no ack

    def _count(self, what: str, d: Delivery, exc: Exception | None = None) -> str:
        self.counts[what] += 1
        if exc is not None:
            log.warning("quarantined delivery %d: %s", d.index, exc)
        return what

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_receipt(self, ref: str, status: str, originator: str, attempts: int = 8) -> bool:
        """Seal and publish a signed receipt; retried with backoff while the hub is unreachable."""
        raw, content = await asyncio.get_running_loop().run_in_executor(
            self.crypto, self.me.seal_receipt, ref, status, originator, self.now())
        h = envelope.parse_packet(raw).header
        delay = 0.5
        for _ in range(attempts):
            try:
                r = await self.client.publish(raw, timeout=30)
                await self.st.call(self.st.store.record_sent, raw=raw, header=h, content=content,
                                   log_index=r.index, promise=r.promise, sent_at=self.now())
                self.counts[f"receipts_{status}"] += 1
                return True
            except ProtocolError as exc:
                if exc.code not in ("timeout", "unavailable", "rate_limited", "closed", "unreachable"):
                    log.error("receipt for %s refused by the hub: %s", ref, exc)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        return False

    async def _notices(self) -> None:
        """Checkpoints the hub pushes: verified, compared with the last, cosigned by the watcher."""
        while True:
            kind, data = await self.client.notices.get()
            if kind == "checkpoint":
                try:
                    self.watcher.on_checkpoint(data)
                except IntelhubError as exc:
                    log.error("checkpoint from the hub refused: %s", exc)

    # -- the service ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
        import aiohttp

        stop = stop or asyncio.Event()
        # Packets stored before the watcher saw them (a crash between commit and watch): paged, on a thread.
        await asyncio.get_running_loop().run_in_executor(None, self.watcher.backfill, self.st.store.raw_packets())
        await self.client.start()
        runner_task = asyncio.create_task(self.runner.run()) if self.runner else None
        http = aiohttp.ClientSession()
        watch_task = asyncio.create_task(self.watcher.run(http, self.config.hub, post=self.client.post, stop=stop))
        notices_task = asyncio.create_task(self._notices())
        try:
            await self.client.wait_connected(timeout=60)
            for s in self.config.subscriptions:
                cursor = await self.client.subscribe(s.name, s.patterns)
                log.info("%s subscribed %s to %s from log index %d", self.me.nation, s.name, ",".join(s.patterns), cursor)
            if ready:
                ready.set()
            stopper = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                getter = asyncio.ensure_future(self.client.deliveries.get())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                d = getter.result()
                await self.handle(d)
                # Acknowledged only now: the store has committed (or quarantined) it.
                await self.client.ack(d.sub, d.index)
            stopper.cancel()
        finally:
            notices_task.cancel()
            watch_task.cancel()
            await asyncio.gather(notices_task, watch_task, return_exceptions=True)
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
            self.st.close()
