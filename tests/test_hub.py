"""The hub over real sockets: authentication, routing, duplicates, resume, redelivery, isolation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from clients.connection import http_publish
from hub.protocol import codec, envelope, frames
from hub.protocol.errors import ProtocolError
from hub.protocol.federation import Federation

from .hubutil import collect, hub_config, node_client, running_hub, seal_for

ALL = ("CA", "DE", "FR", "GB", "IT", "JP", "US")




@pytest.fixture()
def config(fed_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 1.0},
                      topics='[topics]\npublish = ["alerts.>", "notices.>", "receipts.>"]\n'
                             '[topics.JP]\npublish = ["alerts.entity.>"]\n')


async def test_seven_nations_exchange_by_recipient_and_topic(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        clients = {n: node_client(fed, n, url) for n in ALL}
        for c in clients.values():
            await c.start()
        try:
            for n, c in clients.items():
                await c.wait_connected()
                assert c.nation == n
                # GB only wants freeze notices; everyone else everything addressed to them.
                await c.subscribe("main", ["notices.>"] if n == "GB" else [">"])
            alert = seal_for(fed, "IT", ["FR", "DE", "GB", "US"], topic="alerts.entity.migrant_smuggling")
            freeze = seal_for(fed, "FR", ["GB", "US", "DE"], topic="notices.freeze")
            r1 = await clients["IT"].publish(alert)
            r2 = await clients["FR"].publish(freeze)
            assert (r1.index, r2.index) == (0, 1) and not r1.duplicate
            got = {n: [d.index for d in await collect(clients[n], k)] for n, k in
                   (("FR", 1), ("DE", 2), ("GB", 1), ("US", 2))}
            assert got == {"FR": [0], "DE": [0, 1], "GB": [1], "US": [0, 1]}
            await asyncio.sleep(0.3)
            for n in ("CA", "JP", "IT"):
                assert clients[n].deliveries.empty(), f"{n} received a packet not addressed to it"
            assert clients["GB"].deliveries.empty(), "GB's pattern excludes alerts"
            d = (await collect(clients["FR"], 0)) or None
            assert d is None
        finally:
            for c in clients.values():
                await c.close()


async def test_delivery_carries_signer_certificate_and_verifies(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            raw = seal_for(fed, "IT", ["FR"])
            await it.publish(raw)
            [d] = await collect(fr, 1)
            assert d.packet == raw and d.cert == fed.members["IT"].officer_cert.raw
            trust = fed.trust()
            o = envelope.open_packet(d.packet, nation="FR", kem=fed.members["FR"].node_kem, trust=trust, now=int(time.time()))
            assert o.signer.nation == "IT"


async def test_cannot_publish_as_another_nation_or_to_forbidden_topic(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "JP", url) as jp:
            await fr.wait_connected()
            await jp.wait_connected()
            with pytest.raises(ProtocolError) as exc:
                await fr.publish(seal_for(fed, "IT", ["DE"]))
            assert exc.value.code == "wrong_nation"
            with pytest.raises(ProtocolError) as exc:
                await jp.publish(seal_for(fed, "JP", ["DE"], topic="notices.freeze"))
            assert exc.value.code == "forbidden_topic" and "alerts.entity.>" in str(exc.value)
            with pytest.raises(ProtocolError) as exc:
                await fr.publish(seal_for(fed, "FR", ["DE"], topic="chat.random"))
            assert exc.value.code == "forbidden_topic"
            # The session still serves after rejections.
            r = await fr.publish(seal_for(fed, "FR", ["DE"]))
            assert r.index == 0


async def test_subscriptions_see_only_own_nation(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    """A nation's subscription named like another's still only gets packets addressed to itself."""
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "CA", url) as ca:
            await it.wait_connected()
            await ca.wait_connected()
            await ca.subscribe("main", [">"])
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await it.publish(seal_for(fed, "IT", ["CA"]))
            [d] = await collect(ca, 1)
            assert envelope.parse_packet(d.packet).header.nations == ("CA",)


async def test_unauthenticated_frames_are_refused(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url + "/v1/ws") as ws:
                hello = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                assert hello["t"] == "hello" and len(hello["challenge"]) == 32
                await ws.send_bytes(frames.encode_frame("pub", rid=1, packet=seal_for(fed, "IT", ["FR"])))
                err = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                assert err["t"] == "error" and err["code"] == "unauthenticated"
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4001
            # A signature over a different challenge (a replayed auth) fails too.
            async with s.ws_connect(url + "/v1/ws") as ws:
                await ws.receive()
                m = fed.members["FR"]
                sig = m.node_signing.sign(frames.auth_message(b"\0" * 32, fed.hub_name, fed.roster.fp, m.node_cert.fp, 16))
                await ws.send_bytes(frames.encode_frame("auth", cert=m.node_cert.raw, sig=sig, window=16))
                err = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                assert err["code"] == "unauthenticated" and "signature" in err["reason"]
            # An officer certificate cannot open a session.
            async with s.ws_connect(url + "/v1/ws") as ws:
                hello = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                m = fed.members["FR"]
                sig = m.officer.sign(frames.auth_message(hello["challenge"], fed.hub_name, fed.roster.fp, m.officer_cert.fp, 16))
                await ws.send_bytes(frames.encode_frame("auth", cert=m.officer_cert.raw, sig=sig, window=16))
                err = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                assert err["code"] == "unauthenticated" and "node certificate" in err["reason"]
            # Garbage before authentication.
            async with s.ws_connect(url + "/v1/ws") as ws:
                await ws.receive()
                await ws.send_bytes(b"\xc1garbage")
                err = frames.decode_frame((await ws.receive()).data, frames.HUB_TO_NODE)
                assert err["t"] == "error"
        # Nothing was stored by any of it.
        assert app[__import__("hub.server.app", fromlist=["RELAY"]).RELAY].storage.size() == 0


async def test_duplicates_are_idempotent_and_conflicts_rejected(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            raw = seal_for(fed, "IT", ["FR"])
            a = await it.publish(raw)
            b = await it.publish(raw)
            assert (a.index, a.duplicate) == (0, False) and (b.index, b.duplicate) == (0, True)
            # Another packet under the same id: a different seal with a forced id.
            pid = envelope.parse_packet(raw).header.id
            m = fed.members["IT"]
            other = envelope.seal({**__import__("tests.conftest", fromlist=["x"]).sample_alert(), "severity": "low"},
                                  signer=m.officer, signer_cert=m.officer_cert, recipients=[fed.members["FR"].node_cert],
                                  topic="alerts.entity.migrant_smuggling", now=int(time.time()), packet_id=pid)
            with pytest.raises(ProtocolError) as exc:
                await it.publish(other)
            assert exc.value.code == "conflict"
            [d] = await collect(fr, 1)
            await asyncio.sleep(0.3)
            assert fr.deliveries.empty(), "a duplicate publish was delivered twice"
            # Over HTTP, the same packet again: the original acceptance.
            r = await http_publish(url, raw)
            assert r["index"] == 0 and r["duplicate"] is True


async def test_http_publish_authenticated_by_packet_signature(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        raw = seal_for(fed, "IT", ["FR"])
        r = await http_publish(url, raw, fed.members["IT"].officer_cert.raw)
        assert r["index"] == 0 and r["id"] == envelope.parse_packet(raw).header.packet_id
        p = codec.decode(raw)
        p["ct"] = p["ct"][:-1] + bytes([p["ct"][-1] ^ 1])
        with pytest.raises(ProtocolError) as exc:
            await http_publish(url, codec.encode(p))
        assert exc.value.code == "invalid_packet"
        with pytest.raises(ProtocolError) as exc:
            await http_publish(url, seal_for(fed, "IT", ["FR"], now=int(time.time()) - 3600))
        assert exc.value.code == "clock_skew"
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/publish", data=b"\x93\x01\x02") as resp:
                assert resp.status == 400 and (await resp.json())["code"] == "malformed"


async def test_resume_after_disconnect_from_cursor(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            fr = node_client(fed, "FR", url)
            await fr.start()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            got = await collect(fr, 3)
            await fr.close()
            for _ in range(2):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            fr2 = node_client(fed, "FR", url)
            await fr2.start()
            try:
                await fr2.wait_connected()
                assert await fr2.subscribe("main", [">"]) == 3  # resumes after the 3 acknowledged
                later = await collect(fr2, 2)
                assert [d.index for d in got + later] == [0, 1, 2, 3, 4]
                await asyncio.sleep(0.3)
                assert fr2.deliveries.empty()
            finally:
                await fr2.close()


async def test_unacknowledged_packets_are_redelivered(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            await it.publish(seal_for(fed, "IT", ["FR"]))
            [first] = await collect(fr, 1, ack=False)
            # ack_timeout is 1 s in this config: the hub sends it again.
            [again] = await collect(fr, 1, timeout=5)
            assert again.index == first.index and again.packet == first.packet
            await asyncio.sleep(1.5)
            assert fr.deliveries.empty(), "an acknowledged packet was redelivered"


async def test_slow_consumer_does_not_delay_others(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    # A long ack timeout: the stalled subscriber must hold exactly its window, with no redelivery.
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 60})) as (url, app):
        it = node_client(fed, "IT", url)
        slow = node_client(fed, "DE", url, window=2)
        fast = node_client(fed, "FR", url)
        for c in (it, slow, fast):
            await c.start()
            await c.wait_connected()
        try:
            await slow.subscribe("main", [">"])
            await fast.subscribe("main", [">"])
            n = 40
            for _ in range(n):
                await it.publish(seal_for(fed, "IT", ["DE", "FR"]))
            t0 = time.monotonic()
            await collect(fast, n, timeout=15)
            fast_time = time.monotonic() - t0
            # DE never acknowledged: it holds only its window, and FR got everything anyway.
            await asyncio.sleep(0.2)
            assert slow.deliveries.qsize() == 2
            assert fast_time < 10
            seen: set[int] = set()
            deadline = time.monotonic() + 30
            while len(seen) < n and time.monotonic() < deadline:
                seen.update(d.index for d in await collect(slow, 1, timeout=30))
            assert sorted(seen) == list(range(n))
        finally:
            for c in (it, slow, fast):
                await c.close()


async def test_health_and_metrics(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            await it.publish(seal_for(fed, "IT", ["FR"]))
            with pytest.raises(ProtocolError):
                await it.publish(b"\x00")
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/healthz") as r:
                    assert (await r.json())["log_size"] == 1
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
            assert "intelhub_packets_accepted_total 1.0" in text
            assert 'intelhub_packets_rejected_total{reason="malformed"} 1.0' in text
            assert 'intelhub_connections{nation="IT"} 1.0' in text
            assert "intelhub_commit_seconds_count" in text
            # CPU by thread (in 10 ms ticks): every thread of the process, none more than the process.
            cpu = {line.split('thread="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                   for line in text.splitlines() if line.startswith("intelhub_thread_cpu_seconds_total{")}
            assert {"MainThread", "hub-sqlite-writer"} <= cpu.keys(), cpu
            assert cpu["MainThread"] > 0 and min(cpu.values()) >= 0
            assert sum(cpu.values()) <= time.process_time() + 0.05


async def test_hub_never_holds_content(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = "ZZMARKER-7f3a9c-UNIQUE"
    alert = __import__("tests.conftest", fromlist=["x"]).sample_alert()
    alert["summary"] = f"Contains {marker} in the summary"
    alert["entities"][0]["names"] = [f"{marker} Person"]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            for _ in range(5):
                await it.publish(seal_for(fed, "IT", ["FR"], content=alert))
            got = await collect(fr, 5)
            o = envelope.open_packet(got[0].packet, nation="FR", kem=fed.members["FR"].node_kem, trust=fed.trust(), now=int(time.time()))
            assert marker in o.content["summary"]  # the marker really was sent
    hits = []
    for f in tmp_path.rglob("*"):
        if f.is_file() and marker.encode() in f.read_bytes():
            hits.append(f.name)
    assert hits == [], f"content marker found in hub files: {hits}"


async def test_bad_config_names_the_field(fed_dir: Path, tmp_path: Path) -> None:
    from hub.protocol.errors import ConfigError
    from hub.server.config import parse_config

    base = f'[hub]\nlisten = "127.0.0.1:0"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n'
    cases = {
        f'[hub]\nlisten = "127.0.0.1"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n': "hub.listen",
        '[hub]\nlisten = "127.0.0.1:0"\n': "hub.key: missing",
        f'[hub]\nlisten = "127.0.0.1:0"\nkey = "nope.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n': "hub.key",
        f'[hub]\nlisten = "0.0.0.0:80"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n': "loopback",
        f'[hub]\nlisten = "127.0.0.1:0"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n'
        '[limits]\nwindw = 3\n': "limits.windw: unknown field (did you mean 'window'?)",
        f'[hub]\nlisten = "127.0.0.1:0"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n'
        '[limits]\nwindow = "big"\n': "limits.window: must be a int",
        f'[hub]\nlisten = "127.0.0.1:0"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\ndatabase = "x.db"\n'
        '[topics.FR]\npublish = ["a.>.b"]\n': "topics.FR.publish",
        "[hub\n": "not valid TOML",
        base.replace(f"{fed_dir}/hub/hub.key", "k" * 300): "(File name too long); give a shorter, valid path",
        base + "[limit]\nwindow = 3\n": "hub.toml: unknown table [limit] (did you mean [limits]?)",
        base + "[extra]\na = 1\n": "hub.toml: unknown table [extra]; the tables are [hub], [limits], [retention], [topics]",
        base + "[limits]\nwindow = " + "9" * 5000 + "\n": "hub.toml: a number in it has thousands of digits",
        # Values the protocol or SQLite could not honour: refused at start, naming the field.
        base + "[retention]\ndays = 1e308\n": "retention.days: at most 3660",
        base + "[retention]\ndays = 1e300\n": "retention.days: at most 3660",
        base.replace("[hub]\n", "[hub]\nverify_threads = -4\n"): "hub.verify_threads",
        base + "[limits]\nmax_packet_bytes = 16777216\n": "limits.max_packet_bytes: at most 1048576",
        base + "[limits]\nmax_recipients = 1000\n": "limits.max_recipients: at most 64",
        base + "[limits]\nauth_timeout = 1e-300\n": "limits.auth_timeout: at least 0.05 s",
        base.replace(f"{fed_dir}/hub/hub.key", str(fed_dir)): "is not a regular file",  # a directory
        base.replace("[hub]\n", "[hub]\ncheckpoint_interval = 1e-300\n"): "hub.checkpoint_interval: at least",
        base.replace("[hub]\n", "[hub]\ncontrol_socket = 3\n"): "hub.control_socket: must be a str",
        base.replace("[hub]\n", f'[hub]\ncontrol_socket = "{"c" * 120}"\n'): "hub.control_socket: ",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError) as exc:
            parse_config(text, tmp_path)
        assert expected in str(exc.value), (text, str(exc.value))


async def test_a_backlog_goes_out_several_frames_per_write_intact_and_in_order(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    """A subscriber that connects to a backlog gets it through the batched write path: every
    packet, as its own WebSocket frame, in log order."""
    from hub.server.app import RELAY

    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await asyncio.gather(it.wait_connected(), fr.wait_connected())
            await fr.subscribe("main", [">"])
            [session] = app[RELAY].sessions_by_nation["FR"]
            assert session._direct is not None, "aiohttp changed: deliveries fell back to one write per frame"
            fr_ws = fr._ws
            assert fr_ws is not None
            await fr.close()
            sent = [seal_for(fed, "IT", ["FR"]) for _ in range(40)]
            results = await asyncio.gather(*(it.publish(p) for p in sent))
        async with node_client(fed, "FR", url) as fr2:
            await fr2.wait_connected()
            await fr2.subscribe("main", [">"])
            got = await collect(fr2, 40, timeout=20)
    assert [d.index for d in got] == sorted(r.index for r in results)
    assert sorted(d.packet for d in got) == sorted(sent)


async def test_packets_are_checked_on_the_event_loop_when_idle_and_on_threads_in_a_burst(  # type: ignore[no-untyped-def]
        fed: Federation, config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Either way each packet gets its own answer: a burst of good and tampered packets."""
    from hub.server.app import RELAY
    from hub.server.relay import Relay

    chunks: list[int] = []
    real = Relay._verify_chunk

    async def counted(self: Relay, items: list[tuple[bytes, int]]) -> list[tuple[bool, object]]:
        chunks.append(len(items))
        return await real(self, items)

    monkeypatch.setattr(Relay, "_verify_chunk", counted)

    def tampered() -> bytes:
        p = codec.decode(seal_for(fed, "IT", ["FR"]))
        p["ct"] = p["ct"][:-1] + bytes([p["ct"][-1] ^ 1])
        return codec.encode(p)

    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            first = await it.publish(seal_for(fed, "IT", ["FR"]))
            assert first.index == 0 and chunks == [], "a lone packet went to a verify thread"
            burst = [seal_for(fed, "IT", ["FR"]) if i % 3 else tampered() for i in range(30)]
            results = await asyncio.gather(*(it.publish(p) for p in burst), return_exceptions=True)
        assert app[RELAY]._verify_batched.idle
    assert chunks, "a burst never reached the verify threads"
    for i, r in enumerate(results):
        if i % 3:
            assert not isinstance(r, BaseException) and r.index > 0, (i, r)
        else:
            assert isinstance(r, ProtocolError) and r.code == "invalid_packet", (i, r)
    assert sorted(r.index for r in results if not isinstance(r, BaseException)) == list(range(1, 21))


@pytest.mark.parametrize("delay, frames_sent", [(0.5, 1), (0.0, 5)])
async def test_acks_made_within_ack_delay_share_one_frame(fed: Federation, fed_dir: Path, tmp_path: Path, delay: float,
                                                          frames_sent: int) -> None:
    # A long ack timeout: nothing is sent again while the acks wait.
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 60})) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, ack_delay=delay) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            for _ in range(5):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            got = await collect(fr, 5, ack=False)
            assert fr._ws is not None
            sent: list[bytes] = []
            real_send = fr._ws.send_bytes

            async def counting_send(data: bytes, *a: object, **kw: object) -> None:
                sent.append(data)
                await real_send(data, *a, **kw)  # type: ignore[arg-type]

            fr._ws.send_bytes = counting_send  # type: ignore[method-assign]
            for d in got:  # one ack per turn of the event loop, all within the delay
                await fr.ack(d.sub, d.index)
                await asyncio.sleep(0.01)
            await asyncio.sleep(delay + 0.3)
            acks = [codec.decode(f) for f in sent]
            assert len(acks) == frames_sent
            assert sorted(i for a in acks for i in a["indexes"]) == [d.index for d in got]
            # The hub took every one.
            text = ""
            deadline = time.monotonic() + 5
            while "intelhub_acks_total 5.0" not in text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
                    text = await r.text()
            assert "intelhub_acks_total 5.0" in text


def test_ack_delay_is_checked(fed: Federation) -> None:
    with pytest.raises(ValueError, match="ack_delay must be 0-1 seconds"):
        node_client(fed, "FR", "http://127.0.0.1:9", ack_delay=-1)
