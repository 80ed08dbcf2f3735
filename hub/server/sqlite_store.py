"""SQLite backend of the hub's :class:`~hub.server.storage.Storage`, with group commit.

One writer thread owns the write connection: it takes every queued operation,
runs them in one transaction, commits (WAL, ``synchronous=FULL``: on disk), and
only then resolves their futures — so no ACCEPTED leaves before its packet is
durable, and one fsync serves many packets. If the commit fails (disk full,
read-only), every operation in the batch fails and no index is consumed.
Reads use a second connection on the event-loop thread (WAL readers never block).

The appends and acks of a batch are merged into a few multi-row statements (see
:mod:`hub.sqlrows` for why): a batch of any size takes about eight.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import os
from collections import OrderedDict
from dataclasses import dataclass
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from hub import lockfile
from hub.migrations import migrate
from hub.sqlrows import insert_rows, read_only_uri, select_in
from hub.protocol.logformat import leaf_hash_for
from hub.protocol.errors import StoreError
from hub.protocol.topics import any_match_cached

from .storage import Appended, Conflict, NewPacket, Scan, StoredPacket, Subscription

#: SQL: nobody is owed the packet (``packets``) any more: it expired, or no recipient nation has a
#: subscription owed it (one with no subscription at all is owed everything addressed to it).
_NOT_OWED: Final = """(expires <= :now OR NOT EXISTS (
    SELECT 1 FROM packet_recipients r WHERE r.log_index = packets.log_index AND (
        NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.nation = r.nation)
        OR EXISTS (
            SELECT 1 FROM subscriptions s WHERE s.nation = r.nation
            AND s.cursor < r.log_index AND topic_matches(s.patterns, packets.topic)
            AND NOT EXISTS (SELECT 1 FROM acks a WHERE a.nation = s.nation AND a.name = s.name
                            AND a.log_index = r.log_index)))))"""

MIGRATIONS: Final = [
    """
    CREATE TABLE packets (
        log_index   INTEGER PRIMARY KEY,
        packet_id   BLOB NOT NULL UNIQUE,
        digest      BLOB NOT NULL,
        sender      TEXT NOT NULL,
        signer      BLOB NOT NULL,
        topic       TEXT NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        accepted_at INTEGER NOT NULL,
        header      BLOB NOT NULL,
        leaf_hash   BLOB NOT NULL,
        raw         BLOB
    );
    CREATE TABLE packet_recipients (
        nation    TEXT NOT NULL,
        log_index INTEGER NOT NULL,
        PRIMARY KEY (nation, log_index)
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        nation   TEXT NOT NULL,
        name     TEXT NOT NULL,
        patterns TEXT NOT NULL,
        cursor   INTEGER NOT NULL,
        created  INTEGER NOT NULL,
        PRIMARY KEY (nation, name)
    );
    CREATE TABLE acks (
        nation    TEXT NOT NULL,
        name      TEXT NOT NULL,
        log_index INTEGER NOT NULL,
        PRIMARY KEY (nation, name, log_index)
    ) WITHOUT ROWID;
    CREATE TABLE blobs (
        kind  TEXT NOT NULL,
        key   BLOB NOT NULL,
        data  BLOB NOT NULL,
        added INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX packets_purge ON packets (accepted_at) WHERE raw IS NOT NULL;
    """,
    # Recipients keyed by log index first: a commit then writes the one rightmost page of the
    # table instead of one page in each recipient nation's range (seven 16 KiB pages for a packet
    # to the G7). Measured on one-packet commits: 730 -> 390 us, writer CPU 490 -> 240 us; in
    # commits of 20, 110-120 -> 70-80 us per packet. Scans by nation read in bounded spans (_SPAN).
    """
    CREATE TABLE packet_recipients_by_index (
        log_index INTEGER NOT NULL,
        nation    TEXT NOT NULL,
        PRIMARY KEY (log_index, nation)
    ) WITHOUT ROWID;
    INSERT INTO packet_recipients_by_index SELECT log_index, nation FROM packet_recipients;
    DROP TABLE packet_recipients;
    ALTER TABLE packet_recipients_by_index RENAME TO packet_recipients;
    """,
    # When each subscription last acknowledged anything: the operator's sign of a subscription
    # nobody consumes any more (`intelhub hub subscriptions`). NULL: never; 0: before this was recorded.
    """
    ALTER TABLE subscriptions ADD COLUMN acked_at INTEGER;
    UPDATE subscriptions SET acked_at = 0 WHERE cursor >= 0;
    """,
    # When nobody was owed a packet any more: its body is kept the retention period from then,
    # not from its acceptance (one acknowledged on day 31 of 30 went at the next purge). NULL:
    # still owed. The partial indexes keep the purge's two passes off the ever-growing rows of
    # leaves whose bodies are gone; a commit adds one index entry per packet, as before.
    # Bodies nobody is owed at the upgrade are released as of their acceptance, as the purge before
    # it counted (those past their retention go at the first purge, not a whole period later).
    """
    ALTER TABLE packets ADD COLUMN released_at INTEGER;
    DROP INDEX packets_purge;
    CREATE INDEX packets_held ON packets (log_index) WHERE raw IS NOT NULL AND released_at IS NULL;
    CREATE INDEX packets_released ON packets (released_at) WHERE raw IS NOT NULL AND released_at IS NOT NULL;
    UPDATE packets SET released_at = accepted_at WHERE raw IS NOT NULL AND """
    + _NOT_OWED.replace(":now", "CAST(strftime('%s', 'now') AS INTEGER)") + ";",
    # The held packets' expiry beside their index: a purge checks those whose subscriptions did not
    # change for expiry from the index alone, without reading their rows (each a whole packet).
    """
    DROP INDEX packets_held;
    CREATE INDEX packets_held ON packets (log_index, expires) WHERE raw IS NOT NULL AND released_at IS NULL;
    """,
]

#: Most packets one purge operation on the writer thread looks at (a few ms of it: bench/purge.py);
#: one bound parameter each, under SQLite's old limit of 999 per statement.
PURGE_CHUNK: Final = 500
#: Most held packets one purge operation checks for expiry alone (those whose subscriptions did not
#: change since the last pass): a plain comparison each, about as long as PURGE_CHUNK full checks.
EXPIRY_CHUNK: Final = 10_000
_COLS: Final = "log_index, packet_id, sender, signer, topic, header, accepted_at, expires, raw, leaf_hash"
_SCAN: Final = ("SELECT log_index FROM packet_recipients WHERE log_index > ? AND log_index <= ? AND nation = ? "
                "ORDER BY log_index LIMIT ?")
#: Most log indexes one scan from disk looks through (a subscriber catching up reads the recipients
#: table in index order, skipping other nations' packets: the work of one scan stays bounded).
_SPAN: Final = 4096
#: Recently appended packets kept in memory: live subscribers read them from here, not from disk.
RECENT: Final[int] = 8192
#: Page size of a new hub database. A packet row (a 2-20 KiB signed packet) fits in one 16 KiB page
#: instead of a 4 KiB page and a chain of overflow pages: measured, 8% less writer-thread CPU per
#: packet (30% for the INSERTs alone). An existing database keeps the page size it was created with.
PAGE_SIZE: Final[int] = 16384


#: Subscriptions per merged ack statement (3 parameters each in its longest clause): under
#: SQLite's old limit of 999 bound parameters, as hub.sqlrows keeps to.
_SUBS_PER_STATEMENT: Final = 150


@dataclass(frozen=True)
class _Append:
    items: list[NewPacket]
    now: int


@dataclass(frozen=True)
class _Ack:
    nation: str
    name: str
    indexes: list[int]
    cursor: int


_Op = _Append | _Ack | Callable[[sqlite3.Connection], Any]


def _row(r: tuple[Any, ...]) -> StoredPacket:
    return StoredPacket(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


@functools.lru_cache(maxsize=1024)
def _patterns(stored: str) -> tuple[str, ...]:
    return tuple(json.loads(stored))


def _topic_matches(stored_patterns: str, topic: str) -> bool:
    """SQL ``topic_matches(subscriptions.patterns, packets.topic)``: purge asks which subscriptions owe a packet."""
    return any_match_cached(_patterns(stored_patterns), topic)


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the hub's queries use (``topic_matches``)."""
    conn.create_function("topic_matches", 2, _topic_matches, deterministic=True)


#: SQLite's application_id of a hub database ("IHUB"): set on a new file, checked on every open.
APPLICATION_ID: Final = 0x49485542
#: Tables every hub database has had since its first schema (a file from before application_id).
_HUB_TABLES: Final = {"packets", "subscriptions", "acks", "blobs", "schema_migrations"}


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (as a URI: a file name with ? or # in it is still that file)."""
    return sqlite3.connect(read_only_uri(path), uri=True)


def check_database(path: Path) -> None:
    """Refuse, without writing to it, a file that is not a hub database: another program's SQLite
    database, a node's store, or no database at all. A missing or empty file is a new database."""
    if not path.parent.is_dir():
        raise StoreError(f"{path.parent}: directory for the hub database does not exist")
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise StoreError(f"{path}: not a file; give the hub database a file path")
    try:
        c = connect_read_only(path)
        try:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            c.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read it as an SQLite database ({exc}); give the hub its own file") from None
    if app_id == APPLICATION_ID or (app_id == 0 and (not tables or _HUB_TABLES <= tables)):
        return
    what = f"application_id {app_id:#x}" if app_id else f"tables {', '.join(sorted(tables)[:6])}"
    raise StoreError(f"{path}: not a hub database ({what}); give the hub its own file")


@dataclass(frozen=True)
class DatabaseState:
    """What a hub database holds, read without writing (see hub.server.owner)."""

    #: (kind, key) -> data of the blobs asked for that it holds
    blobs: dict[tuple[str, bytes], bytes]
    #: packets in its log
    leaves: int


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the hub database at ``path`` (None if there is none yet), refused
    as :func:`check_database` does or if its schema is newer than this intelhub's; an SQLite error
    while it is used becomes a StoreError naming the file."""
    check_database(path)
    if not path.is_file() or path.stat().st_size == 0:
        yield None
        return
    try:
        c = connect_read_only(path)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open it read-only ({exc})") from None
    try:
        register_functions(c)
        if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone():
            version = c.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
            if version > len(MIGRATIONS):
                raise StoreError(f"{path}: hub database is at schema version {version}, newer than this "
                                 f"intelhub ({len(MIGRATIONS)}); upgrade intelhub")
        yield c
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read it ({exc})") from None
    finally:
        c.close()


def inspect_database(path: Path, blobs: tuple[tuple[str, bytes], ...] = ()) -> DatabaseState:
    """The state of the hub database at ``path`` without writing to it (not even a WAL switch)."""
    with reading(path) as c:
        if c is None or not _HUB_TABLES <= {r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}:
            return DatabaseState({}, 0)
        found = {}
        for kind, key in blobs:
            row = c.execute("SELECT data FROM blobs WHERE kind = ? AND key = ?", (kind, key)).fetchone()
            if row is not None:
                found[(kind, key)] = bytes(row[0])
        last = c.execute("SELECT MAX(log_index) FROM packets").fetchone()[0]
        return DatabaseState(found, 0 if last is None else last + 1)


def _lock(path: Path) -> int:
    """Hold the database for this process: a second hub on the same file would hand out the same log
    indexes. An advisory lock on a file beside it, released by the kernel when the process ends."""
    try:
        fd = lockfile.hold(f"{path}.lock")
    except OSError as exc:
        raise StoreError(f"{path}: cannot lock it with {path}.lock ({exc.strerror or exc}); run as the "
                         "hub's user, with the database on a local file system") from None
    if fd is None:
        raise StoreError(f"{path}: in use by another hub process; stop it first (or give this hub its own "
                         "database)")
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: only a new, empty file takes it
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SQLiteStorage:
    def __init__(self, path: Path | str, *, batch_max: int = 512) -> None:
        self.path = Path(path)
        check_database(self.path)
        self._lock_fd = _lock(self.path)
        try:
            self._w = _connect(self.path)
            register_functions(self._w)
            migrate(self._w, MIGRATIONS, "hub")
            self._w.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._r = _connect(self.path)
        except (sqlite3.Error, StoreError) as exc:
            os.close(self._lock_fd)
            if isinstance(exc, StoreError):
                raise StoreError(f"{self.path}: {exc}") from None
            raise StoreError(f"{self.path}: cannot open the hub database ({exc})") from None
        self._batch_max = batch_max
        row = self._w.execute("SELECT MAX(log_index) FROM packets").fetchone()
        self._next_index = 0 if row[0] is None else row[0] + 1
        self._queue: queue.SimpleQueue[tuple[_Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="hub-sqlite-writer", daemon=True)
        self._thread.start()
        self._recent: OrderedDict[int, StoredPacket] = OrderedDict()
        self._uncommitted: list[tuple[StoredPacket, tuple[str, ...]]] = []
        # Which recent packets each nation receives (ascending log indexes), complete from index
        # _mem_from on: a live subscriber's scan is answered from memory, without a query on the
        # event loop. Lists are only appended to in place; trimming swaps in a new list, so a scan
        # holding the old one still reads a consistent (at worst shorter) view.
        self._by_nation: dict[str, list[int]] = {}
        self._mem_from = self._next_index
        #: The highest committed index whose packet is in ``_by_nation`` (or on disk below _mem_from).
        self._committed = self._next_index - 1
        self.on_commit: Callable[[float, int], None] | None = None
        # What the last completed release pass saw (see _release_plan): each subscription's
        # (cursor, acks above it), and the highest index it looked at. None: no pass yet.
        self._seen: dict[tuple[str, str], tuple[int, int]] | None = None
        self._seen_top = -1
        # A subscription was made or its patterns changed since the last pass began (writer thread).
        self._subs_changed = False
        self._purging = asyncio.Lock()

    # -- the writer thread --------------------------------------------------

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[_Op, asyncio.Future[Any]]]) -> None:
        start = time.perf_counter()
        saved_next = self._next_index
        results: list[Any] = [None] * len(batch)
        c = self._w
        try:
            c.execute("BEGIN IMMEDIATE")
            # Appends first, in queue order (so indexes are given out in order), then acks, then the
            # rest in order. No operation depends on another of the same batch being ahead of it: an
            # ack names a packet already committed, and subscribe, put_blob and purge read nothing an
            # append writes that they could miss (a purge never takes a packet accepted just now).
            appends = [(i, op) for i, (op, _) in enumerate(batch) if type(op) is _Append]
            if appends:
                for (i, _), result in zip(appends, self._append_all(c, [op for _, op in appends])):
                    results[i] = result
            acks = [op for op, _ in batch if type(op) is _Ack]
            if acks:
                self._ack_all(c, acks)
            for i, (op, _) in enumerate(batch):
                if type(op) is not _Append and type(op) is not _Ack:
                    results[i] = op(c)  # type: ignore[operator]
            c.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error, OSError, or a bug in an op: the batch fails whole
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._next_index = saved_next
            self._uncommitted.clear()
            error = StoreError(f"hub database refused the write ({exc}); nothing was accepted")
            batch[0][1].get_loop().call_soon_threadsafe(_fail, [fut for _, fut in batch], error)
            return
        elapsed = time.perf_counter() - start
        # Committed: into the cache the feeds read, before any future resolves (so no feed that wakes
        # up finds a committed packet missing from it), and never before (the cache holds nothing the
        # disk lacks). Single dict operations are atomic under the GIL.
        by_nation = self._by_nation
        for sp, nations in self._uncommitted:
            self._recent[sp.index] = sp
            for n in nations:
                lst = by_nation.get(n)
                if lst is None:
                    lst = by_nation[n] = []
                lst.append(sp.index)
            self._committed = sp.index  # after its lists: a scan reads this bound first
        self._uncommitted.clear()
        # Memory holds the last RECENT indexes, trimmed in steps rather than per packet. Bounded by
        # index, not by what the cache holds: purge takes packets from the cache, not from the lists.
        if self._committed + 1 - self._mem_from > RECENT + RECENT // 8:
            first = self._committed + 1 - RECENT
            recent = self._recent
            while recent and next(iter(recent)) < first:
                recent.popitem(last=False)
            self._mem_from = first  # raised before any list loses an index below it
            for n, lst in list(by_nation.items()):
                by_nation[n] = lst[bisect.bisect_left(lst, first):]
        if self.on_commit:
            self.on_commit(elapsed, len(batch))
        # One wake-up of the event loop per batch, not per operation.
        batch[0][1].get_loop().call_soon_threadsafe(_resolve, [(fut, r) for (_, fut), r in zip(batch, results)])

    def _append_all(self, c: sqlite3.Connection, ops: list[_Append]) -> list[list[Appended | Conflict]]:
        """Every append of a batch: one query for ids already held, then the new rows."""
        ids = list({p.packet_id: None for op in ops for p in op.items})
        # packet id -> (index, header, accepted_at) of the packet held under it, in the store or
        # earlier in this batch (a retry can arrive while its first copy waits in the queue).
        held: dict[bytes, tuple[int, bytes, int]] = {
            pid: (index, header, accepted_at) for pid, index, header, accepted_at in select_in(
                c, "SELECT packet_id, log_index, header, accepted_at FROM packets WHERE packet_id IN ({})", ids)}
        rows: list[tuple[Any, ...]] = []
        recipients: list[tuple[int, str]] = []
        out: list[list[Appended | Conflict]] = []
        for op in ops:
            now, results = op.now, []
            for p in op.items:
                prev = held.get(p.packet_id)
                if prev is not None:  # the same signed header is the same packet (ML-DSA signs randomly)
                    results.append(Appended(prev[0], prev[2], True) if prev[1] == p.header else Conflict(prev[0]))
                    continue
                index = self._next_index
                self._next_index = index + 1
                leaf = leaf_hash_for(p.header, now)
                held[p.packet_id] = (index, p.header, now)
                rows.append((index, p.packet_id, p.sender, p.signer, p.topic, p.created, p.expires, now,
                             p.header, leaf, p.raw))
                recipients.extend((index, n) for n in p.recipients)
                self._uncommitted.append((StoredPacket(index, p.packet_id, p.sender, p.signer, p.topic, p.header,
                                                       now, p.expires, p.raw, leaf), tuple(p.recipients)))
                results.append(Appended(index, now, False))
            out.append(results)
        # digest: no longer taken (an empty value), the column kept: the SHA-256 of each whole packet
        # was never read (a re-publish is matched by its signed header), and taking it cost a verify
        # thread a GIL hand-off per packet (bench/relay.py: 50-100 us of hub CPU per packet).
        insert_rows(c, "INSERT INTO packets (log_index, packet_id, digest, sender, signer, topic, created, expires, "
                       "accepted_at, header, leaf_hash, raw) VALUES (?,?,x'',?,?,?,?,?,?,?,?,?)", rows)
        insert_rows(c, "INSERT INTO packet_recipients VALUES (?,?)", recipients)
        return out

    def _ack_all(self, c: sqlite3.Connection, ops: list[_Ack]) -> None:
        """Every ack of a batch, merged per subscription: the highest cursor, the acks above it."""
        merged: dict[tuple[str, str], tuple[int, set[int]]] = {}
        for op in ops:
            cursor, indexes = merged.get((op.nation, op.name), (-1, set()))
            indexes.update(op.indexes)
            merged[(op.nation, op.name)] = (max(cursor, op.cursor), indexes)
        subs = list(merged.items())
        now = int(time.time())
        for i in range(0, len(subs), _SUBS_PER_STATEMENT):
            chunk = subs[i:i + _SUBS_PER_STATEMENT]
            cases = " ".join("WHEN nation = ? AND name = ? THEN ?" for _ in chunk)
            which = " OR ".join("(nation = ? AND name = ?)" for _ in chunk)
            # acked_at records acknowledgements only, not a feed moving its cursor past packets it
            # did not deliver (an ack without indexes): one statement when every entry is an ack.
            idle = [(n, name) for (n, name), (_, indexes) in chunk if not indexes]
            c.execute(f"UPDATE subscriptions SET cursor = MAX(cursor, CASE {cases} END)"
                      f"{'' if idle else ', acked_at = ?'} WHERE {which}",
                      [v for (n, name), (cur, _) in chunk for v in (n, name, cur)] + ([] if idle else [now])
                      + [v for (n, name), _ in chunk for v in (n, name)])
            acked = [(n, name) for (n, name), (_, indexes) in chunk if indexes]
            if idle and acked:
                c.execute("UPDATE subscriptions SET acked_at = ? WHERE " + " OR ".join("(nation = ? AND name = ?)"
                                                                                        for _ in acked),
                          [now] + [v for key in acked for v in key])
            c.execute("DELETE FROM acks WHERE " + " OR ".join("(nation = ? AND name = ? AND log_index <= ?)" for _ in chunk),
                      [v for (n, name), (cur, _) in chunk for v in (n, name, cur)])
        above = [(n, name, i) for (n, name), (cur, indexes) in subs for i in sorted(indexes) if i > cur]
        insert_rows(c, "INSERT OR IGNORE INTO acks VALUES (?,?,?)", above)

    async def _submit(self, op: _Op) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put((op, fut))
        return await fut

    # -- Storage ----------------------------------------------------------------

    async def append(self, items: list[NewPacket], now: int) -> list[Appended | Conflict]:
        result: list[Appended | Conflict] = await self._submit(_Append(items, now))
        return result

    async def subscribe(self, nation: str, name: str, patterns: tuple[str, ...],
                        now: int | None = None) -> Subscription:
        """Create a subscription, or change its patterns; ``now`` (default: the clock) tells which
        released packets it may still be owed (those not expired)."""
        when = int(time.time()) if now is None else now

        def op(c: sqlite3.Connection) -> Subscription:
            row = c.execute("SELECT patterns, cursor FROM subscriptions WHERE nation = ? AND name = ?",
                            (nation, name)).fetchone()
            if row is None:
                # Acks a removed subscription of this name may have left (one in flight as it went).
                c.execute("DELETE FROM acks WHERE nation = ? AND name = ?", (nation, name))
                c.execute("INSERT INTO subscriptions (nation, name, patterns, cursor, created) VALUES (?, ?, ?, -1, ?)",
                          (nation, name, json.dumps(list(patterns)), int(time.time())))
                cursor = -1
                _hold_again(c, nation, cursor, patterns, when)
                self._subs_changed = True
            else:
                cursor = row[1]
                if json.loads(row[0]) != list(patterns):
                    c.execute("UPDATE subscriptions SET patterns = ? WHERE nation = ? AND name = ?",
                              (json.dumps(list(patterns)), nation, name))
                    _hold_again(c, nation, cursor, patterns, when)
                    self._subs_changed = True
            acked = frozenset(r[0] for r in c.execute(
                "SELECT log_index FROM acks WHERE nation = ? AND name = ? AND log_index > ?", (nation, name, cursor)))
            return Subscription(nation, name, patterns, cursor, acked)

        sub: Subscription = await self._submit(op)
        return sub

    async def ack(self, nation: str, name: str, indexes: list[int], cursor: int) -> None:
        """Persist a subscription's cursor and its acknowledgements above it (coalesced by the caller,
        and with the other acks of the same group commit here)."""
        await self._submit(_Ack(nation, name, indexes, cursor))

    async def unsubscribe(self, nation: str, name: str) -> bool:
        """Forget a subscription, its cursor and its acks; whether it existed. The packets it was
        owed are then kept only for the nation's other subscriptions (see :meth:`purge`)."""
        def op(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM acks WHERE nation = ? AND name = ?", (nation, name))
            return c.execute("DELETE FROM subscriptions WHERE nation = ? AND name = ?", (nation, name)).rowcount > 0

        existed: bool = await self._submit(op)
        return existed

    def subscription_names(self, nation: str) -> list[str]:
        return [r[0] for r in self._r.execute("SELECT name FROM subscriptions WHERE nation = ? ORDER BY name", (nation,))]

    def scan(self, nation: str, after: int, limit: int) -> Scan:
        # The committed bound first, then the list, then the memory bound: the writer appends to the
        # lists before it raises the committed bound, and raises the memory bound before it trims,
        # so the list read here holds every index of the nation from the memory bound up to the
        # committed bound (read the other way round, a trim or an append in between could hide packets).
        if limit < 1:
            return Scan([], after, False)
        committed = self._committed
        lst = self._by_nation.get(nation, [])
        in_memory = after + 1 >= self._mem_from  # everything this scan can return is in memory
        if in_memory:
            start = bisect.bisect_right(lst, after)
            indexes = lst[start:start + limit]
        else:
            hi = min(after + _SPAN, committed)
            indexes = [r[0] for r in self._r.execute(_SCAN, (after, hi, nation, limit))]
        if len(indexes) == limit:
            upto, end = indexes[-1], False
        elif in_memory:  # the list may have grown since the bound was read: its indexes are committed too
            upto, end = max(committed, indexes[-1] if indexes else after), True
        else:
            upto, end = hi, hi == committed
        recent = self._recent
        out = [recent.get(i) for i in indexes]
        if None in out:
            missing = [i for i, p in zip(indexes, out) if p is None]
            found = {r[0]: StoredPacket(*r) for r in self._r.execute(
                f"SELECT {_COLS} FROM packets WHERE log_index IN ({','.join('?' * len(missing))})", missing)}
            out = [p if p is not None else found.get(i) for i, p in zip(indexes, out)]
        return Scan([p for p in out if p is not None], max(upto, after), end)

    def read_range(self, start: int, stop: int) -> list[StoredPacket]:
        rows = self._r.execute(
            f"SELECT {_COLS} FROM packets WHERE log_index >= ? AND log_index < ? ORDER BY log_index", (start, stop)
        ).fetchall()
        return [_row(r) for r in rows]

    def read_leaves(self, start: int, stop: int) -> list[tuple[int, bytes, int]]:
        """(log index, header, accepted_at) of [start, stop): the log's leaves, without packet bodies."""
        return self._r.execute("SELECT log_index, header, accepted_at FROM packets WHERE log_index >= ? "
                               "AND log_index < ? ORDER BY log_index", (start, stop)).fetchall()

    def get(self, packet_id: bytes) -> StoredPacket | None:
        r = self._r.execute(f"SELECT {_COLS} FROM packets WHERE packet_id = ?", (packet_id,)).fetchone()
        return _row(r) if r else None

    def size(self) -> int:
        return self._next_index

    def leaf_hashes(self) -> list[bytes]:
        return [r[0] for r in self._r.execute("SELECT leaf_hash FROM packets ORDER BY log_index")]

    def recipients(self, index: int) -> list[str]:
        return [r[0] for r in self._r.execute("SELECT nation FROM packet_recipients WHERE log_index = ?", (index,))]

    async def put_blob(self, kind: str, key: bytes, data: bytes) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", (kind, key, data, int(time.time())))

        await self._submit(op)

    def blobs(self, kind: str) -> list[tuple[bytes, bytes]]:
        return [(r[0], r[1]) for r in self._r.execute("SELECT key, data FROM blobs WHERE kind = ? ORDER BY added, key", (kind,))]

    async def purge(self, now: int, retention: int) -> int:
        """Drop the bodies of packets released more than ``retention`` seconds ago.

        A packet is released when nobody is owed it any more: it expired, or every subscription
        of every recipient nation whose patterns match its topic acknowledged it (a recipient
        nation with no subscription yet is still owed it). Each purge marks the packets released
        since the last one (so retention counts from at most one purge interval after the last
        acknowledgement), then drops the bodies released before the cutoff that nobody is owed
        again meanwhile (a subscription made since starts from the oldest body held).

        A held packet is looked at in full only if a subscription that could have been owed it
        changed since the last pass (see :meth:`_release_plan`), or it is new since; the others are
        only checked for expiry. So packets owed for weeks to a subscription nobody uses cost a
        plain comparison each per pass, not the subscription queries (bench/purge.py).

        In writer operations of at most PURGE_CHUNK packets each: commits of new packets go in
        between, so a large backlog (say, a million packets owed to a subscription nobody uses)
        delays an ACCEPTED by one chunk's few milliseconds, not by the whole pass."""
        cutoff = now - retention
        async with self._purging:  # one pass at a time: each starts from what the last one saw
            try:
                full_from, seen = await self._submit(self._release_plan)
                pos: int | tuple[int] = -1
                while not isinstance(pos, tuple):
                    pos = await self._submit(functools.partial(self._release_chunk, now, pos, full_from))
            except BaseException:
                self._seen = None  # a pass cut short: the next one looks at everything in full
                raise
            self._seen, self._seen_top = seen, pos[0]
        purged = 0
        while True:
            read, dropped = await self._submit(functools.partial(self._drop_chunk, now, cutoff))
            purged += dropped
            if not read:
                return purged

    def _release_plan(self, c: sqlite3.Connection) -> tuple[int, dict[tuple[str, str], tuple[int, int]]]:
        """The lowest log index a release pass must look at in full, and what it sees now.

        A packet held at the last pass was owed then to some subscription (or to a recipient
        nation with none). It can only be owed to nobody now if that subscription changed since:
        its cursor moved, it acknowledged packets above it, or it went; it is owed nothing at or
        below the lower of its cursors. Or if it expired, which is checked for every held packet.
        A subscription made or re-patterned since (rare) means a pass in full: it may be the
        nation's first, it held packets again that it may have acknowledged since, and patterns
        changed and changed back leave no trace in what is compared."""
        # Acks above the cursor only: with the cursor still, they are only ever added to (rows at or
        # below it, which a late ack can leave, go when one comes in; counting them would hide it).
        acks = {(n, name): k for n, name, k in c.execute(
            "SELECT a.nation, a.name, COUNT(*) FROM acks a JOIN subscriptions s ON s.nation = a.nation AND "
            "s.name = a.name WHERE a.log_index > s.cursor GROUP BY a.nation, a.name")}
        now = {(n, name): (cursor, acks.get((n, name), 0))
               for n, name, cursor in c.execute("SELECT nation, name, cursor FROM subscriptions")}
        before, changed, self._subs_changed = self._seen, self._subs_changed, False
        if before is None or changed:
            return 0, now
        lowest = self._seen_top + 1
        for key, old in before.items():
            if now.get(key) != old:  # the cursor only rises (a subscription made anew is a change above)
                lowest = min(lowest, old[0] + 1)
        return max(lowest, 0), now

    def _release_chunk(self, now: int, after: int, full_from: int, c: sqlite3.Connection) -> int | tuple[int]:
        """Mark released the held packets among the next PURGE_CHUNK after index ``after`` that
        nobody is owed (below ``full_from``, the next EXPIRY_CHUNK that expired); the last index
        looked at, or (the highest index of the store,) when there are no more."""
        expiry_only = after + 1 < full_from
        [[hi]] = c.execute("SELECT MAX(log_index) FROM (SELECT log_index FROM packets WHERE raw IS NOT NULL "
                           "AND released_at IS NULL AND log_index > ? AND log_index < ? ORDER BY log_index LIMIT ?)",
                           (after, full_from if expiry_only else 1 << 62, EXPIRY_CHUNK if expiry_only else PURGE_CHUNK))
        if hi is None:
            # Appends of this batch ran before this operation: every index below _next_index is looked at.
            return full_from - 1 if expiry_only else (self._next_index - 1,)
        args = {"now": now, "after": after, "hi": hi}
        if expiry_only:  # from the index (log_index, expires), not the rows
            c.execute("UPDATE packets SET released_at = :now WHERE log_index IN (SELECT log_index FROM packets "
                      "WHERE raw IS NOT NULL AND released_at IS NULL AND log_index > :after AND log_index <= :hi "
                      "AND expires <= :now)", args)
        else:
            c.execute(f"UPDATE packets SET released_at = :now WHERE log_index > :after AND log_index <= :hi "
                      f"AND raw IS NOT NULL AND released_at IS NULL AND {_NOT_OWED}", args)
        return int(hi)

    def _drop_chunk(self, now: int, cutoff: int, c: sqlite3.Connection) -> tuple[int, int]:
        """Of up to PURGE_CHUNK packets released at or before ``cutoff``: drop the bodies nobody is
        owed, and put back among the held those owed again (a subscription's patterns widened), so
        the next chunk reads new rows and they are released again, their retention counted anew.
        (Rows read: 0 when none are left; bodies dropped.)"""
        ids = [r[0] for r in c.execute(
            "SELECT log_index FROM packets WHERE raw IS NOT NULL AND released_at IS NOT NULL AND released_at <= ? "
            "LIMIT ?", (cutoff, PURGE_CHUNK))]
        if not ids:
            return 0, 0
        # Named parameters throughout (_NOT_OWED's :now); no RETURNING or json_each: SQLite before 3.35.
        params: dict[str, int] = {f"i{k}": v for k, v in enumerate(ids)}
        chunk = f"log_index IN ({','.join(':' + k for k in params)})"
        purged = [r[0] for r in c.execute(f"SELECT log_index FROM packets WHERE {chunk} AND {_NOT_OWED}",
                                          {**params, "now": now})]
        if purged:
            c.execute(f"UPDATE packets SET raw = NULL WHERE log_index IN ({','.join('?' * len(purged))})", purged)
        c.execute(f"UPDATE packets SET released_at = NULL WHERE {chunk} AND raw IS NOT NULL", params)
        # On this thread, the only one that changes the cache (a scan that still finds a purged
        # packet in it before the commit reads what the disk holds until then).
        for index in purged:
            self._recent.pop(index, None)
        return len(ids), len(purged)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._w.close()
        self._r.close()
        os.close(self._lock_fd)


def _hold_again(c: sqlite3.Connection, nation: str, cursor: int, patterns: tuple[str, ...], now: int) -> None:
    """A subscription of ``nation`` that starts (or changed its patterns) at ``cursor`` is owed the
    released packets above it that its patterns match and that have not expired: they are held
    again, and released (their retention counted anew) once it has acknowledged them. Rare, and
    bounded by the bodies still held."""
    c.execute("UPDATE packets SET released_at = NULL WHERE raw IS NOT NULL AND released_at IS NOT NULL "
              "AND log_index > ? AND expires > ? AND topic_matches(?, topic) AND EXISTS (SELECT 1 FROM "
              "packet_recipients r WHERE r.log_index = packets.log_index AND r.nation = ?)",
              (cursor, now, json.dumps(list(patterns)), nation))


def _resolve(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, value in pairs:
        if not fut.done():
            fut.set_result(value)


def _fail(futs: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(exc)
