"""WebSocket sessions (docs/protocol.md §8): authentication, then publish / subscribe / deliver / ack.

One reader loop per connection, one feed task per subscription. A feed keeps at
most ``window`` unacknowledged deliveries in flight, so a slow reader only ever
stalls its own feed; it reads from the durable store, so it resumes from the
cursor after any stall, disconnect or hub restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import uuid
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from hub.protocol import frames
from hub.protocol.errors import DecodeError, IntelhubError, InvalidPacket, ProtocolError, StoreError
from hub.protocol.topics import any_match_cached, check_pattern

from .relay import Relay, reject
from .storage import StoredPacket

log = logging.getLogger("intelhub.hub.session")

#: Close codes (RFC 6455 §7.4 and the private range 4000-4999; docs/protocol.md §8.6). 4002 and 4004
#: are not used: a bad frame after authentication gets an error and the session goes on, and a
#: subscription taken over by another session of the nation stops its feed in the old one, not the session.
CLOSE_AUTH_FAILED = 4001
CLOSE_TIMEOUT = 4003
CLOSE_TOO_MANY = 4005
#: Seconds between checks that a session's certificate is still usable (expiry, revocation).
CERT_RECHECK = 60.0
MAX_WINDOW = 4096


def _binary_frame_header(n: int) -> bytes:
    """RFC 6455 §5.2: FIN, binary opcode, unmasked (server to client), length ``n``."""
    if n < 126:
        return bytes((0x82, n))
    if n < 65536:
        return struct.pack("!BBH", 0x82, 126, n)
    return struct.pack("!BBQ", 0x82, 127, n)


def _direct_writer(ws: web.WebSocketResponse) -> tuple[Any, Any] | None:
    """aiohttp's frame writer and transport, when frames may be written to the transport directly:
    a server's (unmasked) and uncompressed. None otherwise, or if aiohttp changed its internals
    (tests/test_hub.py checks the fast path is taken with the aiohttp installed)."""
    writer: Any = getattr(ws, "_writer", None)
    if writer is None or getattr(writer, "compress", None) != 0 or getattr(writer, "use_mask", True):
        return None
    transport, protocol = getattr(writer, "transport", None), getattr(writer, "protocol", None)
    if transport is None or not hasattr(protocol, "_paused") or not hasattr(protocol, "_drain_helper"):
        return None
    return writer, transport


class Feed:
    """Delivers one durable subscription to one session."""

    def __init__(self, session: Session, name: str, patterns: tuple[str, ...], cursor: int, acked: frozenset[int]) -> None:
        self.session = session
        self.relay = session.relay
        self.nation = session.nation
        self.name = name
        self.patterns = patterns
        self.cursor = cursor
        self.scan_pos = cursor
        self.acked_above = set(acked)
        self.inflight: dict[int, tuple[float, float]] = {}  # index -> (sent monotonic, accepted_at)
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.unflushed: list[int] = []
        self.flush_scheduled = False
        self.oldest_acked = float("inf")
        #: The window was full when the feed last looked: an ack must wake it to send more.
        self.window_full = False
        self._timer: asyncio.TimerHandle | None = None
        self.gauge = self.relay.metrics.queue_depth.labels(self.nation, name)
        #: Stopped (see :meth:`stop`): its cursor is no longer written.
        self.dropped = False

    def wanted(self, p: StoredPacket, now: int) -> bool:
        return (
            p.index not in self.acked_above
            and p.raw is not None
            and p.expires > now
            and any_match_cached(self.patterns, p.topic)
            and self.relay.may_subscribe(self.nation, p.topic)
        )

    def _advance(self) -> int:
        return min(self.inflight) - 1 if self.inflight else self.scan_pos

    async def run(self) -> None:
        try:
            await self._run()
        except (ConnectionError, RuntimeError):
            pass  # the connection closed under a send: the session ends, the cursor is on disk
        except Exception:  # a bug or a store error: not a feed that silently stops, but a reconnect
            log.exception("session %s: feed %s of %s failed; closing the session", self.session.id, self.name,
                          self.nation)
            self.relay.spawn(self.session.close(WSCloseCode.INTERNAL_ERROR, b"internal error"))

    async def _run(self) -> None:
        self.relay.listen(self.nation, self.event)
        window = self.session.window
        ack_timeout = self.relay.config.limits.ack_timeout
        gauge = self.gauge
        check_every = max(0.05, ack_timeout / 4)
        loop = asyncio.get_running_loop()
        next_check = time.monotonic() + check_every
        try:
            while True:
                self.event.clear()
                now = self.relay.now()
                while len(self.inflight) < window:
                    found = self.relay.storage.scan(self.nation, self.scan_pos, window - len(self.inflight))
                    if found.upto <= self.scan_pos:
                        break
                    batch = []
                    sent = time.monotonic()
                    for p in found.packets:
                        if self.wanted(p, now):
                            self.inflight[p.index] = (sent, p.accepted_at)
                            batch.append(p)
                        else:
                            self.acked_above.discard(p.index)
                    self.scan_pos = found.upto
                    if batch:
                        await self.session.deliver(self.name, batch)
                    if found.end:
                        break
                    if not batch:
                        await asyncio.sleep(0)  # a stretch of other nations' packets read from disk
                self.window_full = len(self.inflight) >= window
                # Resend what waited too long for its ack (the node may have lost it). ``inflight`` is in
                # send order, so the scan stops at the first entry still within its time: O(expired).
                now_m = time.monotonic()
                if now_m >= next_check:
                    next_check = now_m + check_every
                    cutoff = now_m - ack_timeout
                    expired = []
                    for index, (sent, _) in self.inflight.items():
                        if sent >= cutoff:
                            break
                        expired.append(index)
                    for index in expired:
                        entry = self.inflight.pop(index, None)
                        if entry is None:  # acknowledged while an earlier redelivery waited to be sent
                            continue
                        accepted_at = entry[1]
                        rows = self.relay.storage.read_range(index, index + 1)
                        # Not owed any more if purged or expired meanwhile (relays deliver nothing past
                        # its expiry): the cursor may pass it.
                        if rows and rows[0].raw is not None and rows[0].expires > self.relay.now():
                            self.inflight[index] = (time.monotonic(), accepted_at)
                            self.relay.metrics.redelivered.inc()
                            await self.session.deliver(self.name, rows[:1])
                    # Packets the feed passed without delivering (patterns or topic rules) and nothing
                    # waiting: the cursor moves past them on disk too, so they are not held for it.
                    if not self.inflight and not self.unflushed and not self.flush_scheduled \
                            and self.scan_pos > self.cursor:
                        self.cursor = self.scan_pos
                        self.relay.spawn(self._persist_cursor(self.scan_pos))
                gauge.set(len(self.inflight))
                # One timer per check period, kept across wake-ups, rather than a timeout around each
                # wait: at 500 packets/s a feed wakes for every commit, and setting up and cancelling
                # a timeout each time cost more than the rest of the wake-up.
                if self._timer is None:
                    self._timer = loop.call_later(check_every, self._tick)
                await self.event.wait()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.relay.unlisten(self.nation, self.event)
            gauge.set(0)

    def _tick(self) -> None:
        self._timer = None
        self.event.set()

    def stop(self) -> None:
        """Stop feeding: the subscription was taken over, re-subscribed or removed. From now on this
        feed moves no cursor: what it passed by under its patterns is not the new feed's to lose."""
        self.dropped = True
        if self.task:
            self.task.cancel()

    async def _persist_cursor(self, cursor: int) -> None:
        if not self.dropped:  # checked as the write is queued, after any stop before it
            await self.relay.storage.ack(self.nation, self.name, [], cursor)

    def ack(self, index: int) -> None:
        """Record an acknowledgement: in memory now, on disk with the next coalesced flush.

        The reader loop never waits for a commit, and a burst of acks costs one
        write; acks already received are not lost if the peer then disconnects.
        """
        entry = self.inflight.pop(index, None)
        if entry is None:
            return  # a duplicate ack, or one for a redelivery already acknowledged
        self.unflushed.append(index)
        self.oldest_acked = min(self.oldest_acked, entry[1])
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.relay.spawn(self._flush())
        if self.window_full:  # otherwise the feed waits for new packets, not for acks
            self.window_full = False
            self.event.set()

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the acks already buffered in this read join the same write
        self.flush_scheduled = False
        indexes, self.unflushed = self.unflushed, []
        # Metrics once per batch of acks: the lag histogram records the oldest packet in the batch.
        self.relay.metrics.acked.inc(len(indexes))
        # Whole seconds on both sides: acceptance times are whole seconds (a fractional "now" would
        # add half a second on average to every sample).
        self.relay.metrics.delivery_lag.observe(max(0, int(time.time()) - self.oldest_acked))
        self.oldest_acked = float("inf")
        cursor = self._advance() if not self.dropped else -1  # a stopped feed's acks count, not its cursor
        self.cursor = max(self.cursor, cursor)
        self.gauge.set(len(self.inflight))
        await self.relay.storage.ack(self.nation, self.name, indexes, cursor)


class Session:
    def __init__(self, relay: Relay, ws: web.WebSocketResponse, peer: str) -> None:
        self.relay = relay
        self.ws = ws
        # Looked up once: the connection is prepared, and its writer does not change.
        self._direct = _direct_writer(ws)
        self.peer = peer
        self.nation = ""
        #: The node certificate it authenticated with (checked again while the session lasts)
        self.cert: Any = None
        self.id = uuid.uuid4().hex[:12]
        self.window = 0
        self.feeds: dict[str, Feed] = {}
        self.sent_certs: set[bytes] = set()
        self.pending = asyncio.Semaphore(relay.config.limits.max_pending_publishes)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._send_lock = asyncio.Lock()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.last_seen = time.monotonic()

    # -- sending ----------------------------------------------------------------

    async def send(self, t: str, **fields: Any) -> None:
        # Only the hot frames wait for the turn's batch; the rest (hello, errors, ...) go at once,
        # after what is queued, so an error a close follows is never stuck behind it.
        await self._send([frames.encode_frame(t, **fields)], now=t != "accepted")

    async def send_error(self, code: str, reason: str, rid: int | None = None) -> None:
        try:
            await self.send("error", code=code, reason=reason, rid=rid)
        except (ConnectionError, RuntimeError):
            pass

    def _deliver_frame(self, sub: str, p: StoredPacket) -> list[bytes]:
        cert = None
        if p.signer not in self.sent_certs:
            c = self.relay.trust.certs.get(p.signer)
            if c is not None:
                cert = c.raw
                self.sent_certs.add(p.signer)
        proof = self.relay.hub_log.delivery_proof_bytes(p.index, p.accepted_at) if self.relay.hub_log else None
        return frames.deliver_parts(sub, p.index, p.raw, cert, proof)  # type: ignore[arg-type]

    async def deliver(self, sub: str, packets: list[StoredPacket]) -> None:
        await self._send([self._deliver_frame(sub, p) for p in packets])
        self.relay.metrics.delivered.inc(len(packets))

    async def _send(self, datas: list[bytes] | list[list[bytes]], now: bool = False) -> None:
        """Queue frames for the socket, each given whole or as pieces to join; everything queued in
        one turn of the event loop goes out in one write (the WebSocket frames byte for byte as
        separate sends would write them).

        Each write to a socket costs a system call and, worse under load, a wait to take the GIL
        back: a burst of ACCEPTED answers and deliveries to one node costs one write, not dozens.
        Without aiohttp's usual internals (or with compression) frames go one send_bytes each.
        """
        direct = self._direct
        if direct is None:
            async with self._send_lock:
                for data in datas:
                    await self.ws.send_bytes(data if isinstance(data, bytes) else b"".join(data))
            return
        writer, transport = direct
        if transport.is_closing() or self.ws.closed:  # nothing goes after the close frame
            raise ConnectionResetError("connection closing")
        out = self._out
        for data in datas:
            if isinstance(data, bytes):
                out += (_binary_frame_header(len(data)), data)
            else:
                out.append(_binary_frame_header(sum(map(len, data))))
                out += data
        if now:
            self._flush_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, transport)
        if writer.protocol._paused:  # the same back-pressure aiohttp's own sends obey
            await writer.protocol._drain_helper()

    def _flush(self, transport: Any) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not transport.is_closing():  # closed meanwhile: the node resumes from its cursor
            transport.write(b"".join(out))

    def _flush_now(self) -> None:
        if self._direct is not None:
            self._flush(self._direct[1])

    # -- the connection ------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> bytes | None:
        """The next complete binary message. Pings are answered here and every complete message
        counts as a sign of life for the watchdog (a per-frame timer would cost more than the frame)."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            self.last_seen = time.monotonic()
            if msg.type == WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type == WSMsgType.PING:
                await self.ws.pong(msg.data)
                continue
            if msg.type == WSMsgType.PONG:
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None
            if msg.type == WSMsgType.ERROR:
                log.info("session %s: connection error %s", self.id, self.ws.exception())
                return None
            raise reject("bad_frame", "frames must be binary msgpack")

    async def watchdog(self) -> None:
        """Close a peer that completes no message (not even a pong) for idle_timeout: a dead link, or a
        slow-loris dripping one frame forever. aiohttp's own heartbeat restarts on every byte, so
        it cannot catch the latter; this pings on a fixed clock instead."""
        idle = self.relay.config.limits.idle_timeout
        while not self.ws.closed:
            await asyncio.sleep(min(idle / 2, CERT_RECHECK))
            why = self.relay.trust.usable_at(self.cert, self.relay.now()) if self.cert is not None else None
            if why:  # expired, or revoked by a list learnt some other way than a post
                await self.end_invalid(why)
                return
            if time.monotonic() - self.last_seen > idle:
                log.info("session %s: %s silent for %.0f s, closing", self.id, self.nation or "?", idle)
                await self.close(CLOSE_TIMEOUT, b"idle")
                return
            try:
                await self.ws.ping()
            except (ConnectionError, RuntimeError):
                return

    async def authenticate(self) -> bool:
        relay = self.relay
        challenge = os.urandom(32)
        roster = relay.trust.roster
        await self.send("hello", v=1, hub=roster.hub_name, roster=roster.fp, challenge=challenge, time=relay.now())
        try:
            # One deadline for the whole wait: pings answered meanwhile do not extend it.
            async with asyncio.timeout(relay.config.limits.auth_timeout):
                data = await self.receive()
        except TimeoutError:
            await self.close(CLOSE_TIMEOUT, b"authentication timed out")
            return False
        except ProtocolError as exc:  # e.g. a text frame
            await self.send_error(exc.code, str(exc))
            await self.close(CLOSE_AUTH_FAILED, b"authentication failed")
            return False
        if data is None:
            return False
        try:
            f = frames.decode_frame(data, frames.NODE_TO_HUB)
            if f["t"] != "auth":
                raise reject("unauthenticated", "authenticate first: send auth in answer to hello")
            window = f["window"]
            if not 0 < window <= MAX_WINDOW:
                raise reject("bad_frame", f"window must be 1-{MAX_WINDOW}")
            cert = await relay.learn_certificate(f["cert"])
            if cert.role != "node":
                raise reject("unauthenticated", f"{cert.name} is an {cert.role} certificate; sessions need a node certificate")
            why = relay.trust.usable_at(cert, relay.now())
            if why:
                raise reject("unauthenticated", why)
            try:
                cert.signing.verify(frames.auth_message(challenge, roster.hub_name, roster.fp, cert.fp, window), f["sig"])
            except InvalidPacket:
                raise reject("unauthenticated", "authentication signature does not verify") from None
        except (ProtocolError, DecodeError) as exc:
            code = exc.code if isinstance(exc, ProtocolError) else "bad_frame"
            relay.metrics.auth_failures.inc()
            await self.send_error(code if code != "untrusted_signer" else "unauthenticated", str(exc))
            await self.close(CLOSE_AUTH_FAILED, b"authentication failed")
            return False
        live = relay.sessions_by_nation[cert.nation]
        if len(live) >= relay.config.limits.max_sessions_per_nation:
            relay.metrics.auth_failures.inc()
            await self.send_error("too_many_sessions", f"{cert.nation} already has {len(live)} sessions "
                                  f"(limit {relay.config.limits.max_sessions_per_nation}); close one first")
            await self.close(CLOSE_TOO_MANY, b"too many sessions")
            return False
        live.add(self)
        self.nation = cert.nation
        self.cert = cert
        self.window = min(window, relay.config.limits.window)
        await self.send("welcome", nation=self.nation, session=self.id, time=relay.now())
        return True

    async def run(self) -> None:
        if not await self.authenticate():
            return
        relay = self.relay
        relay.metrics.connections.labels(self.nation).inc()
        log.info("session %s: %s authenticated from %s", self.id, self.nation, self.peer)
        watchdog = asyncio.create_task(self.watchdog())
        try:
            while True:
                try:
                    data = await self.receive()
                except ProtocolError as exc:  # a text frame: refused, the session carries on
                    await self.send_error(exc.code, str(exc))
                    continue
                if data is None:
                    return
                f: dict[str, Any] | None = None
                try:
                    f = frames.decode_frame(data, frames.NODE_TO_HUB)
                    await self.handle(f)
                except DecodeError as exc:
                    await self.send_error("bad_frame", str(exc))
                except ProtocolError as exc:  # the request's rid, so that the node's request fails at once
                    await self.send_error(exc.code, str(exc), f.get("rid") if f is not None else None)
                except StoreError as exc:  # the disk refuses writes: this request fails, the session lives
                    log.error("session %s: store refused: %s", self.id, exc)
                    await self.send_error("unavailable", "the hub cannot store this right now; retry later",
                                          f.get("rid") if f is not None else None)
        finally:
            watchdog.cancel()
            relay.metrics.connections.labels(self.nation).dec()
            relay.sessions_by_nation[self.nation].discard(self)
            relay.release_feeds(self)
            for feed in self.feeds.values():
                if feed.task:
                    feed.task.cancel()
            for t in list(self.tasks):
                t.cancel()
            log.info("session %s: %s closed", self.id, self.nation)

    async def handle(self, f: dict[str, Any]) -> None:
        t = f["t"]
        if t == "pub":
            # Bounded: past max_pending_publishes the reader stops reading (back-pressure).
            await self.pending.acquire()
            task = asyncio.create_task(self._publish(f))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif t == "ack":
            feed = self.feeds.get(f["sub"])
            if feed is None:
                raise reject("unknown_subscription", f"no subscription {f['sub']!r} in this session")
            for index in f["indexes"]:
                feed.ack(index)
        elif t == "sub":
            await self._subscribe(f)
        elif t == "unsub":
            await self._unsubscribe(f)
        elif t == "post":
            await self._post(f)
        elif t == "auth":
            raise reject("bad_frame", "already authenticated")

    async def _publish(self, f: dict[str, Any]) -> None:
        try:
            a = await self.relay.publish(f["packet"], nation=self.nation, cert=f.get("cert"))
            await self.send("accepted", rid=f["rid"], id=a.packet_id, index=a.index, dup=a.duplicate, promise=a.promise)
        except ProtocolError as exc:
            await self.send_error(exc.code, str(exc), f["rid"])
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.pending.release()

    async def _subscribe(self, f: dict[str, Any]) -> None:
        name = f["name"]
        try:
            patterns = tuple(check_pattern(p, "patterns") for p in f["patterns"])
        except IntelhubError as exc:
            raise reject("bad_frame", str(exc)) from None
        allowed = self.relay.config.subscribe_patterns(self.nation)
        limit = self.relay.config.limits.max_subscriptions_per_nation
        names = self.relay.storage.subscription_names(self.nation)
        if name not in names and len(names) >= limit:
            raise reject("too_many_subscriptions", f"{self.nation} already holds {len(names)} subscriptions "
                         f"(limit {limit}); reuse one of its names ({', '.join(names[:8])}...) or unsub one")
        # The feeds of this name stop before the cursor is read: one still running could otherwise
        # write, during the read, a cursor past packets its old patterns passed by and the new match.
        self.drop_feed(name)
        self.relay.claim_feed(self, name)
        sub = await self.relay.storage.subscribe(self.nation, name, patterns, self.relay.now())
        # Claimed again: another session of the nation may have subscribed it during the wait (it
        # then had no feed of ours to stop, and two feeds would run).
        self.relay.claim_feed(self, name)
        self.drop_feed(name)
        feed = Feed(self, name, patterns, sub.cursor, sub.acked)
        self.feeds[name] = feed
        await self.send("subscribed", rid=f["rid"], name=name, cursor=sub.cursor + 1)
        feed.task = asyncio.create_task(feed.run())
        log.info("session %s: %s subscribed %s to %s (allowed %s), cursor %d",
                 self.id, self.nation, name, ",".join(patterns), ",".join(allowed), sub.cursor)

    async def _post(self, f: dict[str, Any]) -> None:
        kind = f["kind"]
        try:
            if kind == "revocations":
                await self.relay.learn_revocations(f["data"])
            elif kind == "cert":
                await self.relay.learn_certificate(f["data"])
            elif kind == "cosignature" and self.relay.hub_log is not None:
                await self.relay.hub_log.add_cosignature(self.nation, f["data"])
            else:
                raise reject("bad_frame", f"unknown post kind {kind!r}")
        except ProtocolError as exc:  # answered with the rid, so the poster's request fails at once
            await self.send_error(exc.code, str(exc), f["rid"])
            return
        await self.send("ok", rid=f["rid"])

    async def _unsubscribe(self, f: dict[str, Any]) -> None:
        name = f["name"]
        self.relay.end_feed(self.nation, name)  # whichever session of the nation feeds it
        if not await self.relay.storage.unsubscribe(self.nation, name):
            raise reject("unknown_subscription", f"{self.nation} has no subscription {name!r}")
        log.info("session %s: %s unsubscribed %s", self.id, self.nation, name)
        await self.send("ok", rid=f["rid"])

    def drop_feed(self, name: str) -> None:
        """Stop this session's feed of ``name``: another session took the subscription over, it is
        being removed, or this session subscribes it again."""
        feed = self.feeds.pop(name, None)
        if feed:
            feed.stop()

    async def end_invalid(self, why: str) -> None:
        """End a session whose certificate stopped being usable (revoked, expired)."""
        log.warning("session %s: %s certificate %s: closing", self.id, self.nation, why)
        await self.send_error("unauthenticated", f"this session's certificate is no longer usable: {why}")
        await self.close(CLOSE_AUTH_FAILED, b"certificate no longer valid")

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a peer that stopped reading)."""
        transport = self._direct[1] if self._direct is not None else None
        if transport is not None:
            transport.abort()

    async def close(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"hub shutting down") -> None:
        self._flush_now()  # what is queued goes before the close frame
        await self.ws.close(code=code, message=message)

    async def close_within(self, seconds: float, code: int, message: bytes) -> None:
        """:meth:`close`, or cut the connection if the peer does not take the close frame in time
        (one that stopped reading would hold it for ever)."""
        try:
            async with asyncio.timeout(seconds):
                await self.close(code, message)
        except Exception:
            self.abort()
