"""The node watches the hub's log (docs/audit.md): a hub that drops, reorders, rewrites or forks is caught.

What a :class:`LogWatcher` checks, and where the proof of a lie goes (``log_evidence``):

* every packet delivered is in the log at the index the hub gave it (inclusion proof of the
  leaf recomputed from the packet's own header and the hub's acceptance time);
* every checkpoint extends the last one this node verified (consistency proof);
* every promise of inclusion the hub gave this nation is kept by its deadline;
* the checkpoints other nations cosigned describe the same log (no split view).

As a witness the node cosigns the checkpoints it verified and posts them through the hub.

Integration (the node service calls these; none blocks for long)::

    w = LogWatcher(config.store, me.trust, nation=me.nation, signing=me.signing, cert=me.cert)
    w.backfill(store.raw_packets())             # once at start, before the rest (a thread is fine)
    w.on_delivery(d.index, d.packet, d.proof)   # each delivery (quarantined too), once handled
    w.on_checkpoint(data)                       # each notice of kind "checkpoint"
    await w.run(http_session, config.hub, post=client.post, stop=stop)   # a background task
    w.close()

All but :meth:`backfill` run on the event loop: one SQLite connection, never used by two
threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from clients.audit import logdb
from clients.audit.fetch import LogClient
from clients.audit.logdb import Evidence
from clients.audit.tlog import (
    MAX_ACCEPTED_MMD, InclusionProof, header_of_packet, log_origin, open_hub_checkpoint, open_promise, proof_from_wire,
    witness_verifier,
)
from hub.aio import wait_event
from hub.protocol.certs import Certificate
from hub.protocol.checkpoint import Checkpoint, cosign_checkpoint, verify_cosignature
from hub.protocol.errors import IntelhubError, LogError
from hub.protocol.keys import SigningKey
from hub.protocol.merkle import verify_consistency
from hub.protocol.note import Cosigner, add_signatures, split_note
from hub.protocol.promise import check_promise_kept
from hub.protocol.trust import Trust

log = logging.getLogger("intelhub.node.watch")

PENDING_PAGE: Final[int] = 2048
Post = Callable[[str, bytes], Awaitable[Any]]


@dataclass
class PollReport:
    """What one :meth:`LogWatcher.poll` did."""

    head: int | None = None
    verified: int = 0
    pending: int = 0
    promises_kept: int = 0
    cosigned: bool = False
    evidence: list[Evidence] = field(default_factory=list)
    stale_witnesses: list[str] = field(default_factory=list)


class LogWatcher:
    """One nation's watch over the hub's log, with state in the node store's file (:mod:`clients.audit.logdb`)."""

    def __init__(self, store: Path | str, trust: Trust, *, nation: str, signing: SigningKey | None = None,
                 cert: Certificate | None = None, clock: Callable[[], float] = time.time,
                 pin_interval: float = 60.0, cosign_interval: float = 10.0, stale_after: float = 600.0,
                 max_mmd: int = MAX_ACCEPTED_MMD, on_alarm: Callable[[Evidence], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.conn = logdb.connect(store)
        self.ssl_context = ssl_context
        self.trust, self.roster, self.nation = trust, trust.roster, nation
        self.origin = log_origin(trust.roster.hub_name)
        self.clock = clock
        self.pin_interval, self.cosign_interval, self.stale_after = pin_interval, cosign_interval, stale_after
        self.max_mmd = max_mmd
        self.on_alarm = on_alarm or (lambda ev: log.error("LOG ALARM (%s): %s", ev.kind, ev.summary))
        self._cosigner = Cosigner(cert.name, signing.ed25519, signing.mldsa65) if signing and cert else None
        self._head: tuple[Checkpoint, str] | None = None
        self._pin: tuple[Checkpoint, str] | None = None
        self._pinned_at = float("-inf")
        try:
            row = self.conn.execute("SELECT note FROM log_head WHERE id = 1").fetchone()
            if row:
                self._head = (open_hub_checkpoint(row[0], self.roster), row[0])
            row = self.conn.execute("SELECT note, pinned_at FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            if row:
                # pinned_at is stored as wall-clock time; intervals are measured on the monotonic clock.
                self._pin = (open_hub_checkpoint(row[0], self.roster), row[0])
                self._pinned_at = time.monotonic() - max(0.0, self.clock() - float(row[1]))
        except LogError as exc:  # a new roster with a new hub key: start over from the hub's next checkpoint
            log.warning("the checkpoints kept in %s no longer verify (%s); starting afresh", store, exc)
            self._head = self._pin = None
        self._candidate: tuple[Checkpoint, str] | None = None
        self._to_pin: dict[int, tuple[Checkpoint, str]] = {}
        self._buffer: list[tuple[Any, ...]] = []
        self._cosigned: tuple[int, bytes] | None = None
        self._cosigned_at = self._witnessed_at = float("-inf")
        self._seen_cosignatures: dict[str, tuple[str, int, bool]] = {}
        self.alarms: list[Evidence] = []

    def now(self) -> int:
        return int(self.clock())

    @property
    def head(self) -> Checkpoint | None:
        """The newest checkpoint verified consistent with every one before it."""
        return self._head[0] if self._head else None

    # -- input from the hub connection (no I/O) ------------------------------------------

    def on_delivery(self, log_index: int, packet: bytes, proof: dict[str, Any] | None,
                    header: tuple[bytes, str] | None = None) -> str:
        """Track a delivered packet's leaf; ``"verified"``, ``"pending"`` (path fetched later) or ``"failed"``.

        Call after the store committed it. Cheap: a proof against a checkpoint already held
        is checked now (a failure is saved as evidence); the rest waits for :meth:`poll`.
        """
        try:
            # ``header``: (signed header bytes, packet id) when the caller has parsed the packet already.
            header_raw, pid = header if header is not None else header_of_packet(packet)
        except LogError as exc:  # the service quarantines it; there is no leaf to recompute
            log.warning("delivery %d: %s", log_index, exc)
            return "failed"
        try:
            p = proof_from_wire(proof, log_index) if proof is not None else None
        except LogError as exc:
            log.warning("delivery %d: unusable proof (%s); a path is fetched later", log_index, exc)
            p = None
        status, size, path = "pending", None, None
        if p is not None and p.size is not None:
            for held in (self._pin, self._head):
                if held is not None and held[0].size == p.size:
                    try:
                        p.verify(header_raw, held[0])
                    except LogError as exc:
                        self._evidence("bad_inclusion", f"leaf {log_index} is not in the checkpoint of size "
                                       f"{p.size} at that index: {exc}", checkpoints=[held[1]],
                                       inclusion=_inclusion_map(p, header_raw))
                        status = "failed"
                        break
                    if held is not self._pin:  # the path is kept: its checkpoint must be too
                        self._to_pin[held[0].size] = held
                    status, size, path = "verified", p.size, logdb.paths_json(p.path)
                    break
        self._buffer.append((log_index, pid, header_raw, p.time if p else None, size, path, status, self.now()))
        return status

    def backfill(self, packets: Iterable[tuple[int | None, bytes]]) -> int:
        """Track stored packets the watcher never saw delivered (``NodeStore.raw_packets()``); returns how many.

        For a node that ran before its watcher, or lost watcher rows in a crash: their time and
        path are fetched by the next :meth:`poll`.
        """
        self.flush()
        known = {r[0] for r in self.conn.execute("SELECT log_index FROM log_inclusion")}
        added = 0
        for index, raw in packets:
            if index is None or index in known:
                continue
            try:
                header, pid = header_of_packet(raw)
            except LogError:
                continue
            self._buffer.append((index, pid, header, None, None, None, "pending", self.now()))
            known.add(index)
            added += 1
            if len(self._buffer) >= PENDING_PAGE:
                self.flush()
        self.flush()
        return added

    def on_checkpoint(self, note: bytes | str) -> Checkpoint | None:
        """A checkpoint the hub pushed (or anyone showed us): kept if its hub signature verifies.

        Two hub-signed checkpoints of one size with different roots are a fork, caught at once;
        anything else is checked for consistency by the next :meth:`poll`.
        """
        text = note.decode("utf-8", "replace") if isinstance(note, bytes) else note
        try:
            cp = open_hub_checkpoint(text, self.roster)
        except LogError as exc:
            log.warning("ignored a checkpoint whose hub signature does not verify: %s", exc)
            return None
        for held in (self._head, self._pin, self._candidate):
            if held is not None and held[0].size == cp.size and held[0].root != cp.root:
                self._evidence("fork", f"two checkpoints of size {cp.size} with different roots",
                               checkpoints=[held[1], text])
                return cp
        if self._candidate is None or (cp.size, cp.time) > (self._candidate[0].size, self._candidate[0].time):
            self._candidate = (cp, text)
        return cp

    # -- the periodic check --------------------------------------------------------------

    async def run(self, session: aiohttp.ClientSession, base_url: str, *, post: Post | None = None,
                  interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """:meth:`poll` every ``interval`` seconds until ``stop``; a hub that cannot be reached is retried."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.poll(session, base_url, post=post)
            except (IntelhubError, sqlite3.Error) as exc:
                log.warning("log check incomplete: %s", exc)
            await wait_event(stop, interval)

    async def poll(self, session: aiohttp.ClientSession, base_url: str, *, post: Post | None = None) -> PollReport:
        """Fetch the latest checkpoint and check it; prove pending leaves and promises; cosign; compare witnesses."""
        client = LogClient(session, base_url, ssl_context=self.ssl_context)
        before = len(self.alarms)
        self.flush()
        if self._candidate is None:  # no notice since the last poll: ask
            self.on_checkpoint(await client.checkpoint())
        await self._advance(client)
        report = PollReport()
        if self._head is not None:
            await self._maybe_pin(client)
            report.verified = await self._prove_pending(client)
            report.promises_kept = await self.check_promises(client)
            if post is not None and self._cosigner is not None:
                report.cosigned = await self._cosign_and_post(post)
            if time.monotonic() - self._witnessed_at >= self.cosign_interval:
                self._witnessed_at = time.monotonic()
                report.stale_witnesses = await self.check_cosignatures(client)
        report.head = self.head.size if self.head else None
        report.pending = self.conn.execute("SELECT COUNT(*) FROM log_inclusion WHERE status = 'pending'").fetchone()[0]
        report.evidence = self.alarms[before:]
        return report

    def flush(self) -> None:
        """Write the deliveries tracked since the last call (one small transaction)."""
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        with logdb.transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO log_inclusion VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (log_index) DO UPDATE SET "
                "time = COALESCE(time, excluded.time), checkpoint = IIF(status = 'pending', excluded.checkpoint, "
                "checkpoint), path = IIF(status = 'pending', excluded.path, path), "
                "status = IIF(status = 'pending', excluded.status, status)", rows)

    async def _advance(self, client: LogClient) -> None:
        cand, self._candidate = self._candidate, None
        if cand is None:
            return
        cp, note = cand
        if self._head is None:
            self._set_head(cp, note)  # trust on first use; every later head must extend it
            return
        head, head_note = self._head
        if cp.size == head.size:
            if cp.root == head.root and cp.time > head.time:
                self._set_head(cp, note)
            return
        old, new = (head, cp) if cp.size > head.size else (cp, head)
        if await self._consistent(client, old, new, [head_note, note], "the one") is None:
            return
        if cp.size > head.size:
            self._set_head(cp, note)

    async def _consistent(self, client: LogClient, old: Checkpoint, new: Checkpoint, notes: list[str],
                          which: str) -> tuple[bytes, ...] | None:
        """The consistency proof from ``old`` to ``new``, checked; None (and evidence saved: both
        signed notes and the proof) when ``new`` does not extend ``old``."""
        path = await client.consistency(old.size, new.size)
        try:
            verify_consistency(old.size, new.size, old.root, new.root, list(path))
        except LogError as exc:
            self._evidence("inconsistent", f"checkpoint of size {new.size} does not extend {which} of size "
                           f"{old.size}: {exc}", checkpoints=notes,
                           consistency={"old": old.size, "new": new.size, "path": list(path)})
            return None
        return path

    def _set_head(self, cp: Checkpoint, note: str) -> None:
        self._head = (cp, note)
        self.conn.execute("INSERT OR REPLACE INTO log_head VALUES (1, ?, ?, ?, ?, ?)",
                          (cp.size, cp.root, cp.time, note, self.now()))

    async def _maybe_pin(self, client: LogClient) -> None:
        """Pin checkpoints deliveries were verified against, and the head when leaves wait for
        one (at most every ``pin_interval``): pins are what inclusion proofs are kept against."""
        for size in sorted(self._to_pin):
            if self._pin is None or size > self._pin[0].size:
                await self._pin_checkpoint(client, *self._to_pin[size])
        self._to_pin.clear()
        if self._head is None:
            return
        head = self._head[0]
        if self._pin is not None and (self._pin[0].size >= head.size or
                                      time.monotonic() - self._pinned_at < self.pin_interval):
            return
        waiting = self.conn.execute("SELECT 1 FROM log_inclusion WHERE status = 'pending' AND log_index < ? "
                                    "UNION ALL SELECT 1 FROM log_promises WHERE status = 'pending' LIMIT 1",
                                    (head.size,)).fetchone()
        if waiting is not None or self._pin is None:
            await self._pin_checkpoint(client, *self._head)

    async def _pin_checkpoint(self, client: LogClient, cp: Checkpoint, note: str) -> None:
        """Keep ``cp`` with the consistency proof from the previous pin, so auditors re-check the chain."""
        prev: int | None = None
        path: tuple[bytes, ...] = ()
        if self._pin is not None:
            old, old_note = self._pin
            proven = await self._consistent(client, old, cp, [old_note, note], "the pinned one")
            if proven is None:
                return
            prev, path = old.size, proven
        self._pinned_at = time.monotonic()
        self.conn.execute("INSERT OR REPLACE INTO log_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (cp.size, cp.root, cp.time, note, self.now(), prev, logdb.paths_json(path)))
        self._pin = (cp, note)

    async def _prove_pending(self, client: LogClient) -> int:
        """Fetch and check inclusion proofs of waiting leaves against the pinned checkpoint."""
        if self._pin is None:
            return 0
        pin, note = self._pin
        done = 0
        last = -1
        while True:
            rows = self.conn.execute("SELECT log_index, header FROM log_inclusion WHERE status = 'pending' AND "
                                     "log_index > ? AND log_index < ? ORDER BY log_index LIMIT ?",
                                     (last, pin.size, PENDING_PAGE)).fetchall()
            if not rows:
                return done
            last = rows[-1][0]
            proofs = await client.inclusion([r[0] for r in rows], pin.size)
            updates: list[tuple[int, int | None, str | None, str, int]] = []
            for index, header in rows:
                p = proofs[index]
                try:
                    p.verify(header, pin)
                except LogError as exc:
                    self._evidence("bad_inclusion", f"leaf {index} is not in the checkpoint of size {pin.size} "
                                   f"at that index: {exc}", checkpoints=[note], inclusion=_inclusion_map(p, header))
                    updates.append((p.time, None, None, "failed", index))
                    continue
                updates.append((p.time, pin.size, logdb.paths_json(p.path), "verified", index))
                done += 1
            with logdb.transaction(self.conn):
                self.conn.executemany("UPDATE log_inclusion SET time = ?, checkpoint = ?, path = ?, status = ? "
                                      "WHERE log_index = ?", updates)

    # -- promises of what this nation published --------------------------------------------

    def _import_sent(self) -> None:
        """Take new promises from the store's ``sent`` table (written by the officer CLI and the node)."""
        mark = self.conn.execute("SELECT value FROM log_state WHERE key = 'sent_rowid'").fetchone()
        last = mark[0] if mark else 0
        try:
            rows = self.conn.execute("SELECT rowid, packet_id, log_index, promise, raw FROM sent WHERE rowid > ? "
                                     "ORDER BY rowid LIMIT 1000", (last,)).fetchall()
        except sqlite3.OperationalError:
            return  # no store schema yet
        if not rows:
            return
        with logdb.transaction(self.conn):
            for rowid, pid, index, promise, raw in rows:
                try:
                    header, _ = header_of_packet(raw)
                except LogError:
                    continue
                if promise is not None and index is not None:
                    self.conn.execute("INSERT OR IGNORE INTO log_promises VALUES (?, ?, ?, ?, 'pending', ?, NULL)",
                                      (pid, index, header, promise, self.now()))
            self.conn.execute("INSERT OR REPLACE INTO log_state VALUES ('sent_rowid', ?)", (rows[-1][0],))

    async def check_promises(self, client: LogClient) -> int:
        """Check pending promises against the head; a broken one is evidence. Returns how many were kept."""
        if self._head is None:
            return 0
        self._import_sent()
        head, note = self._head
        rows = self.conn.execute("SELECT packet_id, log_index, header, promise FROM log_promises "
                                 "WHERE status = 'pending' ORDER BY log_index LIMIT 1000").fetchall()
        proofs = await client.inclusion([r[1] for r in rows if r[1] < head.size], head.size) if rows else {}
        kept, updates = 0, []
        for pid, index, header, text in rows:
            try:
                promise = open_promise(text, self.roster, index=index, header=header, max_mmd=self.max_mmd)
            except LogError as exc:  # not a valid hub signature: not evidence, but worth knowing
                updates.append(("invalid", str(exc), pid))
                continue
            p = proofs.get(index)
            try:
                if not check_promise_kept(promise, head, list(p.path) if p else []):
                    continue
            except LogError as exc:
                self._evidence("broken_promise", f"promise for leaf {index} ({pid}) not kept: {exc}",
                               checkpoints=[note], promise=text,
                               inclusion=_inclusion_map(p, header) if p else {"index": index, "header": header})
                updates.append(("broken", str(exc), pid))
                continue
            kept += 1
            updates.append(("kept", f"in the checkpoint of size {head.size}", pid))
        if updates:
            with logdb.transaction(self.conn):
                self.conn.executemany("UPDATE log_promises SET status = ?, detail = ?, checked_at = "
                                      f"{self.now()} WHERE packet_id = ?", updates)
        return kept

    # -- witnessing ------------------------------------------------------------------------

    def cosign(self) -> bytes | None:
        """This node's cosignature on its verified head (C2SP tlog-cosignature, Ed25519 and ML-DSA-65)."""
        if self._head is None or self._cosigner is None:
            return None
        cp, note = self._head
        return add_signatures(note, cosign_checkpoint(cp, self._cosigner, self.now())).encode()

    async def _cosign_and_post(self, post: Post) -> bool:
        if self._head is None:
            return False
        cp = self._head[0]
        if self._cosigned == (cp.size, cp.root) or time.monotonic() - self._cosigned_at < self.cosign_interval:
            return False
        data = await asyncio.get_running_loop().run_in_executor(None, self.cosign)
        if data is None:
            return False
        await post("cosignature", data)
        self._cosigned, self._cosigned_at = (cp.size, cp.root), time.monotonic()
        return True

    async def check_cosignatures(self, client: LogClient, entries: list[dict[str, Any]] | None = None) -> list[str]:
        """Compare the other nations' cosigned checkpoints with this node's head; returns stale witnesses."""
        if self._head is None:
            return []
        head, head_note = self._head
        stale = []
        for e in entries if entries is not None else await client.cosignatures():
            nation, note = e["nation"], e["note"]
            if nation == self.nation:
                continue
            seen = self._seen_cosignatures.get(nation)
            if seen is not None and seen[0] == note:
                stamp, covered = seen[1], seen[2]  # a prefix of a head we verified: of every later one too
                if self.now() - stamp > self.stale_after:
                    stale.append(nation)
                if covered:
                    continue
            try:
                cp, stamp = self._open_cosigned(nation, note)
            except (LogError, UnicodeDecodeError) as exc:
                log.warning("cosignature of %s does not verify: %s", nation, exc)
                continue
            if self.now() - stamp > self.stale_after and nation not in stale:
                stale.append(nation)
            if cp.size == head.size and cp.root != head.root:
                self._evidence("fork", f"{nation} cosigned a checkpoint of size {cp.size} with a different root "
                               "than this node's", checkpoints=[head_note, note])
                continue
            old, new = (cp, head) if cp.size < head.size else (head, cp)
            if old.size != new.size:
                path = await client.consistency(old.size, new.size)
                try:
                    verify_consistency(old.size, new.size, old.root, new.root, list(path))
                except LogError as exc:
                    self._evidence("fork", f"{nation} cosigned a checkpoint of size {cp.size} that is not "
                                   f"consistent with this node's of size {head.size}: {exc}",
                                   checkpoints=[head_note, note],
                                   consistency={"old": old.size, "new": new.size, "path": list(path)})
                    continue
            self._seen_cosignatures[nation] = (note, stamp, cp.size <= head.size)
            self.conn.execute("INSERT OR REPLACE INTO log_witnesses VALUES (?, ?, ?, ?, ?, ?)",
                              (nation, cp.size, cp.root, stamp, note, self.now()))
            if cp.size > head.size:
                self.on_checkpoint(note)  # a witness saw further: check it as our next head
        return stale

    def _open_cosigned(self, nation: str, note: str) -> tuple[Checkpoint, int]:
        cp = open_hub_checkpoint(note, self.roster)
        names = {s.name for s in split_note(note)[1]}
        # A renewed node certificate keeps its name (§4.5): whichever of them made the cosignature.
        for cert in self.trust.certs.values():
            if cert.nation == nation and cert.role == "node" and cert.name in names:
                try:
                    return cp, verify_cosignature(note, witness_verifier(cert))
                except LogError:
                    continue
        raise LogError(f"no cosignature by a known node certificate of {nation}")

    # -- evidence --------------------------------------------------------------------------

    def _evidence(self, kind: str, summary: str, *, checkpoints: list[str], **parts: Any) -> None:
        data: dict[str, Any] = {"v": 1, "kind": kind, "summary": summary, "origin": self.origin,
                                "checkpoints": checkpoints, "observer": self.nation}
        data.update({k: v for k, v in parts.items() if v is not None})
        ev = Evidence(kind, summary, data, self.now())
        if logdb.save_evidence(self.conn, ev):
            self.alarms.append(ev)
            self.on_alarm(ev)

    def evidence(self) -> list[Evidence]:
        """Every contradiction saved in this store, oldest first."""
        return logdb.evidence(self.conn)

    def status(self, log_index: int) -> str | None:
        """``verified``, ``pending`` or ``failed`` for a tracked leaf; None if unknown."""
        self.flush()
        row = self.conn.execute("SELECT status FROM log_inclusion WHERE log_index = ?", (log_index,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.flush()
        self.conn.close()


def _inclusion_map(p: InclusionProof, header: bytes) -> dict[str, Any]:
    return {"index": p.index, "time": p.time, "size": p.size, "path": list(p.path), "header": header}
