"""The hub's transparency log (docs/protocol.md §9): tree, checkpoints, promises, proofs, cosignatures.

Every accepted packet is a leaf of an RFC 9162 tree, at the log index the store assigned;
the leaf is ``E({header, time: accepted_at, v: 1})`` (``sqlite_store.leaf_data``). Publishes
complete concurrently, so leaves arriving out of order wait in a small buffer and join the
tree strictly in index order. The tree lives in memory, rebuilt from the stored leaf hashes
on start (about 1.5 s per million leaves).

Signatures are hybrid (Ed25519 + ML-DSA-65) and ML-DSA signing costs more than the rest of a
packet's handling, so they are amortised: checkpoints every ``checkpoint_interval`` while the
tree grows (on a thread of their own), and promises of inclusion in *batches* (on the event
loop, see ``_sign_promises``) — every publish waiting while a signature is being made shares
the next one (one leaf: the promise.py note; several: the batch note of §9.4). Signing is
thereby capped at one promise note per :data:`PROMISE_SPACING`, whatever the packet rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

from hub.protocol import codec
from hub.protocol.checkpoint import Checkpoint, check_uint, open_checkpoint, sign_checkpoint, verify_cosignature
from hub.protocol.errors import IntelhubError, LogError, ProtocolError
from hub.protocol.keys import SigningKey
from hub.protocol.merkle import MerkleTree
from hub.protocol.note import CosignatureVerifier, NoteSigner, sign_note, split_note
from hub.protocol.promise import Promise, sign_promise

from hub.protocol.logformat import PROMISE_BATCH_MAX, b64, batch_promise_body, leaf_data, log_origin
from hub.protocol.merkle import leaf_hash
from .storage import Appended, NewPacket

log = logging.getLogger("intelhub.hub.log")

#: Promised maximum merge delay: a leaf is in every checkpoint dated this long after its promise.
MAX_MERGE_DELAY: Final[int] = 60
#: At most one promise signature per this many seconds; publishes meanwhile share the next one.
PROMISE_SPACING: Final[float] = 0.005
#: An unchanged tree is signed again this often, so witnesses see the log is alive.
CHECKPOINT_HEARTBEAT: Final[int] = 60
#: Signed checkpoints kept in memory for ``GET /v1/log/checkpoint?size=``.
RECENT_CHECKPOINTS: Final[int] = 256
MAX_PROOF_INDEXES: Final[int] = 256
MAX_LEAVES: Final[int] = 1000
#: Leaves read from the store at once when notifications were lost (a cancelled publish).
CATCH_UP_PAGE: Final[int] = 1000
FUTURE_SKEW: Final[int] = 300






def _reject(reason: str) -> ProtocolError:
    return ProtocolError(reason, "bad_cosignature")


def checkpoint_opener(hub_name: str, key: SigningKey) -> Callable[[str | bytes], Checkpoint]:
    """Opens a checkpoint note this hub's key signed (for its log's origin); raises otherwise."""
    origin = log_origin(hub_name)
    verifier = NoteSigner(origin, key.ed25519, key.mldsa65).verifier()
    return lambda note: open_checkpoint(note, verifier, origin)


class HubLog:
    """The log of one hub. The relay calls :meth:`promise` per accepted packet, sessions
    :meth:`delivery_proof` per delivery and :meth:`add_cosignature` per posted cosignature."""

    def __init__(self, relay: Any, key: SigningKey, *, sessions: Iterable[Any] = (),
                 mmd: int = MAX_MERGE_DELAY) -> None:
        self.relay = relay
        self.storage = relay.storage
        self.origin = log_origin(relay.trust.roster.hub_name)
        self.key = key
        self.signer = NoteSigner(self.origin, key.ed25519, key.mldsa65)
        self.mmd = check_uint(mmd, "maximum merge delay")
        self.sessions = sessions
        self.tree = MerkleTree.from_leaf_hashes(self.storage.leaf_hashes())
        self._waiting: dict[int, bytes] = {}  # leaves that completed ahead of a lower index
        self._latest: tuple[Checkpoint, str] | None = None
        self._recent: OrderedDict[int, str] = OrderedDict()
        self._cosigned: dict[str, tuple[Checkpoint, int, str]] = {}
        self._promises: list[tuple[tuple[int, int, bytes], asyncio.Future[str | None]]] = []
        self._promise_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # One thread: signing never competes with itself, and the event loop never signs.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hub-log-sign")
        self._stalled_ticks = 0
        self._load_state()
        relay.metrics.log_size.set(self.tree.size)
        self._proof_cache: dict[int, tuple[int, bytes]] = {}

    # -- state kept across restarts ------------------------------------------------------

    def _load_state(self) -> None:
        opener = checkpoint_opener(self.relay.trust.roster.hub_name, self.key)
        for _, note in self.storage.blobs("checkpoint"):
            try:
                cp = opener(note)
            except IntelhubError as exc:
                log.error("stored checkpoint does not verify (%s); a new one will be signed", exc)
                continue
            if cp.size > self.tree.size or self.tree.root(cp.size) != cp.root:
                # The database lost or changed leaves this hub already signed for: witnesses will see it.
                log.critical("stored checkpoint of size %d does not match the rebuilt log of %d leaves",
                             cp.size, self.tree.size)
                continue
            self._remember(cp, note.decode())
        for key, note in self.storage.blobs("cosignature"):
            try:
                cp, stamp = self._check_cosignature(key.decode(), note)
                self._cosigned[key.decode()] = (cp, stamp, note.decode())
            except (IntelhubError, UnicodeDecodeError) as exc:
                log.warning("stored cosignature of %r no longer verifies: %s", key, exc)

    def _remember(self, cp: Checkpoint, note: str) -> None:
        self._latest = (cp, note)
        self._recent[cp.size] = note
        self._recent.move_to_end(cp.size)
        while len(self._recent) > RECENT_CHECKPOINTS:
            self._recent.popitem(last=False)

    @property
    def latest(self) -> tuple[Checkpoint, str] | None:
        """The newest signed checkpoint and its note."""
        return self._latest

    def checkpoint_note(self, size: int) -> str | None:
        return self._recent.get(size)

    # -- leaves ------------------------------------------------------------------------

    def add_leaf(self, index: int, leaf: bytes) -> None:
        """Record a committed leaf; the tree takes leaves strictly in index order."""
        if index < self.tree.size:
            if self.tree.leaf(index) != leaf:
                log.critical("leaf %d reported twice with different hashes", index)
            return
        self._waiting[index] = leaf
        waiting, tree = self._waiting, self.tree
        while tree.size in waiting:
            tree.append(waiting.pop(tree.size))

    def catch_up(self) -> int:
        """Append committed leaves whose notification never came; returns how many.

        A publish cancelled while its commit was in flight (its peer went away) never
        reports its leaf. The store commits in index order, so every index below one
        reported, or below the store's size, is committed and readable.
        """
        target = min(self._waiting) if self._waiting else self.storage.size()
        if target <= self.tree.size:
            self._stalled_ticks = 0
            return 0
        # Give the in-flight publish one tick to report before reading the store.
        self._stalled_ticks += 1
        if self._stalled_ticks < 2:
            return 0
        before = self.tree.size
        for index, header, accepted_at in _leaves(self.storage, self.tree.size,
                                                  min(target, self.tree.size + CATCH_UP_PAGE)):
            self.add_leaf(index, leaf_hash(leaf_data(header, accepted_at)))
        self._stalled_ticks = 0
        self.relay.metrics.log_size.set(self.tree.size)
        return self.tree.size - before

    # -- promises ----------------------------------------------------------------------

    async def promise(self, item: NewPacket, result: Appended) -> str | None:
        """Append the packet's leaf and return the signed promise of its inclusion (§9.4)."""
        leaf = leaf_hash(leaf_data(item.header, result.accepted_at))
        if not result.duplicate:
            self.add_leaf(result.index, leaf)
            self.relay.metrics.log_size.set(self.tree.size)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._promises.append(((result.index, result.accepted_at, leaf), fut))
        if self._promise_task is None or self._promise_task.done():
            self._promise_task = asyncio.create_task(self._sign_promises())
        return await fut

    async def _sign_promises(self) -> None:
        while self._promises:
            started = time.monotonic()
            batch, self._promises = self._promises[:PROMISE_BATCH_MAX], self._promises[PROMISE_BATCH_MAX:]
            entries = sorted({e for e, _ in batch})
            try:
                # On the event loop, not the signing thread: a hand-off to a thread and back waits for
                # the GIL twice behind the verify and writer threads, which took a publish's promise
                # stage from ~3 to ~7-12 ms at 500 packets/s on a loaded machine. The signing itself
                # (~0.3 ms, the GIL released inside) happens at most once per PROMISE_SPACING.
                note: str | None = self._promise_note(entries, self.relay.now())
            except Exception:  # never fail a publish over its promise: ACCEPTED goes without one
                log.exception("signing a promise failed")
                note = None
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(note)
            pause = PROMISE_SPACING - (time.monotonic() - started)
            if pause > 0 and self._promises:
                await asyncio.sleep(pause)

    def _promise_note(self, entries: list[tuple[int, int, bytes]], now: int) -> str:
        if len(entries) == 1:
            index, accepted_at, leaf = entries[0]
            return sign_promise(Promise(self.origin, index, leaf, accepted_at, self.mmd), self.signer)
        return sign_note(batch_promise_body(self.origin, now, self.mmd, entries), self.signer)

    # -- proofs ------------------------------------------------------------------------

    def delivery_proof_bytes(self, index: int, accepted_at: int) -> bytes:
        """:meth:`delivery_proof` canonically encoded, cached: every recipient of a packet gets the same."""
        size = self._latest[0].size if self._latest is not None else 0
        hit = self._proof_cache.get(index)
        if hit is not None and hit[0] == size:
            return hit[1]
        data = codec.encode(self.delivery_proof(index, accepted_at))
        self._proof_cache[index] = (size, data)
        if len(self._proof_cache) > 4096:
            self._proof_cache.pop(next(iter(self._proof_cache)))
        return data

    def delivery_proof(self, index: int, accepted_at: int | None = None) -> dict[str, Any] | None:
        """The ``proof`` of a deliver frame (§9.5): the leaf's time, and its inclusion path in
        the latest checkpoint when that covers it (else the node fetches the path later)."""
        if accepted_at is None:
            return None
        proof: dict[str, Any] = {"v": 1, "time": accepted_at}
        if self._latest is not None and index < self._latest[0].size:
            size = self._latest[0].size
            proof["size"] = size
            proof["path"] = [b64(h) for h in self.tree.inclusion_proof(index, size)]
        return proof

    # -- checkpoints -------------------------------------------------------------------

    async def run(self) -> None:
        """Sign a checkpoint every ``checkpoint_interval`` while the tree grows."""
        interval = self.relay.config.checkpoint_interval
        try:
            while True:
                try:
                    self.catch_up()
                    await self.sign_checkpoint_if_due()
                except Exception:  # a bug or a store error must not stop the log: try again next tick
                    log.exception("checkpoint not signed")
                await asyncio.sleep(interval)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def sign_checkpoint_if_due(self) -> Checkpoint | None:
        now = self.relay.now()
        latest = self._latest[0] if self._latest else None
        if latest is not None and latest.size == self.tree.size and now - latest.time < CHECKPOINT_HEARTBEAT:
            return None
        size = self.tree.size
        # Times never go backwards, even if the clock does.
        cp = Checkpoint(self.origin, size, self.tree.root(size), max(now, latest.time if latest else 0))
        note = await asyncio.get_running_loop().run_in_executor(self._pool, sign_checkpoint, cp, self.signer)
        self._remember(cp, note)
        self._spawn(self.storage.put_blob("checkpoint", b"latest", note.encode()))
        self._broadcast(note.encode())
        return cp

    def _broadcast(self, data: bytes) -> None:
        for s in list(self.sessions):
            if getattr(s, "nation", "") and not s.ws.closed:
                self._spawn(s.send("notice", kind="checkpoint", data=data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("log background task failed: %s", task.exception())

    # -- witnesses ---------------------------------------------------------------------

    async def add_cosignature(self, nation: str, data: bytes) -> None:
        """Verify a node's cosigned checkpoint (§9.6) and keep the newest per nation."""
        loop = asyncio.get_running_loop()
        try:
            cp, stamp = await loop.run_in_executor(self._pool, self._check_cosignature, nation, data)
        except (IntelhubError, UnicodeDecodeError) as exc:
            raise _reject(f"cosignature refused: {exc}") from None
        # On the loop, which alone appends to the tree.
        if cp.size > self.tree.size or self.tree.root(cp.size) != cp.root:
            raise _reject("cosignature refused: the checkpoint is not one of this log's")
        held = self._cosigned.get(nation)
        if held is not None and (held[0].size, held[1]) >= (cp.size, stamp):
            return
        self._cosigned[nation] = (cp, stamp, data.decode())
        await self.storage.put_blob("cosignature", nation.encode(), data)

    def _check_cosignature(self, nation: str, data: bytes) -> tuple[Checkpoint, int]:
        cp = open_checkpoint(data, self.signer.verifier(), self.origin)
        _, sigs = split_note(data)
        names = {s.name for s in sigs}
        certs = [c for c in self.relay.trust.certs.values()
                 if c.nation == nation and c.role == "node" and c.name in names]
        if not certs:
            raise LogError(f"no cosignature by a node certificate of {nation}")
        now = self.relay.now()
        # One name may belong to several certificates: a node certificate renewed (§4.5) keeps its
        # subject. The cosignature counts if one of them made it and was usable when it did.
        refusals = []
        for cert in certs:
            v = CosignatureVerifier(cert.name, Ed25519PublicKey.from_public_bytes(cert.signing.ed25519),
                                    MLDSA65PublicKey.from_public_bytes(cert.signing.mldsa65))
            try:
                stamp = verify_cosignature(data, v)
            except LogError as exc:
                refusals.append(str(exc))
                continue
            if stamp > now + FUTURE_SKEW:
                raise LogError("cosignature time is in the future")
            why = self.relay.trust.usable_at(cert, stamp)
            if why:
                refusals.append(why)
                continue
            return cp, stamp
        raise LogError("; ".join(dict.fromkeys(refusals)))

    def cosignatures(self) -> list[dict[str, Any]]:
        return [{"nation": n, "size": cp.size, "time": t, "note": note}
                for n, (cp, t, note) in sorted(self._cosigned.items())]




# -- HTTP (§8.7, §9.7) -----------------------------------------------------------------


class _BadRequest(Exception):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _uint(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 19:
        raise _BadRequest(f"{name} must be a non-negative decimal integer, got {text[:24]!r}")
    value = int(text)
    if value > (1 << 63) - 1:
        raise _BadRequest(f"{name} is too large")
    return value


def _query(request: web.Request, allowed: set[str], repeatable: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.query.items():
        if k not in allowed:
            raise _BadRequest(f"unknown parameter {k!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")
        out.setdefault(k, []).append(v)
    for k, vs in out.items():
        if len(vs) > 1 and k not in repeatable:
            raise _BadRequest(f"parameter {k!r} given more than once")
    return out


def add_log_routes(app: web.Application, relay_key: Any) -> None:
    """Serve the log: checkpoints, proofs, leaves and cosignatures (all GET, all public)."""

    def hub_log(request: web.Request) -> HubLog:
        hl = request.app[relay_key].hub_log
        if hl is None:
            raise web.HTTPServiceUnavailable(text="the log is not running")
        return hl  # type: ignore[no-any-return]

    def size_param(hl: HubLog, q: dict[str, list[str]], name: str) -> int:
        if name in q:
            size = _uint(q[name][0], name)
            if size > hl.tree.size:
                raise _BadRequest(f"{name} {size} exceeds the log size {hl.tree.size}")
            return size
        if hl.latest is None:
            raise _BadRequest(f"no checkpoint signed yet; give {name}")
        return hl.latest[0].size

    def handler(fn: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request, hub_log(request))  # type: ignore[no-any-return]
            except _BadRequest as exc:
                return _json({"code": "bad_request", "reason": str(exc)}, 400)
            except LogError as exc:
                return _json({"code": "bad_request", "reason": str(exc)}, 400)
        return wrapped

    async def checkpoint(request: web.Request, hl: HubLog) -> web.StreamResponse:
        q = _query(request, {"size"})
        if "size" in q:
            note = hl.checkpoint_note(_uint(q["size"][0], "size"))
            if note is None:
                return _json({"code": "not_found", "reason": "no recent checkpoint of that size"}, 404)
        elif hl.latest is None:
            return _json({"code": "not_found", "reason": "no checkpoint signed yet"}, 404)
        else:
            note = hl.latest[1]
        return web.Response(text=note, content_type="text/plain", charset="utf-8")

    async def inclusion(request: web.Request, hl: HubLog) -> web.StreamResponse:
        q = _query(request, {"index", "id", "size"}, frozenset({"index"}))
        if ("index" in q) == ("id" in q):
            raise _BadRequest("give index (1-256 times) or id (a packet id), not both")
        if "id" in q:
            try:
                found = hl.storage.get(uuid.UUID(q["id"][0]).bytes)
            except ValueError:
                raise _BadRequest("id must be a packet id (UUID)") from None
            if found is None:
                return _json({"code": "not_found", "reason": "no packet with that id in the log"}, 404)
            indexes = [found.index]
        else:
            indexes = [_uint(v, "index") for v in q["index"]]
            if len(indexes) > MAX_PROOF_INDEXES:
                raise _BadRequest(f"at most {MAX_PROOF_INDEXES} indexes per request")
        size = size_param(hl, q, "size")
        proofs = []
        for i in indexes:
            if i >= size:
                raise _BadRequest(f"leaf {i} is not in the tree of size {size}")
            [(_, _, accepted_at)] = _leaves(hl.storage, i, i + 1)
            proofs.append({"index": i, "v": 1, "time": accepted_at, "size": size,
                           "path": [b64(h) for h in hl.tree.inclusion_proof(i, size)]})
        return _json({"size": size, "proofs": proofs})

    async def consistency(request: web.Request, hl: HubLog) -> web.StreamResponse:
        q = _query(request, {"old", "new"})
        if "old" not in q:
            raise _BadRequest("give old (the tree size you hold)")
        old, new = _uint(q["old"][0], "old"), size_param(hl, q, "new")
        if old > new:
            raise _BadRequest(f"old {old} exceeds new {new}")
        path = hl.tree.consistency_proof(old, new)
        return _json({"old": old, "new": new, "path": [b64(h) for h in path]})

    async def leaves(request: web.Request, hl: HubLog) -> web.StreamResponse:
        q = _query(request, {"start", "end"})
        if "start" not in q or "end" not in q:
            raise _BadRequest("give start and end (leaf indexes, end exclusive)")
        start, end = _uint(q["start"][0], "start"), _uint(q["end"][0], "end")
        if not start < end <= hl.tree.size or end - start > MAX_LEAVES:
            raise _BadRequest(f"need start < end <= {hl.tree.size} (the log size), at most {MAX_LEAVES} leaves")
        rows = _leaves(hl.storage, start, end)
        body = codec.encode({"start": start, "leaves": [leaf_data(h, t) for _, h, t in rows]})
        return web.Response(body=body, content_type="application/msgpack")

    async def cosignatures(request: web.Request, hl: HubLog) -> web.StreamResponse:
        _query(request, set())
        return _json({"cosignatures": hl.cosignatures()})

    app.router.add_get("/v1/log/checkpoint", handler(checkpoint))
    app.router.add_get("/v1/log/inclusion", handler(inclusion))
    app.router.add_get("/v1/log/consistency", handler(consistency))
    app.router.add_get("/v1/log/leaves", handler(leaves))
    app.router.add_get("/v1/log/cosignatures", handler(cosignatures))


def _leaves(storage: Any, start: int, stop: int) -> list[tuple[int, bytes, int]]:
    """(index, header, accepted_at) of leaves [start, stop), without reading packet bodies if possible."""
    reader = getattr(storage, "read_leaves", None)
    if reader is not None:
        return reader(start, stop)  # type: ignore[no-any-return]
    return [(p.index, p.header, p.accepted_at) for p in storage.read_range(start, stop)]
