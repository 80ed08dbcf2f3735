"""A client of the hub's log endpoints (docs/protocol.md §9.7): checkpoints, proofs, leaves, cosignatures.

Everything fetched is untrusted until checked: callers verify checkpoints against the
roster's hub key and proofs against checkpoints (:mod:`clients.audit.tlog`).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from hub.protocol.errors import ProtocolError

from .tlog import InclusionProof, Leaf, consistency_from_wire, decode_leaves, proof_from_wire

#: Indexes per inclusion request and leaves per leaves request (the hub's limits).
PROOFS_PER_REQUEST: Final[int] = 256
LEAVES_PER_REQUEST: Final[int] = 1000


class LogClient:
    """``GET /v1/log/...`` of one hub over a caller's aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 30.0) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        if self.base.endswith("/v1/ws"):
            self.base = self.base[: -len("/v1/ws")]
        self.ssl: Any = ssl_context or True
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
        try:
            async with self.session.get(self.base + path, params=list(params), ssl=self.ssl,
                                        timeout=self.timeout) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProtocolError(f"cannot reach the hub's log at {self.base} ({exc.__class__.__name__}: {exc})",
                                "unreachable") from None

    async def _json(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        import json

        status, body = await self._get(path, params)
        try:
            data = json.loads(body)
        except ValueError:
            raise ProtocolError(f"hub answered {path} with HTTP {status} and no JSON", "protocol") from None
        if status != 200:
            reason = data.get("reason", f"HTTP {status}") if isinstance(data, dict) else f"HTTP {status}"
            raise ProtocolError(f"{path}: {reason}", "protocol")
        return data

    async def checkpoint(self, size: int | None = None) -> str:
        """The latest signed checkpoint note (or a recent one of ``size``), unverified."""
        status, body = await self._get("/v1/log/checkpoint", [("size", str(size))] if size is not None else [])
        if status != 200:
            raise ProtocolError(f"no checkpoint from the hub (HTTP {status})", "protocol")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("the hub's checkpoint is not UTF-8 text", "protocol") from None

    async def consistency(self, old: int, new: int) -> tuple[bytes, ...]:
        d = await self._json("/v1/log/consistency", [("old", str(old)), ("new", str(new))])
        return consistency_from_wire(d, old, new)

    async def inclusion(self, indexes: Sequence[int], size: int) -> dict[int, InclusionProof]:
        """Inclusion proofs of ``indexes`` in the tree of ``size``, in requests of 256."""
        out: dict[int, InclusionProof] = {}
        todo = sorted(set(indexes))
        for i in range(0, len(todo), PROOFS_PER_REQUEST):
            chunk = todo[i:i + PROOFS_PER_REQUEST]
            d = await self._json("/v1/log/inclusion", [("size", str(size))] + [("index", str(x)) for x in chunk])
            proofs = d.get("proofs") if isinstance(d, dict) else None
            if not isinstance(proofs, list) or len(proofs) != len(chunk):
                raise ProtocolError("the hub's inclusion answer does not list the proofs asked for", "protocol")
            for want, p in zip(chunk, proofs):
                out[want] = proof_from_wire(p, want)
        return out

    async def inclusion_by_id(self, packet_id: str, size: int | None = None) -> InclusionProof:
        params = [("id", packet_id)] + ([("size", str(size))] if size is not None else [])
        d = await self._json("/v1/log/inclusion", params)
        proofs = d.get("proofs") if isinstance(d, dict) else None
        if not isinstance(proofs, list) or len(proofs) != 1 or not isinstance(proofs[0], dict):
            raise ProtocolError("the hub's inclusion answer is malformed", "protocol")
        index = proofs[0].get("index")
        if type(index) is not int:
            raise ProtocolError("the hub's inclusion answer has no index", "protocol")
        return proof_from_wire(proofs[0], index)

    async def leaves(self, start: int, end: int) -> list[Leaf]:
        """Leaves [start, end) (at most 1000), decoded strictly."""
        status, body = await self._get("/v1/log/leaves", [("start", str(start)), ("end", str(end))])
        if status != 200:
            raise ProtocolError(f"the hub refused leaves {start}-{end} (HTTP {status}: {body[:200]!r})", "protocol")
        return decode_leaves(body, start, end - start)

    async def cosignatures(self) -> list[dict[str, Any]]:
        d = await self._json("/v1/log/cosignatures")
        entries = d.get("cosignatures") if isinstance(d, dict) else None
        if not isinstance(entries, list):
            raise ProtocolError("the hub's cosignatures answer is malformed", "protocol")
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("nation"), str)
                and isinstance(e.get("note"), str)]
