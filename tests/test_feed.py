"""A subscription's feed over a real socket: redelivery while the hub's writes wait for the node to read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from hub.protocol import frames
from hub.protocol.federation import Federation
from hub.server.app import RELAY

from .attackutil import _WS_GUID, RawWS
from .conftest import sample_alert
from .hubutil import hub_config, node_client, running_hub, seal_for

#: The node's receive buffer, asked of the kernel before connecting (it doubles it): the node offers
#: a small window, and what it does not read stays in the hub's buffers.
RCVBUF = 4096
#: The limit of the test's StreamReader (it reads up to twice this off the socket unasked).
READER_LIMIT = 8192


async def connect_small(url: str, timeout: float = 5.0) -> RawWS:
    """:meth:`RawWS.connect` over a socket with a small receive buffer and a small reader limit."""
    host, port = url.removeprefix("http://").split(":")
    assert host == "127.0.0.1", "these tests talk to the loopback hub only"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), timeout)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=sock, limit=READER_LIMIT), timeout)
    except BaseException:
        sock.close()
        raise
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port.encode(), key))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    assert head.startswith(b"HTTP/1.1 101") and base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()) in head, head
    return RawWS(reader, writer)


def big_alert(i: int) -> dict[str, Any]:
    """An alert of about 40 KB (four texts of 10,000 characters): a few dozen fill the buffers."""
    text = ("%05d " % i) * 1666
    alert = sample_alert()
    for e in alert["entities"]:
        e["notes"] = text
    return alert | {"title": f"Alert {i}", "summary": text, "requested_action": text}


def hub_writes_paused(app: Any, nation: str) -> bool:
    """Whether the hub's socket to ``nation``'s one session is paused: a send there waits for a drain."""
    [session] = app[RELAY].sessions_by_nation[nation]
    direct = session._direct
    assert direct is not None, "the hub writes frames through aiohttp: this test needs its direct path"
    return bool(direct[0].protocol._paused)


def counter(app: Any, name: str) -> float:
    return float(app[RELAY].metrics.registry.get_sample_value(name) or 0)


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_acks_arriving_while_a_redelivery_waits_to_drain_do_not_stop_the_feed(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    # The feed resends its expired deliveries one by one. With the socket paused (the node reads
    # nothing) the first resend waits for the drain; meanwhile the node acknowledges every delivery,
    # the later expired ones included. Once the node reads, the feed must go on with the packets
    # still owed (none) and deliver the next packet. It used to pop the next expired index,
    # acknowledged meanwhile: KeyError, and the feed task died without a word.
    ack_timeout = 0.25
    check_every = max(0.05, ack_timeout / 4)  # Feed._run's
    window = 32  # 32 packets of 40 KB; the hub resends them until its buffers are full
    config = hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": ack_timeout})
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected(10)
            # Stored before FR subscribes, so the feed sends them all in one write: a send only waits
            # for a drain if the socket was paused before it, so the first sends complete.
            published = [await it.publish(seal_for(fed, "IT", ["FR"], content=big_alert(i)), timeout=10)
                         for i in range(window)]
            indexes = [r.index for r in published]
            assert indexes == list(range(window))
            ws = await connect_small(url)
            try:
                await ws.authenticate(fed, "FR", window=window)
                await ws.send(frames.encode_frame("sub", rid=1, name="main", patterns=[">"]))
                # FR reads nothing. Every ack_timeout the feed resends all 32, until the hub's writes
                # pause; its next resend then waits for a drain.
                await until(lambda: hub_writes_paused(app, "FR"), 15,
                            "the hub's writes to FR never paused: the test would not test the race")
                await asyncio.sleep(ack_timeout + 3 * check_every)  # past the next check: a resend is waiting
                resent = counter(app, "intelhub_redeliveries_total")
                await asyncio.sleep(ack_timeout + 3 * check_every)
                assert hub_writes_paused(app, "FR")
                assert resent >= 1 and counter(app, "intelhub_redeliveries_total") == resent, \
                    "the feed is not waiting in a resend"
                # Every delivery acknowledged, while the resend still waits for the drain.
                await ws.send(frames.encode_frame("ack", sub="main", indexes=indexes))
                await until(lambda: counter(app, "intelhub_acks_total") == window, 5, "the hub never read the acks")
                assert hub_writes_paused(app, "FR")
                # Now FR reads: the socket drains, the resend completes, the feed goes on.
                seen: list[int] = []
                subscribed = False
                deadline = time.monotonic() + 20
                while True:
                    assert time.monotonic() < deadline and len(seen) < 1000, "the hub resends without end"
                    try:
                        f = await ws.recv_frame(timeout=0.5)
                    except TimeoutError:
                        break
                    if f["t"] == "deliver":
                        seen.append(f["index"])
                    else:
                        assert f["t"] == "subscribed" and not subscribed, f
                        subscribed = True
                assert subscribed and set(seen) == set(indexes), seen
                last = await it.publish(seal_for(fed, "IT", ["FR"]), timeout=10)
                try:
                    f = await ws.recv_frame(timeout=3)
                except TimeoutError:
                    [session] = app[RELAY].sessions_by_nation["FR"]
                    raise AssertionError(f"FR's feed delivers no more: {session.feeds['main'].task}") from None
                assert f["t"] == "deliver" and f["index"] == last.index, f
            finally:
                ws.close()


async def test_a_subscription_re_subscribed_with_wider_patterns_gets_what_the_old_ones_passed_by(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """FR's "main" takes alerts only; notices for FR come; FR re-subscribes "main" to everything
    while the hub's disk is slow. The old feed is stopped before the cursor is read: its check tick
    (every 2 s here) cannot move the cursor past the notices meanwhile, so the new feed delivers
    them. (It did: the new feed started after them and they were never delivered.)"""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 8})) as (url, app):
        storage = app[RELAY].storage
        real = storage.subscribe
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(5), it.wait_connected(5))
            await fr.subscribe("main", ["alerts.>"])
            notices = [seal_for(fed, "IT", ["FR"], topic="notices.general") for _ in range(3)]
            for raw in notices:
                await it.publish(raw)

            async def slow_disk(*a: Any, **kw: Any) -> Any:
                await asyncio.sleep(2.5)  # past the old feed's next check tick
                return await real(*a, **kw)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(storage, "subscribe", slow_disk)
                await fr.subscribe("main", [">"], timeout=10)
            got: list[Any] = []
            while len(got) < 3:
                got.append(await asyncio.wait_for(fr.deliveries.get(), 5))
            assert sorted(d.packet for d in got) == sorted(notices)


async def test_two_sessions_subscribing_one_name_at_once_leave_one_feed(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """A node reconnects while its old session's subscribe is still at a slow disk: the last
    subscribe to finish owns the subscription, and a packet goes to one session, not both."""
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        relay = app[RELAY]
        storage = relay.storage
        real, calls = storage.subscribe, []

        async def slow_first(*a: Any, **kw: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(1.0)
            return await real(*a, **kw)

        async with node_client(fed, "FR", url) as a, node_client(fed, "FR", url) as b, \
                node_client(fed, "IT", url) as it:
            await asyncio.gather(a.wait_connected(5), b.wait_connected(5), it.wait_connected(5))
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(storage, "subscribe", slow_first)
                first = asyncio.create_task(a.subscribe("main", [">"], timeout=10))
                await asyncio.sleep(0.3)
                await asyncio.gather(first, b.subscribe("main", [">"], timeout=10))
            feeding = [s for s in relay.sessions_by_nation["FR"]
                       if "main" in s.feeds and s.feeds["main"].task and not s.feeds["main"].task.done()]
            assert len(feeding) == 1, f"{len(feeding)} feeds run for one subscription"
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await asyncio.sleep(1.0)
            assert a.deliveries.qsize() + b.deliveries.qsize() == 1
