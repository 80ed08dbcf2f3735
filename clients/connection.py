"""The node side of protocol v1: connect, authenticate, subscribe, publish, receive, acknowledge.

:class:`HubClient` keeps one WebSocket to the hub and survives its loss: it
reconnects with exponential backoff and full jitter, authenticates again,
re-subscribes (the hub resumes each subscription from its durable cursor), and
re-sends publishes still waiting for an answer — safe, because the hub treats a
re-published identical packet as an idempotent retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from hub.protocol import codec, frames
from hub.protocol.certs import Certificate
from hub.protocol.errors import DecodeError, IntelhubError, ProtocolError
from hub.protocol.keys import SigningKey
from hub.protocol.topics import check_pattern

log = logging.getLogger("intelhub.client")

#: Errors after which reconnecting cannot help.
FATAL_CODES = frozenset({"unauthenticated"})
#: Refusals of a session that pass: one session too many (the hub may not yet have seen the old
#: one drop), a store that is busy. Any other refusal is for who this node is: fatal.
RETRY_AUTH_CODES = frozenset({"too_many_sessions", "unavailable"})
#: Refusals of a subscription that pass; any other (a pattern the hub now forbids) ends it.
RETRY_SUB_CODES = frozenset({"unavailable", "rate_limited"})
#: A connection that stayed up this long (s) was healthy: the next reconnect starts the backoff anew.
#: One that drops sooner (a hub that closes right after welcome) backs off further each time.
STABLE_AFTER = 5.0
#: Seconds acks wait to share a frame (see :meth:`HubClient.ack`).
ACK_DELAY = 0.01
#: Seconds for the TCP connection, TLS and the WebSocket upgrade together.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds a send on a connection may wait for the hub to read before the connection is cut.
SEND_TIMEOUT = 30.0
#: Seconds close() gives the last acks and the close frame before it cuts the connection.
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Delivery:
    sub: str
    index: int
    packet: bytes
    cert: bytes | None
    proof: dict[str, Any] | None


class _Deliveries(asyncio.Queue[Delivery]):
    """The deliveries not yet taken by the consumer, each (subscription, index) once: a packet the hub
    redelivers (its ack timed out) while an earlier copy still waits here is not queued again, so the
    queue stays within the window however long the consumer stalls. A copy already taken and never
    acknowledged is queued again: that is what redelivery is for."""

    # asyncio.Queue's hooks for subclasses (as PriorityQueue and LifoQueue use them).
    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)  # type: ignore[misc]
        self.keys: set[tuple[str, int]] = set()

    def _put(self, item: Delivery) -> None:
        self.keys.add((item.sub, item.index))
        super()._put(item)  # type: ignore[misc]

    def _get(self) -> Delivery:
        item: Delivery = super()._get()  # type: ignore[misc]
        self.keys.discard((item.sub, item.index))
        return item


@dataclass(frozen=True)
class PublishResult:
    index: int
    packet_id: bytes
    duplicate: bool
    promise: str | None


class HubClient:
    def __init__(
        self,
        url: str,
        *,
        signing: SigningKey,
        cert: Certificate,
        roster_fp: bytes,
        hub_name: str,
        window: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        backoff: tuple[float, float] = (0.1, 10.0),
        ack_delay: float = ACK_DELAY,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/ws" if not url.endswith("/v1/ws") else url
        self.signing = signing
        self.cert = cert
        self.roster_fp = roster_fp
        self.hub_name = hub_name
        self.window = window
        self.ssl = ssl_context
        self.backoff = backoff
        if not 0 <= ack_delay <= 1:
            raise ValueError(f"ack_delay must be 0-1 seconds, not {ack_delay!r}")
        self.ack_delay = ack_delay
        self.deliveries = _Deliveries()
        self.notices: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.nation: str | None = None
        self.fatal: IntelhubError | None = None
        self.connects = 0
        #: Subscriptions the hub accepted, renewed on every reconnect.
        self._subs: dict[str, tuple[str, ...]] = {}
        #: rid -> subscription name, for renewals sent after a reconnect
        self._renewals: dict[int, str] = {}
        #: rid -> (answer, frame type, frame bytes): re-sent after a reconnect until answered
        self._pending: dict[int, tuple[asyncio.Future[Any], str, dict[str, Any], bytes]] = {}
        self._background: set[asyncio.Future[Any]] = set()
        #: When the current connection was welcomed (loop time), if it was
        self._up_since: float | None = None
        #: Why the hub last said this node may not go on (an error without rid before it closes 4001)
        self._refusal: str | None = None
        self._rid = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._acks: dict[str, list[int]] = {}
        self._ack_flush_scheduled = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="hub-client")

    async def wait_connected(self, timeout: float = 30.0) -> None:
        waiter = asyncio.ensure_future(self.connected.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout,  # type: ignore[arg-type, type-var]
                                   return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.fatal:
                raise self.fatal
            raise ProtocolError(f"could not connect to the hub at {self.url} within {timeout:g} s", "unreachable")

    async def wait_stopped(self) -> None:
        """Until the connection loop ends: after :meth:`close`, or once the hub refused this node
        for good (then :attr:`fatal` says why)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def close(self) -> None:
        ws = self._ws
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):  # a hub that stopped reading takes neither
                if self._acks:
                    await asyncio.shield(self._flush_acks())  # acks made just before closing still reach the hub
                self._closing = True
                if ws is not None:
                    await ws.close()
        except TimeoutError:
            if ws is not None:
                _abort(ws)
        self._closing = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session:
            await self._session.close()
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for fut, *_ in self._pending.values():
            if not fut.done():
                fut.set_exception(ProtocolError("client closed", "closed"))

    async def __aenter__(self) -> HubClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- operations ------------------------------------------------------------------

    async def _request(self, t: str, timeout: float, **fields: Any) -> Any:
        if self.fatal:
            raise self.fatal
        self._rid += 1
        rid = self._rid
        frame = frames.encode_frame(t, rid=rid, **fields)
        if len(frame) > frames.MAX_FRAME:
            # The hub would close the connection on it (and it would be re-sent on every reconnect).
            raise ProtocolError(f"{t} frame of {len(frame)} bytes; the protocol's limit is {frames.MAX_FRAME}",
                                "too_large")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, t, fields, frame)
        try:
            if self.connected.is_set() and self._ws is not None:
                # Sent beside the wait, not before it: a hub that stops reading must not hold the
                # request past its timeout (nor close()), and the send is not cancelled with it.
                self._send_soon(self._ws, frame)
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
                return await fut
        except TimeoutError:
            raise ProtocolError(f"no answer from the hub within {timeout:g} s", "timeout") from None
        finally:
            self._pending.pop(rid, None)

    async def publish(self, packet: bytes, cert: bytes | None = None, timeout: float = 30.0) -> PublishResult:
        f = await self._request("pub", timeout, packet=packet, cert=cert)
        return PublishResult(f["index"], f["id"], f["dup"], f.get("promise"))

    async def subscribe(self, name: str, patterns: list[str] | tuple[str, ...], timeout: float = 30.0) -> int:
        """Subscribe (or re-subscribe with new patterns); returns the first log index to come.
        Kept, and renewed after every reconnect, once the hub has accepted it. A pattern that is
        not one (§8.3) raises :class:`ValidationError` at once."""
        _check_name(name)
        if not 0 < len(patterns) <= frames.MAX_PATTERNS:
            raise ProtocolError(f"a subscription takes 1-{frames.MAX_PATTERNS} patterns", "bad_frame")
        for p in patterns:
            check_pattern(p, "patterns")  # a ValidationError now, rather than the hub's refusal later
        try:
            f = await self._request("sub", timeout, name=name, patterns=list(patterns))
        except ProtocolError as exc:
            if exc.code == "timeout":
                # The hub may have taken it and answered too late: renewed after every reconnect
                # like an accepted one (a refusal of the renewal drops it again).
                self._subs[name] = tuple(patterns)
            raise
        self._subs[name] = tuple(patterns)
        return int(f["cursor"])

    async def unsubscribe(self, name: str, timeout: float = 30.0) -> None:
        """Remove a subscription for good: the hub forgets its cursor and stops keeping packets for it."""
        _check_name(name)
        self._subs.pop(name, None)  # not renewed any more, whatever the answer
        before = self.connects
        try:
            await self._request("unsub", timeout, name=name)
        except ProtocolError as exc:
            # Sent again after a reconnect: the first copy may have removed it and lost its answer.
            if exc.code != "unknown_subscription" or self.connects == before:
                raise

    async def post(self, kind: str, data: bytes, timeout: float = 30.0) -> None:
        await self._request("post", timeout, kind=kind, data=data)

    async def ack(self, sub: str, index: int) -> None:
        """Acknowledge a delivery (call only once it is safely stored).

        Acks are batched: those made within ``ack_delay`` seconds of the first go out
        in one frame. When packets arrive one at a time (a few hundred a second),
        the hub otherwise reads, handles and commits an ack frame for every
        delivery, seven per packet, and that work delayed ACCEPTED answers to
        publishers. If the connection drops first, the hub redelivers (nodes dedupe).
        """
        self._acks.setdefault(sub, []).append(index)
        if not self._ack_flush_scheduled:
            self._ack_flush_scheduled = True
            asyncio.get_running_loop().call_later(self.ack_delay, lambda: asyncio.ensure_future(self._flush_acks()))

    async def _flush_acks(self) -> None:
        self._ack_flush_scheduled = False
        pending, self._acks = self._acks, {}
        ws = self._ws
        if ws is None or not self.connected.is_set():
            return
        try:
            for sub, indexes in pending.items():
                for i in range(0, len(indexes), frames.MAX_ACKS):
                    await ws.send_bytes(frames.encode_frame("ack", sub=sub, indexes=indexes[i:i + frames.MAX_ACKS]))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass

    # -- the connection loop --------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._closing:
            self._up_since = None
            try:
                await self._connect_once()
            except ProtocolError as exc:
                if exc.code in FATAL_CODES:
                    self.fatal = exc
                    log.error("hub refused this node: %s", exc)
                    for fut, *_ in self._pending.values():
                        if not fut.done():
                            fut.set_exception(exc)
                    return
                log.info("hub connection lost: %s", exc)
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError, DecodeError) as exc:
                log.info("hub connection failed: %s", exc)
            finally:
                self.connected.clear()
                self._ws = None
                self._renewals.clear()
            if self._closing:
                return
            if self._up_since is not None and loop.time() - self._up_since >= STABLE_AFTER:
                attempt = 0
            await asyncio.sleep(backoff_delay(self.backoff, attempt))
            attempt += 1

    async def _connect_once(self) -> None:
        assert self._session is not None
        # A hub (or a proxy before it) that takes the TCP connection and never answers the upgrade
        # must not hold this loop for aiohttp's default five minutes. MAX_FRAME + 1: aiohttp refuses
        # a message of max_msg_size bytes or more, and MAX_FRAME is the largest frame allowed.
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            ws = await self._session.ws_connect(self.url, max_msg_size=frames.MAX_FRAME + 1, heartbeat=30.0,
                                                ssl=self.ssl or True, autoping=True)
        async with ws:
            hello = frames.decode_frame(await self._recv(ws, 30.0), frames.HUB_TO_NODE)
            if hello["t"] != "hello":
                raise ProtocolError(f"expected hello, got {hello['t']}", "protocol")
            if hello["roster"] != self.roster_fp or hello["hub"] != self.hub_name:
                raise ProtocolError("the hub serves a different roster or name than ours", "unauthenticated")
            sig = self.signing.sign(frames.auth_message(hello["challenge"], self.hub_name, self.roster_fp, self.cert.fp, self.window))
            await ws.send_bytes(frames.encode_frame("auth", cert=self.cert.raw, sig=sig, window=self.window))
            welcome = frames.decode_frame(await self._recv(ws, 30.0), frames.HUB_TO_NODE)
            if welcome["t"] == "error":
                code = welcome["code"]
                raise ProtocolError(welcome["reason"], code if code in RETRY_AUTH_CODES else "unauthenticated")
            if welcome["t"] != "welcome":
                raise ProtocolError(f"expected welcome, got {welcome['t']}", "protocol")
            self.nation = welcome["nation"]
            self._ws = ws
            self.connects += 1
            self._up_since = asyncio.get_running_loop().time()
            self._refusal = None
            # Resume: renew the subscriptions, then re-send every request still waiting for an answer,
            # those made during these sends too (they see no connection yet, so they do not send
            # themselves), until none is left; then, with no await in between, the connection is up.
            for name in list(self._subs):
                if not any(t == "sub" and f.get("name") == name for _, t, f, _ in self._pending.values()):
                    await self._renew(ws, name)
            sent: set[int] = set()
            while todo := [rid for rid in sorted(self._pending) if rid not in sent]:
                for rid in todo:
                    sent.add(rid)
                    entry = self._pending.get(rid)
                    if entry is not None and not entry[0].done():
                        await self._send_or_drop(ws, entry[3])
            self.connected.set()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                self._dispatch(frames.decode_frame(msg.data, frames.HUB_TO_NODE))
            if ws.close_code is not None and ws.close_code == 4001:
                raise ProtocolError(self._refusal or "authentication failed", "unauthenticated")

    def _send_soon(self, ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> asyncio.Future[None]:
        """Send ``frame`` in a task of its own; its failure only means a re-send after reconnecting.

        Never cancelled by a caller's timeout: aiohttp's senders share one drain future, and
        cancelling one waiting send cancels that future under every other (seen as
        CancelledError in unrelated requests). Tasks start in order, so frames keep theirs."""

        async def send() -> None:
            try:
                await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                pass

        task = asyncio.ensure_future(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _send_or_drop(self, ws: aiohttp.ClientWebSocketResponse, frame: bytes) -> None:
        """Send on a connection the hub may have stopped reading: past SEND_TIMEOUT it is cut (a
        plain close would wait for the full buffer to drain) and the loop connects again."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await asyncio.shield(self._send_soon(ws, frame))
        except TimeoutError:
            _abort(ws)
            raise ConnectionError(f"the hub took no data for {SEND_TIMEOUT:g} s") from None

    @staticmethod
    async def _recv(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> bytes:
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"hub closed the connection ({ws.close_code}: {msg.extra or msg.type.name})")
        return bytes(msg.data)

    async def _renew(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> None:
        """Send a subscription again (after a reconnect, or after the hub could not take it)."""
        patterns = self._subs.get(name)
        if patterns is None or ws is not self._ws:  # dropped meanwhile, or the connection changed
            return
        self._rid += 1
        self._renewals[self._rid] = name
        try:
            await self._send_or_drop(ws, frames.encode_frame("sub", rid=self._rid, name=name, patterns=list(patterns)))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass  # renewed after reconnecting

    def _renewal_answered(self, name: str, f: dict[str, Any]) -> None:
        if f["t"] != "error":
            return
        if f["code"] in RETRY_SUB_CODES:
            # Tried again on this connection: it may stay up for hours, and without the subscription
            # the hub would deliver nothing to it.
            log.warning("hub could not renew subscription %s (%s); retrying", name, f["reason"])
            base, cap = self.backoff
            ws = self._ws
            task = asyncio.ensure_future(self._renew_later(ws, name, random.uniform(base, cap)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            log.error("hub refused subscription %s: %s (%s); it is dropped", name, f["reason"], f["code"])
            self._subs.pop(name, None)

    async def _renew_later(self, ws: aiohttp.ClientWebSocketResponse | None, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if ws is not None:
            await self._renew(ws, name)

    def _dispatch(self, f: dict[str, Any]) -> None:
        t = f["t"]
        if t == "deliver":
            if (f["sub"], f["index"]) in self.deliveries.keys:
                return  # redelivered while the first copy still waits in the queue
            self.deliveries.put_nowait(Delivery(f["sub"], f["index"], f["packet"], f.get("cert"), f.get("proof")))
            return
        if t == "notice":
            self.notices.put_nowait((f["kind"], f["data"]))
            return
        rid = f.get("rid")
        if rid is not None and rid in self._renewals:
            self._renewal_answered(self._renewals.pop(rid), f)
            return
        entry = self._pending.get(rid) if rid is not None else None
        if t == "error":
            err = ProtocolError(f["reason"], f["code"])
            if rid is None and f["code"] == "unauthenticated":
                self._refusal = f["reason"]  # the session's certificate stopped being usable; 4001 follows
            if entry and not entry[0].done():
                entry[0].set_exception(err)
            else:
                log.warning("hub error: %s (%s)", f["reason"], f["code"])
            return
        if entry and not entry[0].done():
            entry[0].set_result(f)


def backoff_delay(backoff: tuple[float, float], attempt: int) -> float:
    """Seconds to wait before try ``attempt`` (0, 1, ...): exponential backoff from ``backoff``'s
    base up to its cap, with full jitter, so seven nodes do not retry in lockstep."""
    base, cap = backoff
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 16)))


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Cut a connection at once, unsent data and all (aiohttp has no public abort)."""
    conn = getattr(getattr(ws, "_response", None), "connection", None)
    transport = getattr(conn, "transport", None)
    if transport is not None:
        transport.abort()


def _check_name(name: str) -> None:
    # Checked here: the hub cannot decode a frame that breaks it, so its refusal names no request.
    if not 0 < len(name) <= frames.MAX_NAME:
        raise ProtocolError(f"subscription name must be 1-{frames.MAX_NAME} characters", "bad_frame")


async def http_publish(url: str, packet: bytes, cert: bytes | None = None, *, timeout: float = 30.0,
                       ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """One-shot publish over HTTP (the officer's CLI): authenticated by the packet's own signature."""
    body = codec.encode({"packet": packet, **({"cert": cert} if cert else {})})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(url.rstrip("/") + "/v1/publish", data=body, ssl=ssl_context or True,
                              headers={"Content-Type": "application/msgpack"}) as r:
                try:
                    data: dict[str, Any] = await r.json(content_type=None)
                except ValueError:
                    raise ProtocolError(f"hub answered HTTP {r.status} without a JSON body", "protocol") from None
                if r.status != 200:
                    raise ProtocolError(data.get("reason", f"HTTP {r.status}"), data.get("code", "protocol"))
                return data
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ProtocolError(f"cannot reach the hub at {url} ({exc.__class__.__name__}: {exc})", "unreachable") from None
