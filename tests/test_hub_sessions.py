"""Sessions over their whole life, on the real hub: the authentication deadline, a certificate
revoked while its session is open, the drain at shutdown, the limits a nation's sessions live
within (subscriptions, publish rate over both paths), and answers that always come back
(request ids on errors, a store that refuses a certificate).

The module has its own federation: it issues and revokes certificates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import pytest

from hub.protocol import codec, frames
from hub.protocol.errors import ConfigError, ProtocolError, StoreError
from hub.protocol.federation import Federation
from hub.protocol.keys import KemKey, SigningKey
from hub.server.app import RELAY, SESSIONS

from .attackutil import OP_PING, Closed, RawWS, auth_with, seal
from .conftest import sample_alert
from .hubutil import collect, hub_config, module_federation, node_client, running_hub


fed, fed_dir = module_federation(b"sessions", "intelhub-sessions")  # this module's own, at the real clock


async def test_pings_do_not_extend_the_authentication_deadline(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Anyone may connect; no one may stay unauthenticated past auth_timeout by pinging."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"auth_timeout": 1})) as (url, _):
        ws = await RawWS.connect(url)
        try:
            await ws.recv_frame()  # hello
            t0 = time.monotonic()
            code = None
            for _ in range(12):  # 12 x 0.5 s: six times auth_timeout
                try:
                    await ws.send(b"", OP_PING)
                    while True:
                        await ws.recv(0.5)  # the pongs
                except TimeoutError:
                    continue
                except Closed as exc:
                    code = exc.code
                    break
            waited = time.monotonic() - t0
            assert code == 4003, f"unauthenticated peer still connected after {waited:.1f} s (close {code})"
            assert waited < 3, waited
        finally:
            ws.close()


async def test_a_session_ends_when_its_certificate_is_revoked(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """A stolen node key, revoked by its nation's root: its open session ends at once (4001); it
    can no longer take the nation's subscription over, and the real node keeps receiving."""
    t = int(time.time())
    seed = hashlib.sha256(b"sessions/fr-stolen").digest()
    key = SigningKey.from_seed(seed)
    stolen = fed.issue("FR", subject="fr-node-stolen", role="node", signing=key, kem=KemKey.from_seed(seed),
                       not_before=t - 600, not_after=t + 86400)
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 60})) as (url, app):
        async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws, \
                node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await auth_with(ws, fed, key, stolen.raw, stolen.fp)
            assert frames.decode_frame((await ws.receive(timeout=5)).data, frames.HUB_TO_NODE)["t"] == "welcome"
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            async with http.post(url + "/v1/revocations", data=fed.revoke("FR", stolen, at=t - 60).raw) as r:
                assert r.status == 200, await r.text()
            seen, close = [], None
            for _ in range(10):  # bounded: notices may come first
                msg = await ws.receive(timeout=5)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    close = msg
                    break
                seen.append(frames.decode_frame(msg.data, frames.HUB_TO_NODE))
            # The close frame's code (the hub may drop the TCP connection before our answer to it).
            assert close is not None and (close.type, close.data) == (aiohttp.WSMsgType.CLOSE, 4001), (close, seen)
            assert any(f["t"] == "error" and f["code"] == "unauthenticated" for f in seen), seen
            assert not [s for s in app[SESSIONS] if s.cert is not None and s.cert.fp == stolen.fp]
            r1 = await it.publish(seal(fed, "IT", ["FR"]))
            [d] = await collect(fr, 1)
            assert d.index == r1.index


async def test_shutdown_is_not_held_up_by_a_peer_that_stopped_reading(fed: Federation, fed_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The drain closes every session at once; a peer whose socket is full is cut off after 2 s
    instead of holding the hub's exit (and the other sessions' close frames) for ever."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 60})) as (url, app):
        u = urlparse(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert u.hostname == "127.0.0.1" and u.port
        sock.connect((u.hostname, u.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        slow = RawWS(reader, writer)
        try:
            await slow.authenticate(fed, "FR", window=256)
            for s in app[SESSIONS]:  # a congested link: a small kernel buffer on the hub's side too
                s.ws._writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await slow.send(frames.encode_frame("sub", rid=1, name="main", patterns=[">"]))
            assert (await slow.recv_frame())["t"] == "subscribed"  # from now on FR never reads
            content = sample_alert() | {"summary": "x " * 4900}
            other = await RawWS.connect(url)
            await other.authenticate(fed, "DE")
            async with node_client(fed, "IT", url) as it:
                await it.wait_connected()
                for _ in range(100):  # ~1 MB towards FR
                    await it.publish(seal(fed, "IT", ["FR"], content=content))
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                await asyncio.wait_for(app.shutdown(), 10)
                assert time.monotonic() - t0 < 5
                # The others got their close frame (1001), not a cut connection.
                _, code = await other.wait_closed(3)
                assert code == 1001
        finally:
            writer.transport.abort()


async def test_a_nation_holds_a_bounded_number_of_subscriptions(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Each subscription is a row kept for good, a feed and a metric series: a nation has at most
    max_subscriptions_per_nation, and a refusal names the limit and answers the request."""
    cfg = hub_config(fed_dir, tmp_path / "hub.db", limits={"max_subscriptions_per_nation": 5})
    async with running_hub(cfg) as (url, app):
        ws = await RawWS.connect(url)
        try:
            await ws.authenticate(fed, "FR")
            answers = []
            for i in range(8):
                await ws.send(frames.encode_frame("sub", rid=100 + i, name=f"s{i}", patterns=[">"]))
                answers.append(await ws.recv_frame())
            assert [f["t"] for f in answers] == ["subscribed"] * 5 + ["error"] * 3, answers
            assert {f["code"] for f in answers[5:]} == {"too_many_subscriptions"}
            assert [f["rid"] for f in answers] == list(range(100, 108))
            assert "limit 5" in answers[5]["reason"]
            # An existing name can still be subscribed again (a reconnect, new patterns).
            await ws.send(frames.encode_frame("sub", rid=200, name="s0", patterns=["alerts.>"]))
            assert (await ws.recv_frame())["t"] == "subscribed"
            assert app[RELAY].storage.subscription_names("FR") == [f"s{i}" for i in range(5)]
        finally:
            ws.close()


async def test_an_error_answers_its_request_id(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """A refused sub gets its rid back, so the node's request fails at once rather than time out."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, _):
        ws = await RawWS.connect(url)
        try:
            await ws.authenticate(fed, "FR")
            await ws.send(frames.encode_frame("sub", rid=7, name="main", patterns=["Alerts.>"]))
            f = await ws.recv_frame()
            assert (f["t"], f["code"], f.get("rid")) == ("error", "bad_frame", 7), f
        finally:
            ws.close()


async def test_http_publishes_spend_the_nations_rate(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """publish_rate is per nation whichever way its packets come: IT cannot exceed it over HTTP,
    and one address posting for IT does not use DE's budget."""
    cfg = hub_config(fed_dir, tmp_path / "hub.db", limits={"publish_rate": 0.001, "publish_burst": 1})
    async with running_hub(cfg) as (url, _), aiohttp.ClientSession() as s:
        async def post(sender: str) -> tuple[int, dict[str, str]]:
            async with s.post(url + "/v1/publish", data=codec.encode({"packet": seal(fed, sender, ["FR"])})) as r:
                return r.status, await r.json(content_type=None)

        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            await it.publish(seal(fed, "IT", ["FR"]))  # IT's one token, over its session
            status, body = await post("IT")
            assert (status, body["code"]) == (429, "rate_limited"), body
            assert "from IT" in body["reason"]
        status, body = await post("DE")  # the same address, another nation: its own budget
        assert status == 200, body
        status, body = await post("DE")
        assert (status, body["code"]) == (429, "rate_limited"), body


async def test_a_store_failure_while_learning_a_certificate_is_answered(fed: Federation, fed_dir: Path,
                                                                       tmp_path: Path) -> None:
    """A publish carrying a new certificate while the disk refuses writes is answered
    ``unavailable`` (over HTTP with 503 and a JSON body), not left unanswered."""
    t = int(time.time())
    key = SigningKey.from_seed(hashlib.sha256(b"sessions/it-officer-2").digest())
    cert = fed.issue("IT", subject="it-officer-2", role="officer", signing=key, kem=None,
                     not_before=t - 600, not_after=t + 86400)
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            storage = app[RELAY].storage
            real = storage.put_blob

            async def disk_full(*a: object, **kw: object) -> None:
                raise StoreError("database or disk is full")

            storage.put_blob = disk_full  # the disk, not our code: the write fails as a full disk would
            async with aiohttp.ClientSession() as s:
                body = codec.encode({"packet": seal(fed, "IT", ["FR"], signer=key, cert=cert), "cert": cert.raw})
                async with s.post(url + "/v1/publish", data=body) as r:
                    answer = await r.json(content_type=None)
                    assert (r.status, answer["code"]) == (503, "unavailable"), (r.status, answer)
            with pytest.raises(ProtocolError) as exc:
                await it.publish(seal(fed, "IT", ["FR"], signer=key, cert=cert), cert=cert.raw, timeout=5)
            assert exc.value.code == "unavailable"
            storage.put_blob = real
            r1 = await it.publish(seal(fed, "IT", ["FR"], signer=key, cert=cert), cert=cert.raw, timeout=5)
            assert r1.index == 0  # nothing was stored before


async def test_an_expired_packet_is_not_sent_again(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Relays deliver nothing past its expiry, redeliveries included."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 0.5})) as (url, _):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            t = int(time.time())
            await it.publish(seal(fed, "IT", ["FR"], now=t, lifetime=2))
            first, late = 0, []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # never acknowledged
                try:
                    d = await asyncio.wait_for(fr.deliveries.get(), 0.3)
                except TimeoutError:
                    continue
                first += 1
                if time.time() >= t + 3:  # a whole second past expires
                    late.append(d.index)
            assert first >= 2, "the unacknowledged packet was not even sent again before it expired"
            assert not late, f"sent {len(late)} times after it expired"


async def test_an_ack_frame_of_1024_indexes_is_taken(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """§8.3 allows 1-1024 indexes per ack; with a window above 256 the reference client sends more
    than 256 at once, and the hub must record them all."""
    data = frames.encode_frame("ack", sub="main", indexes=list(range(1, frames.MAX_ACKS + 1)))
    assert len(frames.decode_frame(data, frames.NODE_TO_HUB)["indexes"]) == frames.MAX_ACKS
    cfg = hub_config(fed_dir, tmp_path / "hub.db", limits={"window": 512, "ack_timeout": 60})
    async with running_hub(cfg) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, window=512, ack_delay=0.5) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            await asyncio.gather(*(it.publish(seal(fed, "IT", ["FR"])) for _ in range(300)))
            got = [await asyncio.wait_for(fr.deliveries.get(), 10) for _ in range(300)]
            for d in got:
                await fr.ack(d.sub, d.index)  # within ack_delay: one frame of 300
            deadline = time.monotonic() + 5
            while app[RELAY].metrics.acked._value.get() < 300 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert app[RELAY].metrics.acked._value.get() == 300


async def test_healthz_counts_authenticated_sessions(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, _):
        raw = [await RawWS.connect(url) for _ in range(3)]  # never authenticate
        try:
            for w in raw:
                await w.recv_frame()
            async with node_client(fed, "FR", url) as fr, aiohttp.ClientSession() as http:
                await fr.wait_connected()
                async with http.get(url + "/healthz") as r:
                    assert (await r.json())["sessions"] == 1
        finally:
            for w in raw:
                w.close()


async def test_topic_rules_must_name_roster_nations(fed_dir: Path, tmp_path: Path) -> None:
    """A typo in a [topics.CC] table would silently give that nation the defaults: refused at start."""
    cfg = hub_config(fed_dir, tmp_path / "hub.db", topics='[topics.ZZ]\npublish = ["alerts.>"]\n')
    with pytest.raises(ConfigError, match=r"topics\.ZZ\.publish: ZZ is not a nation of the roster"):
        async with running_hub(cfg):
            pass


async def test_a_subscription_no_longer_used_can_be_removed(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """``unsub`` forgets a subscription: it stops being fed, stops holding packets back from the
    purge, frees its place under the limit, and a new one of the same name starts afresh."""
    cfg = hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 60, "max_subscriptions_per_nation": 2})
    async with running_hub(cfg) as (url, app):
        storage = app[RELAY].storage
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            await fr.subscribe("old", [">"])
            r1 = await it.publish(seal(fed, "IT", ["FR"]))
            got = await collect(fr, 2)  # one delivery per subscription; both acknowledged
            assert sorted(d.sub for d in got) == ["main", "old"]
            r2 = await it.publish(seal(fed, "IT", ["FR"]))
            [d] = [d for d in await collect(fr, 2, ack=False) if d.sub == "main"]
            await fr.ack(d.sub, d.index)  # "old" never acknowledges r2
            await asyncio.sleep(0.3)
            later = int(time.time()) + 10
            assert await storage.purge(later, 0) == 1, "only r1 is acknowledged by every subscription"
            await fr.unsubscribe("old")
            assert storage.subscription_names("FR") == ["main"]
            assert await storage.purge(later, 0) == 1, "r2 is no longer held back by the removed subscription"
            assert storage.read_range(r2.index, r2.index + 1)[0].raw is None
            with pytest.raises(ProtocolError) as exc:
                await fr.unsubscribe("old", timeout=5)
            assert exc.value.code == "unknown_subscription"
            t0 = time.monotonic()
            with pytest.raises(ProtocolError) as exc:
                await fr.unsubscribe("x" * (frames.MAX_NAME + 1), timeout=5)
            assert exc.value.code == "bad_frame" and time.monotonic() - t0 < 1  # refused at once
            await fr.subscribe("new", [">"])  # the freed place
            r3 = await it.publish(seal(fed, "IT", ["FR"]))
            got = await collect(fr, 2)
            assert sorted((d.sub, d.index) for d in got) == [("main", r3.index), ("new", r3.index)]
            assert r1.index < r2.index < r3.index


async def test_a_nation_cosigns_with_its_renewed_node_certificate(fed: Federation, fed_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A node certificate renewed (same subject, higher serial; new keys or the same) keeps its
    name: the hub takes the nation's cosignature made with it, as the one it supersedes did."""
    from hub.protocol.checkpoint import cosign_checkpoint
    from hub.protocol.note import Cosigner, add_signatures

    from .logutil import checkpoint_at_least

    fr = fed.members["FR"]
    t = int(time.time())
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, _):
        async with node_client(fed, "FR", url) as node:
            await node.wait_connected()
            await node.publish(seal(fed, "FR", ["DE"]))
            for i, key in enumerate((fr.node_signing, SigningKey.from_seed(b"sessions/fr-node-renewed" * 2))):
                renewed = fed.issue("FR", subject=fr.node_cert.subject, role="node", signing=key, kem=fr.node_kem,
                                    not_before=t - 10 + i, not_after=t + 86400)
                await node.post("cert", renewed.raw)
                cp, note = await checkpoint_at_least(url, fed, 1)
                stamp = int(time.time())
                cosigned = add_signatures(note, cosign_checkpoint(cp, Cosigner(renewed.name, key.ed25519, key.mldsa65),
                                                                  stamp))
                await node.post("cosignature", cosigned.encode())  # refused before: bad_cosignature
                async with aiohttp.ClientSession() as s, s.get(url + "/v1/log/cosignatures") as r:
                    assert r.status == 200
                    [entry] = (await r.json())["cosignatures"]
                assert (entry["nation"], entry["time"]) == ("FR", stamp), entry


async def test_delivery_lag_is_measured_in_whole_seconds(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Acceptance times are whole seconds: a lag against a fractional clock read half a second
    too long on average; a packet acknowledged at once is 0 or 1 s late, never 0.47 s."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, ack_delay=0) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            for _ in range(5):
                await it.publish(seal(fed, "IT", ["FR"]))
                await collect(fr, 1)
                await asyncio.sleep(0.13)  # acceptances at various fractions of a second
            lag = app[RELAY].metrics.delivery_lag
            deadline = time.monotonic() + 5
            while lag._sum.get() == 0 and sum(b.get() for b in lag._buckets) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            total, count = lag._sum.get(), sum(b.get() for b in lag._buckets)
            assert count >= 1 and total == int(total) and total <= count, (total, count)


async def test_a_feed_that_fails_closes_its_session_and_the_node_resumes(fed: Federation, fed_dir: Path,
                                                                         tmp_path: Path) -> None:
    """A feed that meets an error it does not expect (here the disk, while it resends) does not stop
    in silence: its session closes (1011), the node reconnects and resumes from its cursor."""
    import sqlite3

    cfg = hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 0.3})
    async with running_hub(cfg) as (url, app):
        storage = app[RELAY].storage
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            r = await it.publish(seal(fed, "IT", ["FR"]))
            [first] = await collect(fr, 1, ack=False)  # not acknowledged: the feed will resend it
            real = storage.read_range

            def disk_error(start: int, stop: int) -> list[object]:
                raise sqlite3.OperationalError("disk I/O error")

            storage.read_range = disk_error  # the disk fails under the resend, as a real one can
            deadline = time.monotonic() + 5
            while fr.connects < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            storage.read_range = real
            assert fr.connects == 2, "the session whose feed failed was not closed"
            [again] = await collect(fr, 1)  # from the cursor, after the reconnect
            assert first.index == again.index == r.index
