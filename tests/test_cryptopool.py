"""Opening packets in worker processes (``[node] crypto_workers``) behaves exactly as on threads:
same packets stored, same quarantine reasons; a dead worker is replaced; workers die with the node."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from hub.protocol import envelope
from hub.protocol.federation import Federation

from .attackutil import forward, quarantine_reasons
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
