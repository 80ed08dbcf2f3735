"""The hub's transparency log (docs/protocol.md §9). Filled in by the accountability work."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from hub.protocol.keys import SigningKey


class HubLog:
    def __init__(self, relay: Any, key: SigningKey) -> None:
        self.relay = relay
        self.key = key

    def promise(self, item: Any, result: Any) -> str | None:
        return None

    def delivery_proof(self, index: int) -> dict[str, Any] | None:
        return None

    async def add_cosignature(self, nation: str, data: bytes) -> None:
        return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(3600)


def add_log_routes(app: web.Application, relay_key: Any) -> None:
    return None
