"""The national node's local store: every packet received, the current view, its history.

One SQLite file (WAL, ``synchronous=FULL``: a packet is acknowledged only once committed),
schema under numbered migrations (``clients/node/schema.py``). Each :meth:`NodeStore.ingest`
is one transaction holding the raw signed packet, every derived row and the sinks' outbox rows,
so a crash leaves either all of it or none. :meth:`NodeStore.ingest_many` is the same code over
many packets in one transaction; :meth:`NodeStore.ingest_stream` feeds it batch after batch
with name analysis in a helper process (bulk loads; ``bench/store.py`` measures it).

Records and versions (docs/content.md §9, §10): an alert or freeze is a *record* named by its
original packet id. Amendments and withdrawals add *versions*; only the original's sender may
add them. Versions are numbered by their signed creation time, so a late original or a late
amendment slots into place, and the current view (entities, names, identifiers, assets …) is
rebuilt from the newest content version whenever that changes. A withdrawn record keeps its rows
(``show`` and ``include_withdrawn`` searches still find it) but plain search, lookup and freeze
listings skip it.

Hot paths (ingest, search, lookup) use plain ``sqlite3`` with prepared statements and
multi-row inserts; the low-rate reads use sqlite-utils' dict rows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlite_utils

from clients.node import schema
from clients.node import search as reading
from clients.node.schema import KEY_SHIFT, Ids, Rows, derive
from clients.node.search import Hit
from hub.migrations import migrate
from hub.sqlrows import insert_rows, select_in
from hub.protocol import codec
from hub.protocol.certs import Certificate
from hub.protocol.content import entities_of
from hub.protocol.envelope import Header
from hub.protocol.errors import StoreError, ValidationError

__all__ = ["Hit", "Incoming", "NodeStore", "OutboxItem"]

ACTIONS: Final = ("store", "drop")
BULK_CHECKPOINT_PAGES: Final = 16384  # 64 MiB of WAL between checkpoints during bulk loads
_RECORD_TYPES: Final = ("alert", "freeze")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One opened packet and what the node decided for it: the arguments of :meth:`NodeStore.ingest`."""

    raw: bytes
    header: Header
    signer: Certificate
    content: dict[str, Any]
    salt: bytes
    content_bytes: bytes
    log_index: int | None
    received_at: int
    proof: dict[str, Any] | None = None
    action: str = "store"
    rule: str | None = None
    sinks: Sequence[str] = ()
    processed: bool = False


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    sink: str
    packet_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class _Batch:
    """Rows of one transaction, written with a multi-row INSERT per table at flush."""

    packets: list[tuple[Any, ...]] = field(default_factory=list)
    blobs: list[tuple[Any, ...]] = field(default_factory=list)
    records: list[tuple[Any, ...]] = field(default_factory=list)
    versions: list[tuple[Any, ...]] = field(default_factory=list)
    receipts: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    rows: Rows = field(default_factory=Rows)
    ids: set[str] = field(default_factory=set)  # packet ids in this batch, for duplicates


_BATCH_SQL: Final = {
    "packets": "INSERT INTO packets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "blobs": "INSERT INTO packet_blobs VALUES (?, ?, ?, ?)",
    "records": "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "versions": "INSERT INTO versions VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "receipts": "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
    "outbox": "INSERT INTO outbox (sink, packet_id, payload, next_at) VALUES (?, ?, ?, ?)",
}


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk (BRIEF: nothing lost)
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the hot index and FTS pages stay in memory
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class NodeStore:
    """The node's SQLite store. Thread-safe: one lock serialises use of the one connection."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path.parent}: the directory for the node store does not exist "
                             f"(create it, or point the node at another store path)")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a node store file")
        try:
            self._conn = _connect(self.path)
            self._conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            migrate(self._conn, schema.MIGRATIONS, "node store")
            self._ids = self._load_ids()
        except sqlite3.DatabaseError as exc:
            what = str(exc)
            hint = ("restore it from a backup, or move it aside to start an empty store"
                    if "not a database" in what or "malformed" in what else
                    "check the permissions of the file and its directory, and the free disk space")
            raise StoreError(f"{self.path}: cannot open the node store ({what}); {hint}") from None
        self._db = sqlite_utils.Database(self._conn, recursive_triggers=False, execute_plugins=False)
        self._lock = threading.RLock()
        self._closed = False
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        """Close the file; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown()
            try:
                self._conn.execute("PRAGMA optimize")  # refresh planner statistics, cheap at close
            finally:
                self._conn.close()

    def _load_ids(self) -> Ids:
        def nxt(table: str, col: str = "id") -> int:
            return int(self._conn.execute(f"SELECT COALESCE(MAX({col}), 0) + 1 FROM {table}").fetchone()[0])
        return Ids(seq=nxt("packets", "seq"), record=nxt("records"), entity=nxt("entities"),
                   name=nxt("names"), asset=nxt("assets"), identifier=nxt("identifiers"))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    self._ids = self._load_ids()  # ids taken by the rolled-back rows are free again
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: write failed ({exc}); nothing was stored") from None

    # -- writing ----------------------------------------------------------------------

    def has_packet(self, packet_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM packets WHERE packet_id = ?",
                                      (packet_id,)).fetchone() is not None

    def ingest(self, *, raw: bytes, header: Header, signer: Certificate, content: dict[str, Any],
               salt: bytes, content_bytes: bytes, log_index: int | None, received_at: int,
               proof: dict[str, Any] | None = None, action: str = "store", rule: str | None = None,
               sinks: Sequence[str] = (), processed: bool = False) -> str:
        """Store one opened packet in one transaction; ``"stored"`` or ``"duplicate"``.

        Raises ValidationError (nothing stored) for an amendment or withdrawal that is not
        from the original's sender, or that names a packet that cannot be amended.
        """
        return self.ingest_many([Incoming(raw, header, signer, content, salt, content_bytes, log_index,
                                          received_at, proof, action, rule, tuple(sinks), processed)])[0]

    def ingest_many(self, items: Iterable[Incoming]) -> list[str]:
        """:meth:`ingest` for many packets in ONE transaction: all are stored, or none."""
        items = list(items)
        with self._tx():
            writer = _Writer(self._conn, self._ids)
            writer.prefetch([item.header.packet_id for item in items])
            out = [writer.add(item) for item in items]
            writer.flush()
        return out

    def ingest_stream(self, batches: Iterable[Sequence[Incoming]], *, workers: int = 1) -> Iterator[list[str]]:
        """:meth:`ingest_many` per batch, one transaction each: the bulk-load path.

        Name analysis (transliteration, blocking keys) is the costliest Python step; with
        ``workers`` it runs in a helper process, one batch ahead, while this process writes.
        """
        if workers < 1:
            yield from (self.ingest_many(batch) for batch in batches)
            return
        if self._pool is None:  # kept for the store's life
            # fork: the child needs only the names module and never touches the connection;
            # spawn would re-run the caller's main script, which a bench or tool may not guard.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        pool = self._pool
        upcoming = iter(batches)
        batch = next(upcoming, None)
        analysing = pool.submit(schema.analyse_names, schema.unknown_names(_names_of(batch or ())))
        # Checkpoint the WAL every 64 MiB rather than 4: a bulk load rewrites the same FTS and
        # index pages batch after batch, and each checkpoint would copy them to the file again.
        with self._lock:
            self._conn.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
        try:
            while batch is not None:
                schema.remember(analysing.result())
                following = next(upcoming, None)
                analysing = pool.submit(schema.analyse_names, schema.unknown_names(_names_of(following or ())))
                yield self.ingest_many(batch)
                batch = following
        finally:
            with self._lock:
                self._conn.execute("PRAGMA wal_autocheckpoint=1000")
                # Fold the big WAL into the file now, or every read would consult it.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def quarantine(self, *, raw: bytes, reason: str, log_index: int | None, received_at: int,
                   packet_id: str | None = None) -> None:
        """Keep a packet that failed checks, with why; the same bytes twice are one entry."""
        with self._tx():
            self._conn.execute("INSERT OR IGNORE INTO quarantine VALUES (NULL, ?, ?, ?, ?, ?, ?)",
                               (hashlib.sha256(raw).digest(), packet_id, reason, log_index,
                                received_at, raw))

    def record_sent(self, *, raw: bytes, header: Header, content: dict[str, Any], log_index: int | None,
                    promise: str | None, sent_at: int) -> None:
        """Remember a packet this nation published; again later fills in its log index and promise."""
        with self._tx():
            self._conn.execute(
                "INSERT INTO sent VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (packet_id) DO "
                "UPDATE SET log_index = COALESCE(log_index, excluded.log_index), "
                "promise = COALESCE(promise, excluded.promise)",
                (header.packet_id, content["type"], content.get("ref"), header.topic,
                 json.dumps(list(header.nations)), header.created, log_index, promise, sent_at,
                 codec.encode(content), raw))

    def sent_receipt(self, ref: str, status: str) -> bytes | None:
        """The newest receipt (raw packet) this nation sealed for ``ref`` with ``status``, if any:
        re-sending those same bytes makes a retry idempotent at the hub."""
        with self._lock:
            rows = self._conn.execute("SELECT raw, content FROM sent WHERE type = 'receipt' AND ref = ? "
                                      "ORDER BY created DESC", (ref,)).fetchall()
        for raw, content in rows:
            if codec.decode(content).get("status") == status:
                return bytes(raw)
        return None

    def mark_processed(self, packet_id: str) -> bool:
        """True if this call marked the packet processed (it is stored and was not yet)."""
        with self._tx():
            cur = self._conn.execute("UPDATE packets SET processed = 1 WHERE packet_id = ? AND "
                                     "processed = 0", (packet_id,))
            return cur.rowcount == 1

    # -- reading ----------------------------------------------------------------------

    def search(self, query: str, *, schema: str | None = None, country: str | None = None,
               since: str | None = None, until: str | None = None, limit: int = 20,
               include_withdrawn: bool = False) -> list[Hit]:
        """Fuzzy, cross-script name search; ``since``/``until`` bound the record's signed issue date."""
        with self._lock:
            return reading.search(self._conn, query, schema=schema, country=country, since=since,
                                  until=until, limit=limit, include_withdrawn=include_withdrawn)

    def lookup(self, kind: str | None, value: str, *, country: str | None = None,
               include_withdrawn: bool = False) -> list[dict[str, Any]]:
        """Exact identifier match after normalisation; ``country`` reads a national phone number."""
        with self._lock:
            return reading.lookup(self._conn, kind, value, country=country,
                                  include_withdrawn=include_withdrawn)

    def receipts_for(self, packet_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return reading.receipts_for(self._db, packet_id)

    def show(self, packet_id: str) -> dict[str, Any] | None:
        """A record with its current content, every version and receipts; or a packet we sent."""
        with self._lock:
            return reading.show(self._db, packet_id)

    def freezes(self, *, active_only: bool = True, today: str | None = None,
                include_withdrawn: bool = False) -> list[dict[str, Any]]:
        """Freeze notices with their assets; active: not lifted or expired (by ``today``), an asset frozen."""
        day = today or datetime.datetime.now(datetime.UTC).date().isoformat()
        with self._lock:
            return reading.freezes(self._db, active_only=active_only, today=day,
                                   include_withdrawn=include_withdrawn)

    def stats(self) -> dict[str, Any]:
        """Counts: packets by type, records by status, entities, names, quarantined, dropped, receipts."""
        with self._lock:
            return reading.stats(self._db)

    def raw_packets(self) -> Iterator[tuple[int | None, bytes]]:
        """``(log_index, raw)`` of every received packet (dropped ones too), in arrival order."""
        last = 0
        while True:  # pages under the lock, so a long audit never holds it
            with self._lock:
                page = self._conn.execute(
                    "SELECT p.seq, p.log_index, b.raw FROM packets p JOIN packet_blobs b USING (seq) "
                    "WHERE p.seq > ? ORDER BY p.seq LIMIT 500", (last,)).fetchall()
            if not page:
                return
            for seq, log_index, raw in page:
                last = seq
                yield log_index, raw

    # -- hub subscriptions ----------------------------------------------------------------

    def hub_subscriptions(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM hub_subscriptions ORDER BY name")]

    def subscribed(self, name: str, patterns: Sequence[str]) -> None:
        with self._tx():
            self._conn.execute("INSERT OR REPLACE INTO hub_subscriptions VALUES (?, ?, ?)",
                               (name, json.dumps(list(patterns)), int(time.time())))

    def unsubscribed(self, name: str) -> None:
        with self._tx():
            self._conn.execute("DELETE FROM hub_subscriptions WHERE name = ?", (name,))

    # -- outbox -----------------------------------------------------------------------

    def outbox_pending(self, sink: str, limit: int = 100, now: int | None = None) -> list[OutboxItem]:
        at = int(time.time()) if now is None else now
        with self._lock:
            rows = self._conn.execute("SELECT id, sink, packet_id, payload, attempts FROM outbox WHERE "
                                      "sink = ? AND next_at <= ? ORDER BY id LIMIT ?", (sink, at, limit))
            return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def outbox_done(self, ids: Sequence[int]) -> None:
        with self._tx():
            self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def outbox_failed(self, item_id: int, error: str, retry_at: int) -> None:
        with self._tx():
            self._conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ? "
                               "WHERE id = ?", (error, retry_at, item_id))


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _names_of(batch: Sequence[Incoming]) -> list[str]:
    return [name for item in batch if item.action == "store" for entity in entities_of(item.content)
            for name in (*entity.get("names", ()), *entity.get("aliases", ()))]


class _Writer:
    """Turns opened packets into rows inside the caller's transaction.

    New originals (the bulk of traffic) only append to the batch; amendments, withdrawals and
    late originals flush it first, since they read and rewrite a record's state.
    """

    def __init__(self, conn: sqlite3.Connection, ids: Ids) -> None:
        self.conn, self.ids, self.batch = conn, ids, _Batch()
        # What the store held, before this transaction, under the ids prefetch() was given.
        self._looked_up: set[str] = set()
        self._stored: set[str] = set()
        self._records: dict[str, tuple[int, str]] = {}

    def prefetch(self, pids: list[str]) -> None:
        """Look up these packet ids (stored already? a record under them?) in two queries for the
        batch rather than two per packet: each query is a GIL hand-off (see hub.sqlrows)."""
        unique = list(dict.fromkeys(pids))
        self._stored.update(r[0] for r in select_in(self.conn, "SELECT packet_id FROM packets WHERE packet_id IN ({})",
                                                    unique))
        self._records.update((r[0], (r[1], r[2])) for r in select_in(
            self.conn, "SELECT packet_id, id, sender FROM records WHERE packet_id IN ({})", unique))
        self._looked_up.update(unique)

    def add(self, item: Incoming) -> str:
        header, content = item.header, item.content
        pid = header.packet_id
        if item.action not in ACTIONS:
            raise ValidationError("action", f'"{item.action}" is not one of {", ".join(ACTIONS)}')
        if pid in self.batch.ids or (pid in self._stored if pid in self._looked_up else self.conn.execute(
                "SELECT 1 FROM packets WHERE packet_id = ?", (pid,)).fetchone()):
            return "duplicate"
        self.batch.ids.add(pid)
        seq = self.ids.take("seq")
        kind = content["type"]
        stored = item.action == "store"
        self.batch.packets.append((
            seq, pid, kind, header.sender, item.signer.fp, item.signer.name, header.topic, header.created,
            header.expires, content.get("ref"), item.log_index, item.received_at, item.action, item.rule,
            int(item.processed), json.dumps(item.proof, sort_keys=True) if item.proof is not None else None))
        # A dropped packet keeps only its raw bytes: completeness audits see it arrived, and
        # content the filters refused is not kept in the clear.
        self.batch.blobs.append((seq, item.raw, item.salt if stored else None,
                                 item.content_bytes if stored else None))
        if item.sinks:
            payload = json.dumps({"packet_id": pid, "type": kind, "sender": header.sender, "topic": header.topic,
                                  "log_index": item.log_index, "received_at": item.received_at,
                                  "rule": item.rule, "content": content}, ensure_ascii=False)
            self.batch.outbox.extend((sink, pid, payload, item.received_at) for sink in item.sinks)
        if not stored:
            return "stored"
        if kind in _RECORD_TYPES:
            self._original(item, pid)
        elif kind in ("amend", "withdraw"):
            self._change(item, pid)
        elif kind == "receipt":
            self.batch.receipts.append((pid, content["ref"], header.sender, content["status"], content["at"],
                                        content.get("note"), item.received_at))
        return "stored"

    def flush(self) -> None:
        b, rows = self.batch, self.batch.rows
        # Multi-row statements, not executemany: one step (one GIL hand-off) per table, see hub.sqlrows.
        for name, sql in _BATCH_SQL.items():
            if getattr(b, name):
                insert_rows(self.conn, sql, getattr(b, name))
                getattr(b, name).clear()
        # FTS5 flushes its pending terms whenever a rowid is lower than the last: key rowids
        # start with nkeys, so unsorted they would cut every batch into tiny segments.
        rows.keys.sort()
        for name, sql in schema.INSERTS.items():
            if getattr(rows, name):
                insert_rows(self.conn, sql, getattr(rows, name))
        if rows.names:
            insert_rows(self.conn, schema.FTS_INSERT, [(r[0], r[2], r[3]) for r in rows.names])
        b.rows = Rows()

    def _original(self, item: Incoming, pid: str) -> None:
        h = item.header
        row = self._records.get(pid) if pid in self._looked_up else \
            self.conn.execute("SELECT id, sender FROM records WHERE packet_id = ?", (pid,)).fetchone()
        if row is None:  # the common case: a new record, current = this version
            rid = self.ids.take("record")
            self.batch.records.append((rid, pid, item.content["type"], h.sender, "active", 1, pid, 1,
                                       h.created, item.received_at, item.received_at, None, None, None))
            self.batch.versions.append((rid, 1, pid, "original", h.sender, h.created, item.received_at,
                                        None, None))
            derive(self.batch.rows, self.ids, rid, item.content)
            return
        # Amended or withdrawn before it arrived (addressed differently, delivered late). The
        # original's signer is the originator: versions from anyone else stop counting.
        self.flush()
        rid, provisional = row
        if provisional != h.sender:
            self.conn.execute("UPDATE versions SET rejected = ? WHERE record = ? AND sender != ?",
                              (f"not from the originator {h.sender}", rid, h.sender))
        self.conn.execute(_VERSION_SQL, (rid, 0, pid, "original", h.sender, h.created, item.received_at,
                                         None, None))
        self.conn.execute("UPDATE records SET type = ?, sender = ?, original_seen = 1, received_at = ? "
                          "WHERE id = ?", (item.content["type"], h.sender, item.received_at, rid))
        self._refresh(rid)

    def _change(self, item: Incoming, pid: str) -> None:
        h, content = item.header, item.content
        ref, verb = content["ref"], "amend" if content["type"] == "amend" else "withdraw"
        self.flush()
        self._looked_up.clear()  # records change from here on: look each id up again (rare path)
        row = self.conn.execute(
            "SELECT id, sender, type FROM records WHERE packet_id = ? OR id = "
            "(SELECT record FROM versions WHERE packet_id = ?)", (ref, ref)).fetchone()
        if row is None:
            prev = self.conn.execute("SELECT type, sender, created FROM packets WHERE packet_id = ?",
                                     (ref,)).fetchone()
            if prev is not None and prev[0] not in _RECORD_TYPES:
                raise ValidationError("ref", f"packet {ref} is a {prev[0]}: only alerts and freezes can "
                                             f"be amended or withdrawn")
            owner = prev[1] if prev else h.sender
            rtype = prev[0] if prev else (content["content"]["type"] if verb == "amend" else None)
            row = (self.ids.take("record"), owner, rtype)
            self.conn.execute(_BATCH_SQL["records"], (
                row[0], ref, rtype, owner, "active", 0, None, int(prev is not None),
                prev[2] if prev else h.created, item.received_at, item.received_at, None, None, None))
            if prev is not None:  # an original the filters dropped: in the history, without content
                self.conn.execute(_VERSION_SQL, (row[0], 0, ref, "original", prev[1], prev[2],
                                                 item.received_at, None, "dropped by a local filter"))
        rid, owner, rtype = row
        if owner != h.sender:
            raise ValidationError("ref", f"packet {ref} was published by {owner}; only {owner} may "
                                         f"{verb} it, not {h.sender}")
        if verb == "amend" and rtype is not None and content["content"]["type"] != rtype:
            raise ValidationError("content.type", f"an amendment of {_a(rtype)} must be {_a(rtype)}, "
                                                  f"not {_a(content['content']['type'])}")
        self.conn.execute(_VERSION_SQL, (rid, 0, pid, verb, h.sender, h.created, item.received_at,
                                         content["reason"], None))
        self._refresh(rid)

    def _refresh(self, rid: int) -> None:
        """Renumber a record's versions by signed time; rebuild its view if the newest content changed."""
        current_before = self.conn.execute("SELECT current FROM records WHERE id = ?", (rid,)).fetchone()[0]
        versions = self.conn.execute(
            "SELECT id, version, packet_id, kind, created, received_at, reason, rejected FROM versions "
            "WHERE record = ? ORDER BY created, packet_id", (rid,)).fetchall()
        for number, v in enumerate(versions, 1):
            if v[1] != number:
                self.conn.execute("UPDATE versions SET version = ? WHERE id = ?", (number, v[0]))
        valid = [(n, v) for n, v in enumerate(versions, 1) if v[7] is None]
        contents = [(n, v) for n, v in valid if v[3] in ("original", "amend")]
        withdrawals = [v for _, v in valid if v[3] == "withdraw"]
        number, current = contents[-1] if contents else (0, None)
        current_id = current[2] if current else None
        status = "withdrawn" if withdrawals else "amended" if current and current[3] == "amend" else "active"
        if current_id != current_before:
            self._clear(rid)
            if current is not None:
                blob = self.conn.execute("SELECT b.content FROM packets p JOIN packet_blobs b USING (seq) "
                                         "WHERE p.packet_id = ?", (current_id,)).fetchone()[0]
                body = codec.decode(blob)
                derive(self.batch.rows, self.ids, rid, body["content"] if current[3] == "amend" else body)
                self.flush()
        w = withdrawals[0] if withdrawals else None
        self.conn.execute(
            "UPDATE records SET status = ?, version = ?, current = ?, created = ?, updated_at = ?, "
            "withdrawn_by = ?, withdrawn_at = ?, withdrawn_reason = ? WHERE id = ?",
            (status, number, current_id, min(v[4] for v in versions), max(v[5] for v in versions),
             w and w[2], w and w[5], w and w[6], rid))

    def _clear(self, rid: int) -> None:
        """Delete a record's current view; FTS rows go by the exact text they were indexed with."""
        names = self.conn.execute("SELECT n.id, n.name, n.normalized, n.keys FROM names n JOIN entities e "
                                  "ON e.id = n.entity WHERE e.record = ?", (rid,)).fetchall()
        self.conn.executemany("INSERT INTO names_fts (names_fts, rowid, name, normalized) "
                              "VALUES ('delete', ?, ?, ?)", [n[:3] for n in names])
        self.conn.executemany("INSERT INTO name_keys (name_keys, rowid, keys) VALUES ('delete', ?, ?)",
                              [((len(keys.split()) << KEY_SHIFT) | nid, keys) for nid, _, _, keys in names if keys])
        self.conn.execute("DELETE FROM names WHERE entity IN (SELECT id FROM entities WHERE record = ?)", (rid,))
        for table in ("identifiers", "links", "assets", "freezes", "entities"):
            self.conn.execute(f"DELETE FROM {table} WHERE record = ?", (rid,))


_VERSION_SQL: Final = _BATCH_SQL["versions"]
