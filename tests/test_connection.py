"""The node's connection library (clients/connection.py, HubClient) against the real hub: which
refusals are temporary and which final, renewal of subscriptions after a reconnect, local refusal
of requests the hub could never take, backoff, the bounded deliveries queue, closing; and the
node service and configuration around it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from clients import connection
from clients.connection import HubClient
from clients.node.config import parse_node_config
from hub.protocol import frames
from hub.protocol.errors import ConfigError, ProtocolError, StoreError, ValidationError
from hub.protocol.federation import Federation
from hub.protocol.roster import Revocation, sign_revocations
from hub.server.app import RELAY, SESSIONS
from hub.server.config import HubConfig

from .attackutil import RawWS
from .hubutil import collect, hub_config, node_client, running_hub, seal_for
from .nodeutil import make_node, node_toml, until


def _config(fed_dir: Path, tmp_path: Path, **limits: Any) -> HubConfig:
    return hub_config(fed_dir, tmp_path / "hub.db", limits=limits or None)


def busy_once(monkeypatch: pytest.MonkeyPatch, storage: Any) -> SimpleNamespace:
    """The hub's store refuses the next subscribe as a busy disk would, once; ``.calls`` counts them."""
    real = storage.subscribe
    seen = SimpleNamespace(calls=0)

    async def subscribe(*a: Any, **kw: Any) -> Any:
        seen.calls += 1
        if seen.calls == 1:
            raise StoreError("disk busy (once)")
        return await real(*a, **kw)

    monkeypatch.setattr(storage, "subscribe", subscribe)
    return seen


async def _drop(app: Any, nation: str) -> int:
    """The hub closes every session of ``nation`` (as on a restart of a proxy in front of it)."""
    dropped = 0
    for s in list(app[SESSIONS]):
        if s.nation == nation and not s.ws.closed:
            await s.close()
            dropped += 1
    return dropped


async def _reconnected(client: HubClient, before: int, timeout: float = 5.0) -> None:
    await until(lambda: client.connects > before and client.connected.is_set(), timeout, "the client to reconnect")


async def _drop_and_resume(fed: Federation, app: Any, it: HubClient, fr: HubClient) -> None:
    """The hub drops FR's session; FR reconnects, and its subscription "main" delivers IT's next packet."""
    before = fr.connects
    assert await _drop(app, "FR") == 1
    await _reconnected(fr, before)
    raw = seal_for(fed, "IT", ["FR"])
    await it.publish(raw)
    [d] = await collect(fr, 1, timeout=4)
    assert d.packet == raw and d.sub == "main"


def _fr_node_revoked(fed: Federation) -> bytes:
    """FR's revocation list with FR's node certificate revoked from 5 s ago. Signed here rather
    than with ``fed.revoke``, which would change the session-wide federation of other tests."""
    m = fed.members["FR"]
    now = int(time.time())
    entries = [*m.revocations.entries.values(), Revocation(m.node_cert.fp, now - 5, "key_compromise")]
    return sign_revocations(m.root, nation="FR", serial=m.revocations.serial + 1, issued=now, entries=entries).raw


async def _post_revocations(url: str, raw: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/revocations", data=raw) as r:
        assert r.status == 200, await r.text()


# -- refusals at authentication ----------------------------------------------------------------------


async def test_too_many_sessions_is_retried_until_the_slot_is_free(fed: Federation, fed_dir: Path,
                                                                    tmp_path: Path) -> None:
    """The hub's "close one first" is temporary (an old session it has not yet seen drop): the client
    keeps trying with backoff and connects once the slot is free, instead of giving up for good."""
    async with running_hub(_config(fed_dir, tmp_path, max_sessions_per_nation=1)) as (url, app):
        async with node_client(fed, "FR", url) as old:
            await old.wait_connected(5)
            new = node_client(fed, "FR", url, backoff=(0.05, 0.2))
            await new.start()
            try:
                await asyncio.sleep(0.5)  # several refusals meanwhile
                assert new.fatal is None and not new.connected.is_set()
                await old.close()
                await new.wait_connected(3)
                assert new.nation == "FR" and new.connects == 1
            finally:
                await new.close()


@pytest.mark.parametrize("refusal", ["bad_signature", "revoked"])
async def test_other_refusals_at_authentication_are_final(fed: Federation, fed_dir: Path, tmp_path: Path,
                                                          refusal: str) -> None:
    """Refusals for who the node is stay fatal: ``fatal`` is set, wait_connected raises it, and the
    connection loop ends (wait_stopped returns) rather than hammer the hub."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        fr = fed.members["FR"]
        if refusal == "revoked":
            await _post_revocations(url, _fr_node_revoked(fed))
            signing = fr.node_signing
        else:
            signing = fed.members["DE"].node_signing  # FR's certificate, another node's key
        c = HubClient(url, signing=signing, cert=fr.node_cert, roster_fp=fed.roster.fp, hub_name=fed.hub_name,
                      backoff=(0.05, 0.2))
        await c.start()
        try:
            with pytest.raises(ProtocolError) as info:
                await c.wait_connected(5)
            assert info.value.code == "unauthenticated" and info.value is c.fatal
            assert ("revoked" if refusal == "revoked" else "signature") in str(info.value)
            await asyncio.wait_for(c.wait_stopped(), 2)
            assert c.connects == 0
        finally:
            await c.close()


async def test_node_service_ends_when_the_hub_refuses_it_for_good(fed: Federation, fed_dir: Path,
                                                                  tmp_path: Path) -> None:
    """FR's node certificate is revoked while the node runs and its session ends (the hub may end
    it itself on learning the revocation; else it drops it here); the reconnect is refused. The
    service ends raising why, instead of staying up receiving nothing."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        svc = make_node("FR", fed_dir, url, tmp_path)
        svc.client.backoff = (0.05, 0.2)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(svc.run(stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            await _post_revocations(url, _fr_node_revoked(fed))
            await _drop(app, "FR")
            with pytest.raises(ProtocolError) as info:
                await asyncio.wait_for(asyncio.shield(task), 5)
            assert info.value.code == "unauthenticated"
            assert "revoked" in str(info.value), info.value  # the hub's reason, not just "refused"
            assert svc.client.fatal is info.value
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


# -- subscriptions -----------------------------------------------------------------------------------


async def test_renewal_the_hub_cannot_take_is_retried_on_the_same_connection(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reconnect the hub's store refuses the renewal once ("unavailable"): the client tries
    again on that connection, so deliveries resume without waiting for another reconnect."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        storage = app[RELAY].storage
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr:
            await it.wait_connected(5)
            await fr.wait_connected(5)
            await fr.subscribe("main", [">"])
            busy = busy_once(monkeypatch, storage)
            before = fr.connects
            await _drop_and_resume(fed, app, it, fr)
            assert busy.calls == 2 and fr.connects == before + 1  # retried once, on the same connection


async def test_renewal_the_hub_refuses_for_good_is_dropped_and_logged(
        fed: Federation, fed_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another process of FR removed subscription "a" and took FR's last subscription slot, so the
    hub refuses the renewal of "a" after a reconnect (too_many_subscriptions): the client logs it
    and drops "a", instead of sending it again on every reconnect to come."""
    async with running_hub(_config(fed_dir, tmp_path, max_subscriptions_per_nation=1)) as (url, app):
        async with node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr:
            await fr.wait_connected(5)
            await fr.subscribe("a", [">"])
            other = await RawWS.connect(url)  # speaks the protocol itself: no client API involved
            try:
                await other.authenticate(fed, "FR")
                await other.send(frames.encode_frame("unsub", rid=1, name="a"))
                assert (await other.recv_frame())["t"] == "ok"
                await other.send(frames.encode_frame("sub", rid=2, name="b", patterns=[">"]))
                assert (await other.recv_frame())["t"] == "subscribed"
            finally:
                other.close()
            with caplog.at_level(logging.WARNING, logger="intelhub.client"):
                for _ in range(2):  # the first reconnect renews "a" and is refused; the second must not
                    before = fr.connects
                    await until(lambda: [s for s in app[SESSIONS] if s.nation == "FR" and not s.ws.closed] != [],
                                3, "FR's session")
                    await _drop(app, "FR")
                    await _reconnected(fr, before)
                    await asyncio.sleep(0.3)  # for the renewal's answer, if one was sent
            refusals = [r for r in caplog.records if r.name == "intelhub.client" and "too_many_subscriptions" in
                        r.getMessage()]
            assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
            assert "refused subscription a" in refusals[0].getMessage()


async def test_invalid_subscriptions_fail_at_once_and_are_not_kept(fed: Federation, fed_dir: Path,
                                                                   tmp_path: Path) -> None:
    """An invalid pattern or an empty pattern list is refused locally at once (the hub's refusal
    carries no request id, so it used to end in a timeout), and the bad patterns never replace the
    subscription's good ones for the renewal after a reconnect."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr:
            await it.wait_connected(5)
            await fr.wait_connected(5)
            await fr.subscribe("main", [">"])
            for name, patterns in (("main", ["a..b"]), ("other", ["Alerts.>"]), ("other", [])):
                t0 = time.monotonic()
                with pytest.raises((ValidationError, ProtocolError)) as info:
                    await fr.subscribe(name, patterns, timeout=1)
                assert time.monotonic() - t0 < 0.5, f"{patterns}: refused only after a timeout"
                if isinstance(info.value, ProtocolError):
                    assert info.value.code == "bad_frame"
            # "main" is renewed with [">"], not with "a..b" (which the hub would refuse).
            await _drop_and_resume(fed, app, it, fr)
            [session] = [s for s in app[SESSIONS] if s.nation == "FR" and not s.ws.closed]
            assert set(session.feeds) == {"main"}


async def test_subscription_the_hub_refused_is_not_renewed(fed: Federation, fed_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """subscribe() failed (the caller was told), so a reconnect must not quietly create it."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        storage = app[RELAY].storage
        async with node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr:
            await fr.wait_connected(5)
            busy = busy_once(monkeypatch, storage)
            with pytest.raises(ProtocolError) as info:
                await fr.subscribe("extra", ["alerts.>"], timeout=3)
            assert info.value.code == "unavailable"
            before = fr.connects
            assert await _drop(app, "FR") == 1
            await _reconnected(fr, before)
            await asyncio.sleep(0.3)  # time for a renewal to reach the hub, if one were sent
            assert busy.calls == 1
            [session] = [s for s in app[SESSIONS] if s.nation == "FR" and not s.ws.closed]
            assert not session.feeds


# -- requests the hub could never take; backoff --------------------------------------------------------


async def test_oversized_request_is_refused_locally_without_reconnecting(fed: Federation, fed_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A frame over MAX_FRAME would make the hub close the connection, and it used to be re-sent on
    every reconnect until its timeout: now it fails at once with "too_large", the session lives."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected(5)
            t0 = time.monotonic()
            with pytest.raises(ProtocolError) as info:
                await it.publish(b"\x00" * (frames.MAX_FRAME + 1), timeout=2)
            assert info.value.code == "too_large" and time.monotonic() - t0 < 0.5
            await asyncio.sleep(0.2)
            r = await it.publish(seal_for(fed, "IT", ["FR"]), timeout=5)
            assert r.index == 0 and it.connects == 1


class _UpperBound:
    """Stands in for the ``random`` module of clients.connection: the backoff's jitter always
    takes its upper bound, and each bound is recorded, so the delays are known exactly."""

    def __init__(self) -> None:
        self.bounds: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append(round(b, 6))
        return b


async def test_backoff_grows_against_a_hub_that_drops_at_once_and_resets_after_a_stable_connection(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection dropped right after welcome does not reset the backoff (it used to: a hub closing
    each session at once was hammered every ``base`` seconds); one that stayed up STABLE_AFTER does."""
    jitter = _UpperBound()
    monkeypatch.setattr(connection, "random", jitter)
    monkeypatch.setattr(connection, "STABLE_AFTER", 0.4, raising=False)  # raising: the old code had none
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        closing = True

        async def drop_at_once() -> None:
            deadline = time.monotonic() + 10
            while closing and time.monotonic() < deadline:
                await _drop(app, "FR")
                await asyncio.sleep(0.005)

        closer = asyncio.create_task(drop_at_once())
        try:
            async with node_client(fed, "FR", url, backoff=(0.02, 0.16)) as fr:
                await until(lambda: len(jitter.bounds) >= 5, 5, "five reconnects")
                assert jitter.bounds[:5] == [0.02, 0.04, 0.08, 0.16, 0.16]
                assert fr.connects >= 3  # welcomed, then dropped, several times
                closing = False
                await closer
                await fr.wait_connected(3)
                await asyncio.sleep(0.5)  # longer than STABLE_AFTER
                n = len(jitter.bounds)
                assert await _drop(app, "FR") == 1
                await until(lambda: len(jitter.bounds) > n, 3, "the reconnect after a stable connection")
                assert jitter.bounds[n] == 0.02
                await fr.wait_connected(3)
        finally:
            closing = False
            await asyncio.gather(closer, return_exceptions=True)


# -- deliveries ------------------------------------------------------------------------------------------


async def test_deliveries_queue_holds_each_waiting_delivery_once(fed: Federation, fed_dir: Path,
                                                                 tmp_path: Path) -> None:
    """With a stalled consumer the hub redelivers every ack_timeout; copies of deliveries still
    waiting in the queue are not queued again, so it stays within the window. A delivery taken and
    never acknowledged is queued again on redelivery: that is what redelivery is for."""
    async with running_hub(_config(fed_dir, tmp_path, ack_timeout=0.2)) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url, window=4) as fr:
            await it.wait_connected(5)
            await fr.wait_connected(5)
            await fr.subscribe("main", [">"])
            for _ in range(4):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            await until(lambda: fr.deliveries.qsize() >= 4, 5, "four deliveries")
            await asyncio.sleep(1.2)  # a consumer stalled for ~6 ack timeouts (a slow fsync, say)
            assert fr.deliveries.qsize() == fr.window
            taken = fr.deliveries.get_nowait()  # taken, and never acknowledged
            await until(lambda: fr.deliveries.qsize() == 4, 3, "the unacknowledged delivery to come again")
            waiting = [fr.deliveries.get_nowait() for _ in range(fr.deliveries.qsize())]
            assert sorted(d.index for d in waiting) == [0, 1, 2, 3] and taken.index in {d.index for d in waiting}
            for d in waiting:
                await fr.ack(d.sub, d.index)
            await asyncio.sleep(0.3)  # the acks reach the hub; redeliveries it sent before them arrive
            while not fr.deliveries.empty():
                fr.deliveries.get_nowait()
            await asyncio.sleep(0.6)  # acknowledged: nothing comes again
            assert fr.deliveries.empty()


# -- closing -------------------------------------------------------------------------------------------------


async def test_close_during_the_reconnect_loop_is_quick_and_fails_pending_requests(fed: Federation) -> None:
    """No hub listens: close() ends the reconnect loop at once and fails what waits with "closed"."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = node_client(fed, "FR", f"http://127.0.0.1:{port}", backoff=(0.05, 0.2))
    await c.start()
    pub = asyncio.create_task(c.publish(b"x", timeout=20))
    await asyncio.sleep(0.5)  # several failed attempts
    t0 = time.monotonic()
    await c.close()
    assert time.monotonic() - t0 < 2
    await asyncio.wait_for(c.wait_stopped(), 0.5)
    with pytest.raises(ProtocolError) as info:
        await asyncio.wait_for(pub, 2)
    assert info.value.code == "closed"
    await c.close()  # twice is harmless


# -- configuration ---------------------------------------------------------------------------------------------


def _parse_with_hub(fed_dir: Path, tmp_path: Path, url: str) -> str:
    path = tmp_path / "node.toml"
    text = node_toml("FR", fed_dir, url, tmp_path / "store.db")
    return parse_node_config(text, path).hub


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "http://localhost:1", "http://[::1]:1",
                                 "https://anything.example", "https://hub.example:8443/intelhub"])
def test_plain_http_to_loopback_and_https_anywhere_are_accepted(fed_dir: Path, tmp_path: Path, url: str) -> None:
    assert _parse_with_hub(fed_dir, tmp_path, url) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1.attacker.example:8443", "http://localhost.attacker.example",
                                 "http://127.0.0.1@attacker.example", "http://attacker.example/?x=//127.0.0.1"])
def test_plain_http_to_a_host_merely_containing_loopback_is_refused(fed_dir: Path, tmp_path: Path,
                                                                     url: str) -> None:
    """The check used to look for "//127.0.0.1" anywhere in the URL: a host named
    127.0.0.1.attacker.example got plain http, packets and all."""
    with pytest.raises(ConfigError, match="plain http is only allowed to 127.0.0.1"):
        _parse_with_hub(fed_dir, tmp_path, url)


async def test_a_request_of_exactly_the_largest_frame_gets_an_answer_not_a_reconnect_loop(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """MAX_FRAME is the largest frame allowed: the hub takes it (aiohttp refused max_msg_size and up)."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, _):
        async with node_client(fed, "IT", url, backoff=(0.05, 0.2)) as it:
            await it.wait_connected(5)
            rid = it._rid + 1
            n = frames.MAX_FRAME - len(frames.encode_frame("pub", rid=rid, packet=b"", cert=None))
            while len(frames.encode_frame("pub", rid=rid, packet=b"\0" * n, cert=None)) > frames.MAX_FRAME:
                n -= 1
            assert len(frames.encode_frame("pub", rid=rid, packet=b"\0" * n, cert=None)) == frames.MAX_FRAME
            with pytest.raises(ProtocolError) as info:  # over the hub's packet limit: a refusal, at once
                await it.publish(b"\0" * n, timeout=3)
            assert info.value.code == "too_large" and it.connects == 1


async def test_requests_keep_their_timeout_and_close_is_prompt_when_the_hub_stops_reading(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's publish stage is stuck (a store that never answers) and its session holds one
    publish at a time, so it stops reading: megabyte publishes fill the socket. Each still ends
    with `timeout` after its own second, and close() does not wait on the full buffer."""
    async with running_hub(_config(fed_dir, tmp_path, max_pending_publishes=1)) as (url, app):
        stuck = asyncio.Event()

        async def never_answers(*a: Any, **kw: Any) -> Any:
            await stuck.wait()
            raise StoreError("never")

        monkeypatch.setattr(app[RELAY], "publish", never_answers)
        c = node_client(fed, "IT", url)
        await c.start()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await c.wait_connected(5)
            tasks = [asyncio.create_task(c.publish(b"\x01" * 1_000_000, timeout=1)) for _ in range(12)]
            done, pending = await asyncio.wait(tasks, timeout=6)
            assert not pending, f"{len(pending)} of 12 publishes outlived their 1 s timeout"
            assert {getattr(t.exception(), "code", None) for t in done} == {"timeout"}
            t0 = time.monotonic()
            await asyncio.wait_for(c.close(), connection.CLOSE_TIMEOUT + 5)
            assert time.monotonic() - t0 < connection.CLOSE_TIMEOUT + 2
        finally:
            stuck.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await c.close()


async def test_a_request_made_while_a_reconnect_resends_the_backlog_is_sent_too(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Between the hub's welcome and the connection counting as up, the client re-sends what
    waited; a request made meanwhile is sent in that sweep (it was left waiting for its timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = node_client(fed, "IT", f"http://127.0.0.1:{port}", backoff=(0.05, 0.1))
    await c.start()
    backlog = [asyncio.create_task(c.publish(b"\x01" * 900_000, timeout=20)) for _ in range(8)]
    late: list[asyncio.Task[Any]] = []

    async def in_the_window() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if c._ws is not None and not c.connected.is_set():
                late.append(asyncio.create_task(c.publish(seal_for(fed, "IT", ["FR"]), timeout=5)))
                return
            await asyncio.sleep(0)

    spy = asyncio.create_task(in_the_window())
    try:
        async with running_hub(hub_config(fed_dir, tmp_path / "hub.db"), port=port):
            await c.wait_connected(10)
            await asyncio.wait_for(spy, 10)
            assert late, "the test did not catch the client between welcome and up"
            await asyncio.gather(*backlog, return_exceptions=True)  # refused: not packets
            assert (await late[0]).index == 0
    finally:
        spy.cancel()
        await c.close()


async def test_an_unsub_sent_again_after_a_reconnect_counts_as_done(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub removed the subscription and the connection dropped before its `ok`: the copy sent
    after reconnecting finds nothing to remove, and unsubscribe() still succeeds."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        storage = app[RELAY].storage
        real, calls = storage.unsubscribe, []

        async def remove_then_drop(nation: str, name: str) -> bool:
            existed = await real(nation, name)
            calls.append(existed)
            if len(calls) == 1:
                for s in list(app[SESSIONS]):
                    if s.nation == nation:
                        s.abort()
            return existed

        monkeypatch.setattr(storage, "unsubscribe", remove_then_drop)
        async with node_client(fed, "FR", url, backoff=(0.05, 0.1)) as fr:
            await fr.wait_connected(5)
            await fr.subscribe("old", [">"])
            await fr.unsubscribe("old", timeout=5)
            assert calls == [True, False] and fr.connects == 2
            assert storage.subscription_names("FR") == []
            with pytest.raises(ProtocolError, match="has no subscription"):  # not re-sent: still an error
                await fr.unsubscribe("never-was", timeout=5)


async def test_a_hub_that_never_answers_the_upgrade_is_given_up_on_and_tried_again(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that takes the TCP connection and says nothing (a hung hub or proxy)."""
    monkeypatch.setattr(connection, "HANDSHAKE_TIMEOUT", 0.5)
    accepted: list[float] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        try:
            await asyncio.sleep(30)
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = node_client(fed, "FR", f"http://127.0.0.1:{port}", backoff=(0.05, 0.1))
    await c.start()
    try:
        await asyncio.sleep(2.5)
        assert len(accepted) >= 3, accepted  # was one attempt, held for aiohttp's five minutes
    finally:
        await asyncio.wait_for(c.close(), 10)
        server.close()


async def test_a_subscription_whose_answer_came_too_late_is_still_renewed_after_a_reconnect(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """subscribe() timed out, but the hub took the subscription: after the connection drops, the
    client subscribes it again, so the hub feeds it on the new session."""
    async with running_hub(_config(fed_dir, tmp_path)) as (url, app):
        storage = app[RELAY].storage
        real, slow = storage.subscribe, [True]

        async def slow_disk(*a: Any, **kw: Any) -> Any:
            if slow[0]:
                await asyncio.sleep(1.0)  # the answer comes after the client gave up
            return await real(*a, **kw)

        monkeypatch.setattr(storage, "subscribe", slow_disk)
        async with node_client(fed, "FR", url, backoff=(0.05, 0.1)) as fr, node_client(fed, "IT", url) as it:
            await fr.wait_connected(5)
            await it.wait_connected(5)
            with pytest.raises(ProtocolError, match="no answer"):
                await fr.subscribe("main", [">"], timeout=0.3)
            await asyncio.sleep(1.0)
            assert storage.subscription_names("FR") == ["main"]
            slow[0] = False
            await _drop_and_resume(fed, app, it, fr)
