"""Opening packets on every core: signature check, HPKE unwrap, decryption and content validation.

ML-DSA and Ed25519 verification release the GIL, but the HPKE unwrap and the content
validation hold it, so worker threads cannot spread a burst of packets over the cores.
With ``[node] crypto_workers = N`` (N >= 1) packets are opened in N worker processes;
with 0 (the default) on two threads of the node's own process. Either way the packets asked for
in one turn of the event loop go as a few chunks, each opened stage by stage.

The split keeps trust decisions in the node process: it reads the header's signer fields
(with processes, a permissive peek; the worker's strict parse must then agree, see
``NodeService._prepare_peeked``) and asks its trust store whether the signer may sign it now
(revocations and directory refreshes live there); a worker gets the packet and that signer's
certificate, parses the packet strictly, checks the signature against the certificate,
decrypts, validates and analyses the names for the store, and returns plain data. Workers are
spawned (not forked: the node has threads holding locks) and exit when the node does,
even after a SIGKILL of the node.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from hub.aio import TurnBatcher
from hub.protocol import envelope
from hub.protocol.content import entities_of, validate_content
from hub.protocol.certs import Certificate
from hub.protocol.errors import DecodeError, IntelhubError, InvalidPacket, ValidationError
from hub.protocol.keys import KemKey
from hub.protocol.suites import get_suite

from . import schema

log = logging.getLogger("intelhub.node")

#: Most packets sent to a worker in one task.
CHUNK = 32
#: Threads opening packets when there are no worker processes.
THREADS = 2

#: One worker's state, set by :func:`_init` (a spawned process holds exactly one node's keys).
_WORKER: dict[str, Any] = {}


def _kem_bytes(kem: KemKey) -> tuple[bytes, bytes, bytes]:
    return (kem.mlkem768.private_bytes_raw(), kem.hybrid_x25519.private_bytes_raw(),
            kem.classic_x25519.private_bytes_raw())


def _watch_parent(parent: int) -> None:
    # A SIGKILLed node cannot shut its pool down: its workers notice they were orphaned and leave.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _init(nation: str, kem: tuple[bytes, bytes, bytes], parent: int) -> None:
    _WORKER["nation"] = nation
    _WORKER["kem"] = KemKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(kem[0]),
                            x25519.X25519PrivateKey.from_private_bytes(kem[1]),
                            x25519.X25519PrivateKey.from_private_bytes(kem[2]))
    _WORKER["certs"] = {}
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # Validation loads its tables (countries, currencies, the IBAN registry) on first use, about
    # 0.1 s: load them now, while the node starts, rather than under its first packets.
    from clients.scenario import french_freeze, italian_alert

    try:
        for sample in (italian_alert(), french_freeze()):
            validate_content(sample)
    except IntelhubError:  # only a warm-up: a worker must start whatever the samples say
        pass


# Packets are opened a chunk at a time, stage by stage, each stage over every packet still in
# the running, rather than packet by packet: the code and tables of each stage (signature
# checks, ML-KEM, validation) then stay in the CPU caches. Validating right after a
# decapsulation cost half as much again as validating alone; in a loop over 400 recorded
# packets the staged form took 360 us per packet against 410. A state is a tuple of a stage's
# arguments; extra trailing values (``want_header``, below) pass through untouched.


def _in_stages(states: list[tuple[Any, ...]],
               stages: tuple[Callable[..., tuple[Any, ...]], ...]) -> list[tuple[Any, ...] | Exception]:
    """Each stage over every state still in the running; a state whose stage raised becomes the exception."""
    out: list[tuple[Any, ...] | Exception] = list(states)
    for stage in stages:
        for i, state in enumerate(out):
            if not isinstance(state, Exception):
                try:
                    out[i] = stage(*state)
                except Exception as exc:  # noqa: BLE001 - it is that packet's outcome
                    out[i] = exc
    return out


def _check(packet: envelope.Packet, signer: Certificate, *rest: Any) -> tuple[Any, ...]:
    envelope.check_signature(packet, signer)
    return (packet, signer, *rest)


def _decrypt_as(nation: str, kem: KemKey, packet: envelope.Packet, signer: Certificate, *rest: Any) -> tuple[Any, ...]:
    content, salt, content_bytes = envelope.decrypt_unvalidated(envelope.Verified(packet, signer), nation=nation,
                                                                kem=kem)
    return (packet.header, signer, content, salt, content_bytes, *rest)


def _opened(header: envelope.Header, signer: Certificate, content: Any, salt: bytes,
            content_bytes: bytes) -> tuple[envelope.Opened]:
    return (envelope.Opened(header, signer, validate_content(content), salt, content_bytes),)


def _open_on_thread(nation: str, kem: KemKey,
                    items: list[tuple[envelope.Packet, Certificate]]) -> list[tuple[bool, Any]]:
    """On a node thread: open parsed packets; ``(True, Opened)`` or ``(False, its exception)`` each."""
    done = _in_stages(list(items), (_check, partial(_decrypt_as, nation, kem), _opened))
    return [(False, r) if isinstance(r, Exception) else (True, r[0]) for r in done]


# In a worker process each stage passes on ``want_header``: the node did not parse the packet
# itself (see :meth:`CryptoPool.open_raw`), so the header goes back too.


def _parse(raw: bytes, cert_raw: bytes, want_header: bool) -> tuple[envelope.Packet, Certificate, bool]:
    certs: dict[bytes, Certificate] = _WORKER["certs"]
    signer = certs.get(cert_raw)
    if signer is None:
        signer = certs[cert_raw] = Certificate.parse(cert_raw)
        if len(certs) > 1024:
            certs.pop(next(iter(certs)))
    return envelope.parse_packet(raw), signer, want_header


def _decrypt(packet: envelope.Packet, signer: Certificate, want_header: bool) -> tuple[Any, ...]:
    return _decrypt_as(_WORKER["nation"], _WORKER["kem"], packet, signer, want_header)


def _validate(header: envelope.Header, signer: Certificate, content: Any, salt: bytes, content_bytes: bytes,
              want_header: bool) -> tuple[Any, ...]:
    """The last stage in a worker: the answer, in plain data."""
    content = validate_content(content)
    # The store's costliest Python step, name analysis, done here too: the node process only
    # looks the results up (clients.node.schema caches them).
    names = {n: schema.analyse_name(n) for e in entities_of(content)
             for n in (*e.get("names", ()), *e.get("aliases", ())) if type(n) is str}
    return ("ok", content, salt, content_bytes, names, _header_fields(header) if want_header else None)


def _tag(exc: Exception) -> tuple[Any, ...]:
    # Errors go back as tags: not every intelhub error survives pickling as itself.
    if isinstance(exc, InvalidPacket):
        return ("invalid_packet",)
    if isinstance(exc, ValidationError):
        return ("invalid", exc.path, exc.reason)
    if isinstance(exc, DecodeError):
        return ("malformed", exc.message)
    if isinstance(exc, IntelhubError):
        return ("error", exc.message)
    raise exc  # a bug, not a bad packet: the chunk fails, as it would have unstaged


def _header_fields(h: envelope.Header) -> tuple[Any, ...]:
    # Plain values: cheaper to pickle than the dataclasses, and the suite stays the module's own object.
    return (h.raw, h.suite.id, h.id, h.sender, h.sender_cert, tuple((r.nation, r.key, r.wrap) for r in h.to),
            h.topic, h.created, h.expires, h.ct_digest, h.commit)


def _header_from(f: tuple[Any, ...]) -> envelope.Header:
    return envelope.Header(f[0], get_suite(f[1]), f[2], f[3], f[4], tuple(envelope.Recipient(*r) for r in f[5]),
                           f[6], f[7], f[8], f[9], f[10])


def _work_many(certs: list[bytes], items: list[tuple[bytes, int, bool]]) -> list[tuple[Any, ...]]:
    """In a worker: open a chunk of packets, stage by stage. Certificates travel once per chunk
    (a hybrid one is about 5 KB), items point into the list."""
    done = _in_stages([(raw, certs[c], want) for raw, c, want in items], (_parse, _check, _decrypt, _validate))
    return [_tag(r) if isinstance(r, Exception) else r for r in done]


def _ready() -> bool:
    return "kem" in _WORKER


class CryptoPool:
    """Where a node opens packets: ``processes`` worker processes, or threads when 0."""

    def __init__(self, processes: int, nation: str, kem: KemKey) -> None:
        self.nation, self.kem, self.processes = nation, kem, processes
        self._executor = self._start()
        # Packets asked for in one turn of the event loop go to the workers as a few chunks, not
        # one by one: a task sent to a process costs more than opening a small packet, and a
        # hand-off to a thread and back two waits for the GIL.
        self._open_batched = TurnBatcher(self._open_chunk, workers=processes, chunk=CHUNK)
        self._open_threaded = TurnBatcher(self._open_thread_chunk, workers=THREADS, chunk=CHUNK)

    def _start(self) -> Executor:
        if self.processes:
            return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init, initargs=(self.nation, _kem_bytes(self.kem), os.getpid()))
        return ThreadPoolExecutor(THREADS, thread_name_prefix="node-crypto")

    async def warm(self) -> None:
        """Start every worker now (each takes a moment to spawn), rather than on the first packets."""
        if self.processes:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._executor, _ready) for _ in range(self.processes)))

    async def open(self, packet: envelope.Packet, signer: Certificate) -> envelope.Opened:
        """Open a parsed packet whose ``signer`` the node's trust store accepted; raises like
        :func:`envelope.open_packet`."""
        if not self.processes:  # on a thread: the parsed packet itself, nothing to copy or parse again
            ok, value = await self._open_threaded((packet, signer))
            if not ok:
                raise value
            return value  # type: ignore[no-any-return]
        return self._opened(await self._open_batched((packet.raw, signer.raw, False)), signer, packet.header)

    async def open_raw(self, raw: bytes, signer: Certificate) -> envelope.Opened:
        """Open a packet the node has only peeked at (worker processes only): the strict parse
        happens on the worker, once, and the header comes back from there. The caller must check
        that it agrees with what it chose ``signer`` by (:func:`envelope.peek_agrees`)."""
        assert self.processes
        return self._opened(await self._open_batched((raw, signer.raw, True)), signer, None)

    @staticmethod
    def _opened(r: tuple[Any, ...], signer: Certificate, header: envelope.Header | None) -> envelope.Opened:
        if r[0] == "ok":
            if r[4]:
                schema.remember(r[4])
            return envelope.Opened(header or _header_from(r[5]), signer, r[1], r[2], r[3])
        if r[0] == "invalid_packet":
            raise InvalidPacket()
        if r[0] == "invalid":
            raise ValidationError(r[1], r[2])
        if r[0] == "malformed":
            raise DecodeError(r[1])
        raise IntelhubError(r[1])

    async def _open_thread_chunk(self, items: list[tuple[envelope.Packet, Certificate]]) -> list[tuple[bool, Any]]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _open_on_thread, self.nation, self.kem, items)

    async def _open_chunk(self, items: list[tuple[bytes, bytes, bool]]) -> list[tuple[Any, ...]]:
        """One chunk on a worker process; a worker killed under it: once more on a new pool;
        twice: each packet of the chunk is quarantined with the reason."""
        loop = asyncio.get_running_loop()
        index: dict[bytes, int] = {}
        packed = [(raw, index.setdefault(cert, len(index)), want) for raw, cert, want in items]
        certs = list(index)
        for _ in range(2):
            executor = self._executor
            try:
                result: list[tuple[Any, ...]] = await loop.run_in_executor(executor, _work_many, certs, packed)
                return result
            except BrokenProcessPool:
                if executor is self._executor:  # the first to notice restarts it
                    log.warning("a crypto worker process died; restarting the pool")
                    self._executor = self._start()
                    executor.shutdown(wait=False, cancel_futures=True)
        return [("error", "a crypto worker process died opening this packet")] * len(items)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
