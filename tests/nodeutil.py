"""Helpers for tests that run real national nodes (in-process, or as `intelhub node run` processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from clients.node.config import parse_node_config
from clients.node.service import NodeService
from clients.node.store import NodeStore

ROOT = Path(__file__).resolve().parents[1]


def node_toml(nation: str, fed_dir: Path, url: str, store: Path, extra: str = "", *, officer: bool = False) -> str:
    return (f'[node]\nnation = "{nation}"\nhub = "{url}"\nkey = "{fed_dir}/{nation}/node.key"\n'
            f'cert = "{fed_dir}/{nation}/node.cert"\ntrust = "{fed_dir}"\nstore = "{store}"\n'
            f'log_level = "warning"\n\n{extra}')


def make_node(nation: str, fed_dir: Path, url: str, tmp: Path, extra: str = "") -> NodeService:
    d = tmp / nation
    d.mkdir(parents=True, exist_ok=True)
    path = d / "node.toml"
    path.write_text(node_toml(nation, fed_dir, url, d / "store.db", extra))
    return NodeService(parse_node_config(path.read_text(), path))


def shown(store: NodeStore, packet_id: str) -> dict[str, Any]:
    """``store.show(packet_id)`` of a record the test knows is there."""
    record = store.show(packet_id)
    assert record is not None, f"{packet_id} is not in the store"
    return record


@asynccontextmanager
async def running_nodes(services: dict[str, NodeService]) -> AsyncIterator[dict[str, NodeService]]:
    stop = asyncio.Event()
    readies = {n: asyncio.Event() for n in services}
    tasks = [asyncio.create_task(s.run(stop, readies[n])) for n, s in services.items()]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies.values())), 30)
        yield services
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def until(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``cond`` (every 50 ms, bounded) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class NodeProcess:
    """`intelhub node run` as its own process (for SIGKILL tests)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log, self.env = config, log, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients", "node", "run", "--config", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env, **(env or {})})

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
