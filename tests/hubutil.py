"""Helpers for tests that run the real hub (in-process on 127.0.0.1:0, or as a subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from clients.connection import HubClient
from hub.protocol import envelope
from hub.keyfiles import write_federation
from hub.protocol.federation import G7, Federation, create_federation
from hub.protocol.suites import CLASSIC, HYBRID, Suite
from hub.server.app import create_app
from hub.server.config import HubConfig, parse_config

from .conftest import sample_alert

ROOT = Path(__file__).resolve().parents[1]


def hub_toml(fed_dir: Path, db: Path, *, listen: str = "127.0.0.1:0", limits: dict[str, Any] | None = None,
             topics: str = "", control: Path | None = None) -> str:
    lim = "".join(f"{k} = {v}\n" for k, v in (limits or {}).items())
    ctl = "" if control is None else f'control_socket = "{control}"\n'
    return (f'[hub]\nlisten = "{listen}"\nkey = "{fed_dir}/hub/hub.key"\ntrust = "{fed_dir}"\n'
            f'database = "{db}"\nverify_threads = 2\n{ctl}\n[limits]\n{lim}\n{topics}')


def hub_config(fed_dir: Path, db: Path, **kw: Any) -> HubConfig:
    return parse_config(hub_toml(fed_dir, db, **kw), db.parent)


@asynccontextmanager
async def running_hub(config: HubConfig, port: int = 0, **app_kw: Any) -> AsyncIterator[tuple[str, Any]]:
    """The real hub app on a real socket (127.0.0.1, a free port unless given); yields (base URL, app)."""
    app = create_app(config, **app_kw)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app
    finally:
        await server.close()


def node_client(fed: Federation, nation: str, url: str, **kw: Any) -> HubClient:
    m = fed.members[nation]
    return HubClient(url, signing=m.node_signing, cert=m.node_cert, roster_fp=fed.roster.fp,
                     hub_name=fed.hub_name, **kw)


def seal_for(fed: Federation, sender: str, to: tuple[str, ...] | list[str], topic: str = "alerts.entity.migrant_smuggling",
             content: dict[str, Any] | None = None, suite: Suite = HYBRID, now: int | None = None,
             officer: bool = True) -> bytes:
    m = fed.members[sender]
    signer, cert = (m.officer, m.officer_cert) if officer else (m.node_signing, m.node_cert)
    return envelope.seal(content or sample_alert(), signer=signer, signer_cert=cert,
                         recipients=[fed.members[n].node_cert for n in to], topic=topic,
                         now=int(time.time()) if now is None else now, suite=suite)


async def collect(client: HubClient, n: int, timeout: float = 10.0, ack: bool = True) -> list[Any]:
    """Receive ``n`` deliveries (acknowledging each), or fail after ``timeout`` seconds."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"received {len(out)} of {n} deliveries in {timeout} s")
        d = await asyncio.wait_for(client.deliveries.get(), remaining)
        out.append(d)
        if ack:
            await client.ack(d.sub, d.index)
    return out


class HubProcess:
    """The hub as its own process (`intelhub hub serve`), for SIGKILL tests and benchmarks."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port_file = config_path.with_suffix(".port")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> str:
        if self.port_file.exists():
            self.port_file.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients", "hub", "serve", "--config", str(self.config_path),
             "--port-file", str(self.port_file)],
            stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"hub did not start within {timeout} s; see {self.log_path}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else 0


def hub_cli(command: str, cfg: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``intelhub hub <command> --config cfg`` run to its end: exit code and output."""
    return subprocess.run([sys.executable, "-m", "clients", "hub", command, "--config", str(cfg), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_refused(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    """The command failed with ``code`` and one line of error naming ``needle``."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def module_federation(seed: bytes, name: str) -> tuple[Any, Any]:
    """Fixtures ``fed`` and ``fed_dir`` for a module that needs a federation of its own (both
    suites, created at the real clock the hub uses): ``fed, fed_dir = module_federation(...)``."""

    @pytest.fixture(scope="module", name="fed")
    def fed() -> Federation:
        return create_federation(G7, now=int(time.time()), seed=seed, name=name, suites=(HYBRID.id, CLASSIC.id))

    @pytest.fixture(scope="module", name="fed_dir")
    def fed_dir(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> Path:
        d = tmp_path_factory.mktemp(f"{name}-federation")
        write_federation(fed, d, None, example=True)
        return d

    return fed, fed_dir
