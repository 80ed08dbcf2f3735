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

log = logging.getLogger("intelhub.client")

#: Errors after which reconnecting cannot help.
FATAL_CODES = frozenset({"unauthenticated"})
#: Seconds acks wait to share a frame (see :meth:`HubClient.ack`).
ACK_DELAY = 0.01


@dataclass(frozen=True)
class Delivery:
    sub: str
    index: int
    packet: bytes
    cert: bytes | None
    proof: dict[str, Any] | None


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
        self.deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self.notices: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.nation: str | None = None
        self.fatal: IntelhubError | None = None
        self.connects = 0
        self._subs: dict[str, tuple[str, ...]] = {}
        self._pending: dict[int, tuple[asyncio.Future[Any], str, dict[str, Any]]] = {}
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

    async def close(self) -> None:
        if self._acks:
            await self._flush_acks()  # acks made just before closing still reach the hub
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session:
            await self._session.close()
        for fut, _, _ in self._pending.values():
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
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, t, fields)
        try:
            if self.connected.is_set() and self._ws is not None:
                try:
                    await self._ws.send_bytes(frames.encode_frame(t, rid=rid, **fields))
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    pass  # re-sent after reconnecting
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
        self._subs[name] = tuple(patterns)
        f = await self._request("sub", timeout, name=name, patterns=list(patterns))
        return int(f["cursor"])

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
        attempt = 0
        while not self._closing:
            try:
                await self._connect_once()
                attempt = 0
            except ProtocolError as exc:
                if exc.code in FATAL_CODES:
                    self.fatal = exc
                    log.error("hub refused this node: %s", exc)
                    for fut, _, _ in self._pending.values():
                        if not fut.done():
                            fut.set_exception(exc)
                    return
                log.info("hub connection lost: %s", exc)
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError, DecodeError) as exc:
                log.info("hub connection failed: %s", exc)
            finally:
                self.connected.clear()
                self._ws = None
            if self._closing:
                return
            # Exponential backoff with full jitter, so 7 nodes do not reconnect in lockstep.
            base, cap = self.backoff
            await asyncio.sleep(random.uniform(0, min(cap, base * 2 ** min(attempt, 16))))
            attempt += 1

    async def _connect_once(self) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.url, max_msg_size=frames.MAX_FRAME, heartbeat=30.0,
                                            ssl=self.ssl or True, autoping=True) as ws:
            hello = frames.decode_frame(await self._recv(ws, 30.0), frames.HUB_TO_NODE)
            if hello["t"] != "hello":
                raise ProtocolError(f"expected hello, got {hello['t']}", "protocol")
            if hello["roster"] != self.roster_fp or hello["hub"] != self.hub_name:
                raise ProtocolError("the hub serves a different roster or name than ours", "unauthenticated")
            sig = self.signing.sign(frames.auth_message(hello["challenge"], self.hub_name, self.roster_fp, self.cert.fp, self.window))
            await ws.send_bytes(frames.encode_frame("auth", cert=self.cert.raw, sig=sig, window=self.window))
            welcome = frames.decode_frame(await self._recv(ws, 30.0), frames.HUB_TO_NODE)
            if welcome["t"] == "error":
                raise ProtocolError(welcome["reason"], "unauthenticated")
            if welcome["t"] != "welcome":
                raise ProtocolError(f"expected welcome, got {welcome['t']}", "protocol")
            self.nation = welcome["nation"]
            self._ws = ws
            self.connects += 1
            # Resume: re-subscribe, then re-send every request still waiting for an answer.
            for rid, (fut, t, fields) in sorted(self._pending.items()):
                if not fut.done():
                    await ws.send_bytes(frames.encode_frame(t, rid=rid, **fields))
            for name, patterns in self._subs.items():
                if not any(t == "sub" and f.get("name") == name for _, t, f in self._pending.values()):
                    self._rid += 1
                    await ws.send_bytes(frames.encode_frame("sub", rid=self._rid, name=name, patterns=list(patterns)))
            self.connected.set()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                self._dispatch(frames.decode_frame(msg.data, frames.HUB_TO_NODE))
            if ws.close_code is not None and ws.close_code == 4001:
                raise ProtocolError("authentication failed", "unauthenticated")

    @staticmethod
    async def _recv(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> bytes:
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"hub closed the connection ({ws.close_code}: {msg.extra or msg.type.name})")
        return bytes(msg.data)

    def _dispatch(self, f: dict[str, Any]) -> None:
        t = f["t"]
        if t == "deliver":
            self.deliveries.put_nowait(Delivery(f["sub"], f["index"], f["packet"], f.get("cert"), f.get("proof")))
            return
        if t == "notice":
            self.notices.put_nowait((f["kind"], f["data"]))
            return
        rid = f.get("rid")
        entry = self._pending.get(rid) if rid is not None else None
        if t == "error":
            err = ProtocolError(f["reason"], f["code"])
            if entry and not entry[0].done():
                entry[0].set_exception(err)
            else:
                log.warning("hub error: %s (%s)", f["reason"], f["code"])
            return
        if entry and not entry[0].done():
            entry[0].set_result(f)


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
