"""The hub as its own process: SIGKILL mid-stream loses nothing; SIGTERM drains with a close code; TLS."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clients.connection import HubClient
from hub.protocol import envelope
from hub.protocol.errors import ProtocolError
from hub.protocol.federation import Federation
from hub.protocol.suites import CLASSIC

from .hubutil import ROOT, HubProcess, assert_refused, hub_cli, hub_toml, node_client, seal_for

ALL = ("CA", "DE", "FR", "GB", "IT", "JP", "US")




async def _publish_all(client: HubClient, packets: list[bytes], accepted: dict[bytes, int], deadline: float) -> None:
    """Publish with up to 32 in flight; retry each until accepted (idempotent by packet id)."""
    sem = asyncio.Semaphore(32)

    async def one(raw: bytes) -> None:
        pid = envelope.parse_packet(raw).header.id
        async with sem:
            while time.monotonic() < deadline:
                try:
                    r = await client.publish(raw, timeout=5)
                    accepted[pid] = r.index
                    return
                except ProtocolError as exc:
                    if exc.code not in ("timeout", "unavailable"):
                        raise
                    await asyncio.sleep(0.1)
            raise AssertionError("publish did not succeed before the deadline")

    await asyncio.gather(*(one(p) for p in packets))


async def test_sigkill_mid_stream_loses_nothing(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    n = 1000
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db", limits={"ack_timeout": 2.0}))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    url = hub.start()
    # Restart on the same port so clients reconnect to the same address.
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db", listen=f"127.0.0.1:{hub.port}", limits={"ack_timeout": 2.0}))
    # Pre-sealed, classic suite to keep sealing time small; the hub's work is the same shape.
    packets = [seal_for(fed, ALL[i % 7], [x for x in ALL if x != ALL[i % 7]], suite=CLASSIC) for i in range(n)]
    publisher = node_client(fed, "IT", url, backoff=(0.05, 0.5))
    nodes = {c: node_client(fed, c, url, backoff=(0.05, 0.5)) for c in ALL}
    received: dict[str, dict[bytes, int]] = {c: {} for c in ALL}
    deliveries: dict[str, int] = {c: 0 for c in ALL}
    accepted: dict[bytes, int] = {}
    deadline = time.monotonic() + 120

    async def consume(code: str) -> None:
        c = nodes[code]
        while True:
            d = await c.deliveries.get()
            deliveries[code] += 1
            pid = envelope.parse_packet(d.packet).header.id
            received[code].setdefault(pid, d.index)  # the node's store: a set keyed by packet id
            await c.ack(d.sub, d.index)

    try:
        for c in (publisher, *nodes.values()):
            await c.start()
        for code, c in nodes.items():
            await c.wait_connected()
            await c.subscribe("main", [">"])
        consumers = [asyncio.create_task(consume(code)) for code in ALL]
        # Packets from every nation but IT go through their own node's session.
        by_sender: dict[str, list[bytes]] = {}
        for i, p in enumerate(packets):
            by_sender.setdefault(ALL[i % 7], []).append(p)
        pubs = [asyncio.create_task(_publish_all(nodes[s] if s != "IT" else publisher, ps, accepted, deadline))
                for s, ps in by_sender.items()]
        kills = 0
        while len(accepted) < n and kills < 3 and time.monotonic() < deadline:
            await asyncio.sleep(random.uniform(0.4, 1.2))
            hub.kill()
            kills += 1
            await asyncio.sleep(0.2)
            hub.start()
        await asyncio.wait_for(asyncio.gather(*pubs), timeout=max(1, deadline - time.monotonic()))
        assert kills >= 1
        expected = {nation: {pid for i, p in enumerate(packets) if ALL[i % 7] != nation
                             for pid in [envelope.parse_packet(p).header.id]} for nation in ALL}
        while time.monotonic() < deadline and any(received[n].keys() != expected[n] for n in ALL):
            await asyncio.sleep(0.2)
        for nation in ALL:
            missing = expected[nation] - received[nation].keys()
            assert not missing, f"{nation} is missing {len(missing)} packets after {kills} kills"
            assert received[nation].keys() == expected[nation]
        # The log holds each packet exactly once, with gap-free indexes.
        assert sorted(accepted.values()) == list(range(n))
        redelivered = sum(deliveries.values()) - sum(len(r) for r in received.values())
        print(f"\n{n} packets, {kills} SIGKILLs, {sum(len(r) for r in received.values())} distinct deliveries, "
              f"{redelivered} redeliveries of packets whose ack was in flight")
        for t in consumers:
            t.cancel()
    finally:
        for c in (publisher, *nodes.values()):
            await c.close()
        hub.stop()


async def test_sigterm_drains_with_close_code(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db"))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    url = hub.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url + "/v1/ws") as ws:
                await ws.receive()  # hello
                hub.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
        assert hub.proc.wait(15) == 0  # type: ignore[union-attr]
        assert "draining" in (tmp_path / "hub.log").read_text()
    finally:
        hub.kill()


def test_sigterm_while_starting_stops_the_hub_cleanly(fed_dir: Path, tmp_path: Path) -> None:
    """A SIGTERM while the hub loads its keys and database: it finishes starting, drains at once,
    says so in its log and exits 0 (it died with 143 and no log line)."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db"))
    log = tmp_path / "hub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clients", "hub", "serve", "--config", str(cfg)],
                                stdout=out, stderr=out, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while True:  # until the process catches SIGTERM (bit 15 of SigCgt): its deferring handler is in
            caught = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                          if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "while starting" in text and "draining" in text, text


async def test_the_log_stays_one_json_object_per_line_whatever_clients_send(fed_dir: Path, tmp_path: Path) -> None:
    """Malformed requests from anyone (a broken request line, a body in an encoding it is not in)
    are answered 400 and logged, if at all, as JSON lines, not as bare tracebacks."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db"))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    url = hub.start()
    try:
        for request in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n"
                        b"\r\nabcde"):
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            writer.write(request)
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.split()[1:2] in ([b"400"], [b"413"], [b"414"], [b"431"]), status
            writer.close()
        async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
            assert r.status == 200  # still serving
    finally:
        assert hub.stop() == 0
    lines = [ln for ln in (tmp_path / "hub.log").read_text().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") and json.loads(ln) for ln in lines), lines[:20]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "tls.crt", tmp / "tls.key"


async def test_tls(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    crt, key = _self_signed(tmp_path)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db").replace(
        "[hub]\n", f'[hub]\ntls_cert = "{crt}"\ntls_key = "{key}"\n'))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    hub.start()
    url = f"https://localhost:{hub.port}"
    ctx = ssl.create_default_context(cafile=str(crt))
    try:
        async with node_client(fed, "FR", url, ssl_context=ctx) as fr, node_client(fed, "IT", url, ssl_context=ctx) as it:
            await fr.wait_connected()
            await it.wait_connected()
            await fr.subscribe("main", [">"])
            r = await it.publish(seal_for(fed, "IT", ["FR"]))
            d = await asyncio.wait_for(fr.deliveries.get(), 10)
            assert d.index == r.index
        # A client that does not trust the certificate cannot connect.
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get(url + "/healthz")
    finally:
        hub.stop()


async def test_a_hub_refuses_to_start_where_it_would_overwrite_or_share_data(fed_dir: Path, tmp_path: Path) -> None:
    """Each refusal is one line naming what is wrong, and leaves the files as they were."""
    db = tmp_path / "hub.db"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, db))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    hub.start()
    try:
        # A second hub on the same database would hand out the same log indexes.
        assert_refused(hub_cli("serve", cfg, "--port-file", str(tmp_path / "second.port")), 5, "in use by another hub")
        # --port-file may only replace a port file: not the database, not the configuration, not a document.
        before = db.read_bytes()
        for target in (db, cfg):
            assert_refused(hub_cli("serve", cfg, "--port-file", str(target)), 2, "--port-file")
        assert db.read_bytes() == before and "[hub]" in cfg.read_text()
        notes = tmp_path / "notes.txt"
        notes.write_text("the case file\n")
        assert_refused(hub_cli("serve", cfg, "--port-file", str(notes)), 2, "is not a port file")
        assert notes.read_text() == "the case file\n"
    finally:
        assert hub.stop() == 0
    assert not hub.port_file.exists(), "the port file outlived the hub"

    # Another program's database, or a node's store: refused, and not touched (no WAL switch, no table).
    for name, schema in (("crm.db", "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)"),
                         ("store.db", "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);"
                                      "CREATE TABLE packets (id INTEGER PRIMARY KEY)")):
        other = tmp_path / name
        conn = sqlite3.connect(other)
        conn.executescript(schema)
        conn.close()
        before = other.read_bytes()
        foreign = tmp_path / f"{name}.toml"
        foreign.write_text(hub_toml(fed_dir, other))
        assert_refused(hub_cli("serve", foreign), 5, "not a hub database")
        assert_refused(hub_cli("serve", foreign, "--check"), 5, "not a hub database")
        assert other.read_bytes() == before and not Path(f"{other}-wal").exists()


async def test_a_hub_that_cannot_serve_says_why_in_one_line(fed_dir: Path, tmp_path: Path) -> None:
    """TLS files that are not a certificate and its key, or a port already taken: one line naming the
    setting (no traceback); a bad TLS pair is found before the database is created. ``--check``
    finds the same, and topic rules for a nation not in the roster."""
    db = tmp_path / "hub.db"
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    (tmp_path / "bad.key").write_text("not a key\n")
    cfg = tmp_path / "tls.toml"
    cfg.write_text(hub_toml(fed_dir, db).replace(
        "[hub]\n", f'[hub]\ntls_cert = "{tmp_path / "bad.crt"}"\ntls_key = "{tmp_path / "bad.key"}"\n'))
    assert_refused(hub_cli("serve", cfg), 2, "hub.tls_cert / hub.tls_key")
    assert_refused(hub_cli("serve", cfg, "--check"), 2, "hub.tls_cert / hub.tls_key")
    assert not db.exists()
    topics = tmp_path / "topics.toml"
    topics.write_text(hub_toml(fed_dir, db) + '[topics.ZZ]\npublish = ["alerts.>"]\n')
    assert_refused(hub_cli("serve", topics, "--check"), 2, "topics.ZZ.publish")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = tmp_path / "busy.toml"
        busy.write_text(hub_toml(fed_dir, db, listen=f"127.0.0.1:{port}"))
        assert_refused(hub_cli("serve", busy), 2, f"hub.listen: cannot listen on 127.0.0.1:{port}")


def test_a_request_body_that_never_all_arrives_is_answered_408_and_the_connection_closed(
        fed_dir: Path, tmp_path: Path) -> None:
    """A slow sender holds a connection for auth_timeout and about a second more, not ten."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "hub.db", limits={"auth_timeout": 0.5}))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    hub.start()
    try:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
            s.sendall(b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\x81" * 10)
            t0 = time.monotonic()
            got = b""
            while chunk := s.recv(4096):  # to the hub's close
                got += chunk
            held = time.monotonic() - t0
        assert got.startswith(b"HTTP/1.1 408 ") and b'"code":"timeout"' in got, got
        assert 0.4 < held < 3.0, held
    finally:
        assert hub.stop() == 0


def test_ctrl_c_twice_at_the_passphrase_prompt_aborts_the_start(tmp_path: Path) -> None:
    """Signals during start are deferred (see the SIGTERM test); a second Ctrl-C still aborts."""
    import pty
    import select

    from hub.keyfiles import write_federation
    from hub.protocol.federation import G7, create_federation

    fed = create_federation(G7, now=int(time.time()), seed=b"passphrase-prompt", name="prompt-test")
    write_federation(fed, tmp_path / "fed", b"a passphrase", example=True)  # every private key encrypted
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(tmp_path / "fed", tmp_path / "hub.db"))
    env = {k: v for k, v in os.environ.items() if k != "INTELHUB_PASSPHRASE"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the hub on a terminal, asking for its key's passphrase
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "clients", "hub", "serve", "--config", str(cfg)],
                  {**env, "PYTHONPATH": str(ROOT)})
    out = b""

    def read_until(needle: bytes, seconds: float) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while needle not in out and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:  # the child is gone
                    return

    reaped = False
    try:
        read_until(b"Passphrase for", 20)
        assert b"Passphrase for" in out, out
        os.write(fd, b"\x03")  # Ctrl-C: noted, the prompt stays
        read_until(b"Aborted", 1)
        reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
        assert not reaped, "the first Ctrl-C ended the start"
        os.write(fd, b"\x03")
        read_until(b"Aborted", 10)
        deadline = time.monotonic() + 10
        while not reaped and time.monotonic() < deadline:
            reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
            time.sleep(0.05)
        assert reaped, "two Ctrl-C did not abort the start"
        assert b"Aborted" in out and not (tmp_path / "hub.db").exists(), out
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
