"""Helpers for tests/test_attacks.py: a byte-level WebSocket client, packet forgers, store probes.

The raw client speaks RFC 6455 by hand over a plain TCP stream so that a test can do what no
well-behaved library would: stop in the middle of a frame, declare a 2^40-byte payload, or drip
one byte at a time. Everything talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import resource
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clients.connection import HubClient
from hub.protocol import codec, envelope, frames
from hub.protocol.certs import Certificate
from hub.protocol.federation import Federation
from hub.protocol.keys import SigningKey, signing_input
from hub.protocol.suites import CLASSIC, HYBRID, Suite
from hub.server.app import RELAY
from hub.server.relay import Relay

from .conftest import sample_alert

TOPIC = "alerts.entity.migrant_smuggling"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The hub closed the connection; ``code`` is the close code, None for a bare TCP close."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed ({code})")
        self.code = code


class RawWS:
    """A WebSocket client written by hand: every byte on the wire is the test's choice."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str, timeout: float = 5.0) -> RawWS:
        u = urlparse(url)
        assert u.hostname == "127.0.0.1", "attack tests talk to the loopback hub only"
        port = u.port or 80
        reader, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, port), timeout)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        assert head.startswith(b"HTTP/1.1 101") and accept in head, head
        return cls(reader, writer)

    @staticmethod
    def frame(payload: bytes, opcode: int = OP_BINARY, *, fin: bool = True, declared: int | None = None) -> bytes:
        """A masked client frame; ``declared`` overrides the length field (the payload is still what is sent)."""
        n = len(payload) if declared is None else declared
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        if not payload:
            return head + mask
        n = len(payload)
        keystream = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return head + mask + (int.from_bytes(payload, "big") ^ keystream).to_bytes(n, "big")

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        await self.write(self.frame(payload, opcode))

    async def recv(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next server frame (servers do not mask); :class:`Closed` on a close frame or EOF."""
        async def read() -> tuple[int, bytes]:
            try:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", await self.reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", await self.reader.readexactly(8))[0]
                assert n <= frames.MAX_FRAME + 1024, f"the hub sent a {n}-byte frame"
                return b0 & 0x0F, await self.reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Closed(None) from None

        op, data = await asyncio.wait_for(read(), timeout)
        if op == OP_CLOSE:
            raise Closed(struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None)
        return op, data

    async def recv_frame(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next hub frame, decoded. Pings are ignored (this client never answers them), and so
        are checkpoint notices, which the hub pushes to every authenticated session at any time."""
        deadline = time.monotonic() + timeout
        while True:
            op, data = await self.recv(max(0.01, deadline - time.monotonic()))
            if op == OP_BINARY:
                f = frames.decode_frame(data, frames.HUB_TO_NODE)
                if f["t"] != "notice":
                    return f
                continue
            assert op in (OP_PING, OP_PONG), f"unexpected opcode {op}"

    async def wait_closed(self, timeout: float) -> tuple[float, int | None]:
        """Read (and drop) until the hub closes; returns (seconds waited, close code)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the hub kept the connection open for {timeout} s")
            try:
                await self.recv(remaining)
            except Closed as exc:
                return time.monotonic() - t0, exc.code
            except TimeoutError:
                continue

    async def authenticate(self, fed: Federation, nation: str, window: int = 16) -> dict[str, Any]:
        hello = await self.recv_frame()
        assert hello["t"] == "hello"
        m = fed.members[nation]
        sig = m.node_signing.sign(frames.auth_message(hello["challenge"], fed.hub_name, fed.roster.fp,
                                                      m.node_cert.fp, window))
        await self.send(frames.encode_frame("auth", cert=m.node_cert.raw, sig=sig, window=window))
        welcome = await self.recv_frame()
        assert welcome["t"] == "welcome" and welcome["nation"] == nation, welcome
        return welcome

    def close(self) -> None:
        self.writer.close()


async def auth_with(ws: Any, fed: Federation, signing: SigningKey, cert_raw: bytes, cert_fp: bytes,
                    window: int = 16) -> None:
    """Answer an aiohttp client WebSocket's hello with ``auth`` for any certificate and key."""
    hello = frames.decode_frame((await ws.receive(timeout=5)).data, frames.HUB_TO_NODE)
    sig = signing.sign(frames.auth_message(hello["challenge"], fed.hub_name, fed.roster.fp, cert_fp, window))
    await ws.send_bytes(frames.encode_frame("auth", cert=cert_raw, sig=sig, window=window))


# -- the hub ---------------------------------------------------------------------------------------


def stored(app: Any) -> int:
    """Packets in the hub's durable store (the log size)."""
    return int(app[RELAY].storage.size())


class ShiftedClockRelay(Relay):
    """The real relay with a clock the test can move forward (``app[RELAY].shift = 120``)."""

    shift = 0

    def now(self) -> int:
        return int(time.time()) + self.shift


async def delivered(client: HubClient, raw: bytes, timeout: float = 10.0) -> Any:
    """Wait for the delivery of exactly ``raw`` (acknowledging everything received meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"packet not delivered within {timeout} s")
        d = await asyncio.wait_for(client.deliveries.get(), remaining)
        await client.ack(d.sub, d.index)
        if d.packet == raw:
            return d


def rss_mb() -> float:
    """Peak resident memory of this process (the in-process hub included), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- packets -----------------------------------------------------------------------------------------


def seal(fed: Federation, sender: str, to: tuple[str, ...] | list[str], *, suite: Suite = CLASSIC,
         now: int | None = None, lifetime: int = 86400, signer: SigningKey | None = None,
         cert: Certificate | None = None, content: dict[str, Any] | None = None,
         packet_id: bytes | None = None, topic: str = TOPIC) -> bytes:
    m = fed.members[sender]
    return envelope.seal(content or sample_alert(), signer=signer or m.officer, signer_cert=cert or m.officer_cert,
                         recipients=[fed.members[n].node_cert for n in to], topic=topic,
                         now=int(time.time()) if now is None else now, suite=suite, lifetime=lifetime,
                         packet_id=packet_id)


def rebuild(raw: bytes, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> bytes:
    """Decode a packet and its header, let ``edit`` change them, re-encode canonically (signature kept)."""
    p = codec.decode(raw)
    h = codec.decode(p["header"])
    edit(p, h)
    p["header"] = codec.encode(h)
    return codec.encode(p)


def resign(raw: bytes, edit: Callable[[dict[str, Any], dict[str, Any]], None], signer: SigningKey) -> bytes:
    """:func:`rebuild`, then sign the new header with ``signer`` (the halves the header's suite needs)."""
    p = codec.decode(rebuild(raw, edit))
    mldsa = codec.decode(p["header"])["suite"] == HYBRID.id
    p["sig"] = signer.sign(signing_input("packet", p["header"]), mldsa=mldsa)
    return codec.encode(p)


def forward(fed: Federation, raw: bytes, by: str, to: str) -> bytes:
    """``by``, a recipient of ``raw``, re-encrypts its plaintext (original inner sender and all) to
    ``to`` in a packet of its own, honestly signed by its officer: surreptitious forwarding."""
    o = envelope.open_packet(raw, nation=by, kem=fed.members[by].node_kem, trust=fed.trust(), now=int(time.time()))
    orig = codec.decode(codec.decode(raw)["header"])
    suite = HYBRID if orig["suite"] == HYBRID.id else CLASSIC
    own = codec.decode(seal(fed, by, (to,), suite=suite))
    h = codec.decode(own["header"])
    key = os.urandom(32)
    inner = codec.encode({"content": o.content_bytes, "salt": o.salt, "sender": orig["sender"]})
    rcpt = fed.members[to].node_cert
    own["ct"] = AESGCM(key).encrypt(bytes(12), inner, envelope._aad(h))
    own["keys"] = [suite.hpke().encrypt(key, rcpt.kem.for_suite(suite),  # type: ignore[union-attr]
                                        info=envelope._info(suite.id, h["id"], h["sender"], to, rcpt.fp))]
    h["ct"] = hashlib.sha256(own["ct"]).digest()
    h["to"][0]["wrap"] = hashlib.sha256(own["keys"][0]).digest()
    h["commit"] = envelope.commitment(o.salt, o.content_bytes)
    own["header"] = codec.encode(h)
    own["sig"] = fed.members[by].officer.sign(signing_input("packet", own["header"]), mldsa=suite.mldsa)
    return codec.encode(own)


def mp(value: Any) -> bytes:
    """One msgpack value exactly as given (not canonicalised)."""
    import msgpack

    return msgpack.packb(value, use_bin_type=True)


def raw_map(*pairs: tuple[str, bytes]) -> bytes:
    """A msgpack map from (key, encoded value) pairs in the given order: duplicates allowed."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(mp(k) + v for k, v in pairs)


# -- the node ------------------------------------------------------------------------------------------


def quarantine_reasons(store: Path) -> list[str]:
    """The reasons of every quarantined packet in a node store (read-only connection, WAL-safe)."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT reason FROM quarantine ORDER BY id")]
    finally:
        conn.close()


def packet_count(store: Path) -> int:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM packets").fetchone()[0])
    finally:
        conn.close()
