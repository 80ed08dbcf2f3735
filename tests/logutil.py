"""Helpers for the transparency-log tests: a fast-checkpointing hub, waiting for checkpoints, watchers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import aiohttp

from clients.audit.tlog import open_hub_checkpoint
from clients.node.watch import LogWatcher
from hub.protocol.checkpoint import Checkpoint
from hub.protocol.federation import Federation
from hub.server.config import HubConfig

from .hubutil import hub_config


def fast_config(fed_dir: Path, db: Path, interval: float = 0.1, **kw: Any) -> HubConfig:
    """A hub that signs a checkpoint every ``interval`` seconds (the default is 1 s)."""
    return dataclasses.replace(hub_config(fed_dir, db, **kw), checkpoint_interval=interval)


async def checkpoint_at_least(url: str, fed: Federation, size: int, timeout: float = 10.0) -> tuple[Checkpoint, str]:
    """Poll GET /v1/log/checkpoint until it covers ``size`` leaves; returns it verified, with its note."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(url + "/v1/log/checkpoint") as r:
                if r.status == 200:
                    note = await r.text()
                    cp = open_hub_checkpoint(note, fed.roster)
                    if cp.size >= size:
                        return cp, note
            if time.monotonic() > deadline:
                raise AssertionError(f"no checkpoint of size >= {size} within {timeout} s")
            await asyncio.sleep(0.05)


def watcher(fed: Federation, nation: str, store: Path, **kw: Any) -> LogWatcher:
    m = fed.members[nation]
    return LogWatcher(store, fed.trust(), nation=nation, signing=m.node_signing, cert=m.node_cert, **kw)
