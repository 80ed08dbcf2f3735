"""Opening packets in worker processes (``[node] crypto_workers``) behaves exactly as on threads:
same packets stored, same quarantine reasons; a dead worker is replaced; workers die with the node."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from clients.connection import Delivery
from clients.node.cryptopool import CryptoPool
from hub.protocol import codec, envelope
from hub.protocol.federation import Federation

from .attackutil import forward, quarantine_reasons, rebuild
from .conftest import sample_alert
from .hubutil import hub_config, node_client, running_hub, seal_for
from .nodeutil import NodeProcess, make_node, node_toml, running_nodes, until


def _invalid_content_packet(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Authentic (IT signs it honestly) but invalid content: a country code that does not exist."""
    alert = sample_alert()
    alert["entities"][0]["nationality"] = ["XX"]
    with monkeypatch.context() as m:
        m.setattr(envelope, "validate_content", lambda c: c)
        return seal_for(fed, "IT", ["FR"], content=alert)


@pytest.mark.parametrize("workers", [0, 2])
async def test_processes_store_and_quarantine_like_threads(fed: Federation, fed_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    good = [seal_for(fed, "IT", ["FR", "DE"]) for _ in range(12)]
    invalid = _invalid_content_packet(fed, monkeypatch)
    # DE re-encrypts IT's packet to FR under its own signature: the inner sender betrays it.
    forwarded = forward(fed, good[0], by="DE", to="FR")
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {"FR": make_node("FR", fed_dir, url, tmp_path, f"crypto_workers = {workers}\n")}
        assert nodes["FR"].crypto.processes == workers
        async with running_nodes(nodes), node_client(fed, "IT", url) as it, node_client(fed, "DE", url) as de:
            await asyncio.gather(it.wait_connected(), de.wait_connected())
            await asyncio.gather(*(it.publish(p) for p in good), it.publish(invalid))
            await de.publish(forwarded)
            fr = nodes["FR"]
            await until(lambda: fr.counts["stored"] == 12 and fr.counts["quarantined"] == 2, what="all processed")
        reasons = sorted(quarantine_reasons(tmp_path / "FR" / "store.db"))
    assert len(reasons) == 2
    assert reasons[0].startswith("invalid_content: ") and "XX" in reasons[0], reasons
    assert reasons[1] == "invalid_packet: packet failed verification", reasons


async def test_a_killed_worker_process_is_replaced(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {"FR": make_node("FR", fed_dir, url, tmp_path, "crypto_workers = 1\n")}
        async with running_nodes(nodes), node_client(fed, "IT", url) as it:
            await it.wait_connected()
            fr = nodes["FR"]
            for p in [seal_for(fed, "IT", ["FR"]) for _ in range(5)]:
                await it.publish(p)
            await until(lambda: fr.counts["stored"] == 5, what="first packets")
            [pid] = list(fr.crypto._executor._processes)  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            for p in [seal_for(fed, "IT", ["FR"]) for _ in range(5)]:
                await it.publish(p)
            await until(lambda: fr.counts["stored"] == 10, timeout=30, what="packets after the worker died")
            assert fr.counts["quarantined"] == 0
            assert pid not in fr.crypto._executor._processes  # type: ignore[attr-defined]


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(x) for x in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_worker_processes_exit_when_the_node_is_sigkilled(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        d = tmp_path / "FR"
        d.mkdir()
        cfg = d / "node.toml"
        cfg.write_text(node_toml("FR", fed_dir, url, d / "store.db", "crypto_workers = 2\n"))
        node = NodeProcess(cfg, d / "node.log")
        node.start()
        try:
            assert node.proc is not None
            workers = await until(lambda: len(_children(node.proc.pid)) >= 2 and _children(node.proc.pid),  # type: ignore[union-attr]
                                  timeout=30, what="two worker processes")
            node.kill()
            deadline = time.monotonic() + 15
            while any(_alive(w) for w in workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not any(_alive(w) for w in workers), (workers, (d / "node.log").read_text()[-2000:])
        finally:
            node.kill()


def _unsorted(raw: bytes) -> bytes:
    """``raw`` with the packet map's keys in reverse order: read permissively the same packet,
    refused by the strict decoder (non-canonical)."""
    import msgpack

    p = codec.decode(raw)
    return msgpack.packb(dict(reversed(list(p.items()))), use_bin_type=True)


def _untrusted_signer(fed: Federation) -> bytes:
    """A well-formed packet claiming a certificate the trust store has never seen."""
    def edit(p: dict[str, Any], h: dict[str, Any]) -> None:
        h["sender"]["cert"] = b"\x07" * 32

    return rebuild(seal_for(fed, "IT", ["FR"]), edit)


async def test_workers_skip_the_node_side_parse_with_the_same_outcomes(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With worker processes the node only peeks at the header (the worker parses strictly). Bad
    deliveries, as a dishonest hub would hand them in, get exactly the outcomes and quarantine
    reasons of the node that parses everything itself."""
    good = seal_for(fed, "IT", ["FR"])
    flips = []
    for i in range(0, len(good), 97):
        p = bytearray(good)
        p[i] ^= 1 << (i % 8)
        flips.append(bytes(p))
    bad = [*flips, _unsorted(good), _untrusted_signer(fed), _invalid_content_packet(fed, monkeypatch),
           forward(fed, good, by="FR", to="FR"), good[:-1], good + b"\x00"]
    results = {}
    peeked = 0
    real_peek = envelope.peek_header

    def counting_peek(raw: bytes) -> envelope.HeaderPeek | None:
        nonlocal peeked
        peeked += 1
        return real_peek(raw)

    monkeypatch.setattr(envelope, "peek_header", counting_peek)
    full_opens = {0: 0, 2: 0}
    real_open = CryptoPool.open

    async def counting_open(self: CryptoPool, packet: envelope.Packet, signer: Any) -> envelope.Opened:
        full_opens[self.processes] += 1
        return await real_open(self, packet, signer)

    monkeypatch.setattr(CryptoPool, "open", counting_open)
    for workers in (0, 2):
        node = make_node("FR", fed_dir, "http://127.0.0.1:9", tmp_path / f"w{workers}",
                         f"crypto_workers = {workers}\n[receipts]\ndelivered = false\n")
        try:
            await node.crypto.warm()
            outcomes = [await node.handle(Delivery("main", i, raw, None, None)) for i, raw in enumerate([*bad, good])]
            results[workers] = (outcomes, quarantine_reasons(tmp_path / f"w{workers}" / "FR" / "store.db"))
        finally:
            node.watcher.close()
            node.st.close()
            node.crypto.shutdown(wait=False)
    assert peeked == len(bad) + 1  # the process node peeked at every delivery; the thread node at none
    assert results[2] == results[0]
    assert full_opens[2] == 0 and full_opens[0] > 0, full_opens  # with workers, all opened off the peek
    outcomes, reasons = results[0]
    assert outcomes == ["quarantined"] * len(bad) + ["stored"]
    assert {r.split(":")[0] for r in reasons} == {"malformed", "invalid_packet", "untrusted_signer", "invalid_content"}


def test_peek_agrees_with_the_strict_parse(fed: Federation) -> None:
    raw = seal_for(fed, "IT", ["FR", "DE", "GB"])
    peek, header = envelope.peek_header(raw), envelope.parse_packet(raw).header
    assert peek is not None and envelope.peek_agrees(peek, header)
    assert peek.packet_id == header.packet_id
    assert not envelope.peek_agrees(peek._replace(created=peek.created + 1), header)
    for junk in (b"", b"\xc1", b"\x80", raw[:40], b"\x81\xa6header\xc4\x01\x00", codec.encode({"header": 5})):
        assert envelope.peek_header(junk) is None


def _mixed(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[Any]]:
    """Good, invalid-content, tampered and forwarded packets, interleaved, with their signers."""
    good = [seal_for(fed, "IT", ["FR"]) for _ in range(3)]
    tampered = bytearray(good[0])
    tampered[-5] ^= 1  # in the ciphertext: the digest check fails
    items = [good[0], _invalid_content_packet(fed, monkeypatch), bytes(tampered), good[1],
             forward(fed, good[2], by="FR", to="FR"), good[2]]
    trust = fed.trust()
    signers = [trust.signer(h.sender_cert, h.sender, h.created)
               for h in (envelope.parse_packet(raw).header for raw in items)]
    return items, signers


async def test_a_chunk_of_mixed_packets_gets_each_packet_its_own_answer(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker opens a chunk stage by stage (every decryption, then every validation): each
    packet's answer must still be the one it gets alone, whatever its neighbours in the chunk."""
    items, signers = _mixed(fed, monkeypatch)
    pool = CryptoPool(2, "FR", fed.members["FR"].node_kem)
    try:
        await pool.warm()
        chunk = await pool._open_chunk([(raw, s.raw, True) for raw, s in zip(items, signers)])
        alone = [(await pool._open_chunk([(raw, s.raw, True)]))[0] for raw, s in zip(items, signers)]
    finally:
        pool.shutdown()
    assert chunk == alone
    assert [r[0] for r in chunk] == ["ok", "invalid", "invalid_packet", "ok", "invalid_packet", "ok"]
    expected = envelope.open_packet(items[3], nation="FR", kem=fed.members["FR"].node_kem, trust=fed.trust(),
                                    now=int(time.time()))
    assert chunk[3][1:4] == (expected.content, expected.salt, expected.content_bytes)
    assert chunk[1][1] == "entities[0].nationality[0]" and "XX" in chunk[1][2]


async def test_threads_open_a_turns_packets_in_chunks_each_its_own_answer(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without worker processes, the packets asked for in one turn go to the two threads as two
    chunks, opened stage by stage; each caller gets its own packet's content or exception."""
    items, signers = _mixed(fed, monkeypatch)
    parsed = [envelope.parse_packet(raw) for raw in items]
    pool = CryptoPool(0, "FR", fed.members["FR"].node_kem)
    chunks: list[int] = []
    real_chunk = pool._open_thread_chunk

    async def counting(chunk: list[Any]) -> list[tuple[bool, Any]]:
        chunks.append(len(chunk))
        return await real_chunk(chunk)

    monkeypatch.setattr(pool._open_threaded, "_execute", counting)

    def outcome(r: Any) -> Any:
        return (type(r).__name__, str(r)) if isinstance(r, Exception) else (r.header.packet_id, r.content, r.salt)

    try:
        together = await asyncio.gather(*(pool.open(p, s) for p, s in zip(parsed, signers)), return_exceptions=True)
        assert chunks == [3, 3]
        alone: list[Any] = []
        for p, s in zip(parsed, signers):
            try:
                alone.append(await pool.open(p, s))
            except Exception as exc:  # noqa: BLE001 - compared below
                alone.append(exc)
    finally:
        pool.shutdown()
    assert [outcome(r) for r in together] == [outcome(r) for r in alone]
    assert [type(r).__name__ for r in together] == ["Opened", "ValidationError", "InvalidPacket", "Opened",
                                                    "InvalidPacket", "Opened"]
