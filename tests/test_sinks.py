"""Sinks over the real node store: JSONL files in tmp_path, a real aiohttp webhook on 127.0.0.1,
retries and parking, restarts that deliver what was pending and nothing twice."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import stat
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients.node.sinks import PARKED_RETRY_AT, JsonlSink, SinkRunner, WebhookSink, sinks_from_config
from clients.node.store import NodeStore
from hub.protocol.envelope import open_packet, seal
from hub.protocol.errors import ConfigError
from hub.protocol.federation import Federation

from .conftest import NOW, sample_alert

#: Every wait in these tests polls at most this many times (a bounded loop, ~5 s).
POLLS = 100


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[NodeStore]:
    s = NodeStore(tmp_path / "node.db")
    try:
        yield s
    finally:
        s.close()


def queue(store: NodeStore, fed: Federation, n: int, sinks: tuple[str, ...] = ("out",)) -> list[str]:
    """Seal, open and ingest ``n`` real packets routed to ``sinks``; their packet ids."""
    it, fr = fed.members["IT"], fed.members["FR"]
    ids = []
    for i in range(n):
        content = sample_alert()
        content["title"] = f"Alert {i}"
        raw = seal(content, signer=it.officer, signer_cert=it.officer_cert, recipients=[fr.node_cert],
                   topic="alerts.entity.migrant_smuggling", now=NOW)
        o = open_packet(raw, nation="FR", kem=fr.node_kem, trust=fed.trust(), now=NOW)
        assert store.ingest(raw=raw, header=o.header, signer=o.signer, content=o.content, salt=o.salt,
                            content_bytes=o.content_bytes, log_index=i, received_at=NOW, rule="r",
                            sinks=sinks) == "stored"
        ids.append(o.header.packet_id)
    return ids


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def outbox_row(store: NodeStore, item_id: int) -> tuple[int, int, str | None]:
    """``(attempts, next_at, last_error)`` as the store file holds them."""
    with sqlite3.connect(store.path) as conn:
        row = conn.execute("SELECT attempts, next_at, last_error FROM outbox WHERE id = ?", (item_id,)).fetchone()
    return tuple(row)  # type: ignore[return-value]


# -- JSONL -------------------------------------------------------------------------


async def test_jsonl_appends_each_item_then_marks_it_done(store: NodeStore, fed: Federation, tmp_path: Path) -> None:
    ids = queue(store, fed, 3)
    path = tmp_path / "out.jsonl"
    runner = SinkRunner(store, {"out": JsonlSink("out", path)})
    assert await runner.run_once(now=NOW) == 3
    await runner.close()
    records = lines(path)
    assert [r["packet_id"] for r in records] == ids
    assert [r["delivery_id"] for r in records] == sorted({r["delivery_id"] for r in records})
    assert records[0]["sink"] == "out" and records[0]["payload"]["content"]["entities"][0]["names"] == \
        ["Mohammed Al-Rashid"]
    assert "محمد الراشد" in path.read_text(encoding="utf-8")  # own script, not \u escapes
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.outbox_pending("out", now=NOW) == []
    restarted = SinkRunner(store, {"out": JsonlSink("out", path)})
    assert await restarted.run_once(now=NOW) == 0
    # The store may give a new item the id of one already done: it is still written.
    [later] = queue(store, fed, 1)
    assert store.outbox_pending("out", now=NOW)[0].id in [r["delivery_id"] for r in records]
    assert await restarted.run_once(now=NOW) == 1
    await restarted.close()
    assert [r["packet_id"] for r in lines(path)] == [*ids, later]


async def test_jsonl_restart_after_crash_before_done_writes_nothing_twice(
        store: NodeStore, fed: Federation, tmp_path: Path) -> None:
    queue(store, fed, 3)
    path = tmp_path / "out.jsonl"
    crashed = JsonlSink("out", path)
    await crashed.start()
    # The process wrote the lines and died before outbox_done: the rows are still pending.
    written = await crashed.deliver(store.outbox_pending("out", now=NOW))
    assert all(o.error is None for o in written) and len(store.outbox_pending("out", now=NOW)) == 3
    with path.open("ab") as f:  # and a later write was torn half-way
        f.write(b'{"delivery_id": 99, "sink": "ou')
    runner = SinkRunner(store, {"out": JsonlSink("out", path)})
    assert await runner.run_once(now=NOW) == 3
    await runner.close()
    assert [r["delivery_id"] for r in lines(path)] == [o.item_id for o in written]
    assert store.outbox_pending("out", now=NOW) == []


async def test_jsonl_write_failure_is_retried_then_delivered(store: NodeStore, fed: Federation, tmp_path: Path) -> None:
    queue(store, fed, 2)
    path = tmp_path / "not-yet" / "out.jsonl"  # its directory is missing: every write fails
    runner = SinkRunner(store, {"out": JsonlSink("out", path)})
    assert await runner.run_once(now=NOW) == 1  # the head item failed; the other was not tried
    item_id = store.outbox_pending("out", now=NOW + 10)[0].id
    attempts, next_at, error = outbox_row(store, item_id)
    assert attempts == 1 and NOW < next_at <= NOW + 1 and error is not None and "cannot write" in error
    assert [i.id for i in store.outbox_pending("out", now=NOW)] == [item_id + 1]
    path.parent.mkdir()
    assert await runner.run_once(now=NOW + 10) == 2
    await runner.close()
    assert len(lines(path)) == 2 and store.outbox_pending("out", now=NOW + 10) == []


# -- webhook -----------------------------------------------------------------------


@dataclass
class Hook:
    url: str
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def wait_for(self, count: int) -> None:
        for _ in range(POLLS):
            if len(self.received) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"webhook got {len(self.received)} requests, expected {count}")


@pytest.fixture()
async def hook() -> AsyncIterator[Hook]:
    state = Hook(url="")

    async def handle(request: web.Request) -> web.Response:
        state.received.append((dict(request.headers), await request.json()))
        status = state.statuses.pop(0) if state.statuses else 200
        headers = {"Retry-After": state.retry_after} if state.retry_after and status >= 300 else {}
        return web.Response(status=status, text="ok" if status < 300 else "bad delivery", headers=headers)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/hook"))
    try:
        yield state
    finally:
        await server.close()


async def test_webhook_500_then_200_is_retried_with_the_same_delivery_id(
        store: NodeStore, fed: Federation, hook: Hook) -> None:
    [pid] = queue(store, fed, 1, sinks=("fiu",))
    hook.statuses = [500]
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url, {"Authorization": "Bearer t"})})
    assert await runner.run_once(now=NOW) == 1
    [item] = store.outbox_pending("fiu", now=NOW + 10)
    assert item.attempts == 1 and outbox_row(store, item.id)[2] == "HTTP 500 Internal Server Error: bad delivery"
    assert await runner.run_once(now=NOW) == 0  # not due yet
    assert await runner.run_once(now=NOW + 10) == 1
    await runner.close()
    assert store.outbox_pending("fiu", now=PARKED_RETRY_AT) == []
    (h1, b1), (h2, b2) = hook.received
    assert b1 == b2 and b1["delivery_id"] == item.id and b1["packet_id"] == pid and b1["sink"] == "fiu"
    assert b1["payload"]["content"]["type"] == "alert"
    assert h1["Idempotency-Key"] == h2["Idempotency-Key"] == f"fiu:{pid}"
    assert h1["Authorization"] == "Bearer t" and h1["Content-Type"] == "application/json"


async def test_webhook_400_is_a_permanent_failure_parked_with_its_error(
        store: NodeStore, fed: Federation, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    queue(store, fed, 2, sinks=("fiu",))
    hook.statuses = [400]
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url)})
    assert await runner.run_once(now=NOW) == 2  # a permanent failure does not hold back the next
    await runner.close()
    [parked] = store.outbox_pending("fiu", now=PARKED_RETRY_AT)
    attempts, next_at, error = outbox_row(store, parked.id)
    assert attempts == 1 and next_at == PARKED_RETRY_AT
    assert error == "permanent failure: HTTP 400 Bad Request: bad delivery"
    assert f"delivery {parked.id}" in caplog.text and "parked" in caplog.text
    assert len(hook.received) == 2


async def test_webhook_gives_up_after_max_attempts(store: NodeStore, fed: Federation, hook: Hook) -> None:
    queue(store, fed, 1, sinks=("fiu",))
    hook.statuses = [503, 503, 503]
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url, max_attempts=2)})
    for now in (NOW, NOW + 1000, NOW + 2000):  # the third round finds nothing due
        await runner.run_once(now=now)
    await runner.close()
    [item] = store.outbox_pending("fiu", now=PARKED_RETRY_AT)
    assert outbox_row(store, item.id) == (2, PARKED_RETRY_AT, "gave up after 2 attempts: HTTP 503 Service Unavailable: "
                                                              "bad delivery")
    assert len(hook.received) == 2


async def test_webhook_honours_retry_after(store: NodeStore, fed: Federation, hook: Hook) -> None:
    queue(store, fed, 1, sinks=("fiu",))
    hook.statuses, hook.retry_after = [429], "120"
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url)})
    await runner.run_once(now=NOW)
    await runner.close()
    assert store.outbox_pending("fiu", now=NOW + 119) == []
    assert len(store.outbox_pending("fiu", now=NOW + 120)) == 1


async def test_webhook_connection_refused_is_retried(store: NodeStore, fed: Federation) -> None:
    queue(store, fed, 2, sinks=("fiu",))
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", f"http://127.0.0.1:{port}/hook", timeout=2)})
    assert await runner.run_once(now=NOW) == 1  # stops at the first: the receiver is down
    await runner.close()
    first, second = store.outbox_pending("fiu", now=NOW + 10)
    assert first.attempts == 1 and second.attempts == 0
    assert "ClientConnectorError" in (outbox_row(store, first.id)[2] or "")


async def test_restart_delivers_what_was_pending_and_nothing_twice(
        fed: Federation, hook: Hook, tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "node.db")
    queue(store, fed, 5, sinks=("fiu", "out"))
    first = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url), "out": JsonlSink("out", tmp_path / "o.jsonl")},
                       batch=2)
    assert await first.run_once(now=NOW) == 4
    await first.close()
    store.close()  # the node stops

    store = NodeStore(tmp_path / "node.db")
    second = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url), "out": JsonlSink("out", tmp_path / "o.jsonl")},
                        batch=2)
    for _ in range(5):  # bounded: 3 left per sink, 2 a round
        await second.run_once(now=NOW)
    await second.close()
    try:
        webhook_ids = [body["delivery_id"] for _, body in hook.received]
        file_ids = [r["delivery_id"] for r in lines(tmp_path / "o.jsonl")]
        assert len(webhook_ids) == len(set(webhook_ids)) == 5
        assert len(file_ids) == len(set(file_ids)) == 5
        assert store.outbox_pending("fiu", now=NOW) == store.outbox_pending("out", now=NOW) == []
    finally:
        store.close()


async def test_run_task_wakes_on_kick_and_retries_in_real_time(
        store: NodeStore, fed: Federation, hook: Hook, tmp_path: Path) -> None:
    hook.statuses = [500]
    runner = SinkRunner(store, {"fiu": WebhookSink("fiu", hook.url), "out": JsonlSink("out", tmp_path / "o.jsonl")},
                        poll_interval=0.2, base_backoff=0.05)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0.05)
        queue(store, fed, 2, sinks=("fiu", "out"))
        runner.kick()
        # The first POST fails (500); retry_at is whole seconds, so within ~1 s both arrive.
        await hook.wait_for(3)
        for _ in range(POLLS):
            if not store.outbox_pending("fiu") and (tmp_path / "o.jsonl").exists() \
                    and len(lines(tmp_path / "o.jsonl")) == 2:
                break
            await asyncio.sleep(0.05)
        assert store.outbox_pending("fiu") == store.outbox_pending("out") == []
    finally:
        runner.stop()
        await asyncio.wait_for(task, timeout=5)
    # The worker waited out the failed head item's backoff instead of sending the next first.
    keys = [h["Idempotency-Key"] for h, _ in hook.received]
    assert keys[0] == keys[1] and len(set(keys)) == 2


# -- configuration ----------------------------------------------------------------


def config(text: str, tmp_path: Path) -> dict[str, Any]:
    return {name: sink for name, sink in sinks_from_config(tomllib.loads(text), tmp_path).items()}


def test_config_builds_both_sink_types(tmp_path: Path) -> None:
    sinks = config("""
[sinks.cases]
type = "jsonl"
path = "cases.jsonl"
max_attempts = 5
[sinks.fiu]
type = "webhook"
url = "https://fiu.example/intake"
headers = { Authorization = "Bearer x" }
timeout = 3
max_backoff = 60
[sinks.local]
type = "webhook"
url = "http://127.0.0.1:8080/x"
[sinks.lan]
type = "webhook"
url = "http://10.0.0.5/x"
allow_insecure = true
""", tmp_path)
    cases, fiu = sinks["cases"], sinks["fiu"]
    assert isinstance(cases, JsonlSink) and cases.path == tmp_path / "cases.jsonl" and cases.max_attempts == 5
    assert isinstance(fiu, WebhookSink) and fiu.timeout == 3 and fiu.max_backoff == 60
    assert fiu.headers["Authorization"] == "Bearer x"
    assert set(sinks) == {"cases", "fiu", "local", "lan"}


@pytest.mark.parametrize("table, message", [
    ('type = "kafka"', 'sinks.s: type: must be "jsonl" or "webhook", not \'kafka\''),
    ('type = "jsonl"\npath = "x.jsonl"\nurl = "https://a"', 'sinks.s: "url" is not a field of a jsonl sink'),
    ('type = "jsonl"', "sinks.s: path:"),
    ('type = "jsonl"\npath = "missing/x.jsonl"', "must be a file in an existing directory"),
    ('type = "jsonl"\npath = 5', "sinks.s: path: must be a file path, not 5"),
    ('type = "webhook"\nurl = "ftp://a/b"', "sinks.s: url: 'ftp://a/b' is not an http:// or https:// URL"),
    ('type = "webhook"\nurl = "https://user:pw@a/b"', "sinks.s: url: put credentials in headers"),
    ('type = "webhook"\nurl = "http://fiu.example/x"', "sinks.s: url: plain http is only allowed to loopback"),
    ('type = "webhook"\nurl = "http://fiu.example/x"\nallow_insecure = "yes"', "allow_insecure: must be true or false"),
    ('type = "webhook"\nurl = "https://a/b"\nheaders = { "Bad Header" = "x" }', "sinks.s: headers.Bad Header:"),
    ('type = "webhook"\nurl = "https://a/b"\nheaders = { A = "x\\ny" }', "sinks.s: headers.A: must be a header"),
    ('type = "webhook"\nurl = "https://a/b"\ntimeout = 0', "sinks.s: timeout: must be above 0"),
    ('type = "webhook"\nurl = "https://a/b"\ntimeout = "10"', "sinks.s: timeout: must be seconds"),
    ('type = "webhook"\nurl = "https://a/b"\nmax_attempts = 0', "sinks.s: max_attempts: must be 1-1000"),
    ('type = "webhook"\nurl = "https://a/b"\nmax_attempts = true', "max_attempts: must be a whole number"),
    ('type = "webhook"\nurl = "https://a/b"\nca_file = "none.pem"', "sinks.s: ca_file: cannot load"),
])
def test_bad_sink_config_names_the_sink(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config("[sinks.s]\n" + table + "\n", tmp_path)
    assert message in str(info.value)


def test_bad_sink_names_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sinks.a b: a sink name is 1-64"):
        config('[sinks."a b"]\ntype = "jsonl"\npath = "x"\n', tmp_path)
    with pytest.raises(ConfigError, match="sinks: expected"):
        config('sinks = ["a"]\n', tmp_path)
    with pytest.raises(ConfigError, match="sinks.a: expected a table"):
        config('sinks = { a = 1 }\n', tmp_path)
