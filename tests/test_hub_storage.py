"""The hub's SQLite storage on its own: scans served from memory agree with the database."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hub.migrations import migrate
from hub.server import sqlite_store
from hub.server.sqlite_store import SQLiteStorage
from hub.server.storage import Appended, Conflict, NewPacket

NATIONS = ("CA", "DE", "FR", "GB", "IT", "JP", "US")


def packet(i: int, rng: random.Random) -> NewPacket:
    to = tuple(sorted(rng.sample(NATIONS, rng.randint(1, 4))))
    header = b"header-%d" % i
    return NewPacket(os.urandom(16), "IT", b"c" * 32, "alerts.x", to, 1_764_000_000, 1_764_999_999, header,
                     header + b"-raw")


def sql_scan(db: Path, nation: str, after: int, limit: int) -> list[int]:
    """The nation's next ``limit`` packets after ``after``, by a plain query with no span bound."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT log_index FROM packet_recipients WHERE nation = ? AND log_index > ? "
                                           "ORDER BY log_index LIMIT ?", (nation, after, limit))]
    finally:
        conn.close()


def checked_scan(st: SQLiteStorage, db: Path, nation: str, after: int, limit: int) -> list[int]:
    """``st.scan``, held to its contract against the database; the indexes it returned."""
    found = st.scan(nation, after, limit)
    got = [p.index for p in found.packets]
    want = sql_scan(db, nation, after, limit)
    ctx = (nation, after, limit, found.upto, found.end, st._mem_from)
    assert found.upto >= after, ctx
    # Never past what is committed: a packet committed later at an index it claimed would be skipped.
    assert found.upto <= max(after, st.size() - 1), ctx
    assert got == [i for i in want if i <= found.upto], ctx  # every packet up to where it looked
    if found.end:
        assert got == want and found.upto >= st.size() - 1, ctx
    elif len(got) < limit:  # stopped short only at the end of a span read from disk
        assert found.upto - after == sqlite_store._SPAN, ctx
    return got


async def test_scans_from_memory_equal_scans_of_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "RECENT", 64)  # so the memory index is trimmed many times
    rng = random.Random(7)
    db = tmp_path / "hub.db"
    st = SQLiteStorage(db)
    try:
        for b in range(40):
            results = await st.append([packet(b * 10 + i, rng) for i in range(10)], 1_764_000_100)
            assert all(isinstance(r, Appended) and not r.duplicate for r in results)
            for _ in range(20):
                nation, after, limit = rng.choice(NATIONS), rng.randint(-1, st.size()), rng.randint(1, 50)
                checked_scan(st, db, nation, after, limit)
        assert st._mem_from > 300, "the memory index was never trimmed: the test would not test it"
    finally:
        await st.close()


async def test_a_subscriber_far_behind_moves_through_other_nations_packets_in_bounded_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "RECENT", 16)
    monkeypatch.setattr(sqlite_store, "_SPAN", 8)
    rng = random.Random(12)
    db = tmp_path / "hub.db"
    st = SQLiteStorage(db)
    try:
        items = [packet(i, rng) for i in range(200)]
        # JP is a recipient of every 50th packet only, and of none of the others.
        items = [NewPacket(p.packet_id, p.sender, p.signer, p.topic,
                           ("JP",) if i % 50 == 7 else tuple(n for n in p.recipients if n != "JP") or ("FR",),
                           p.created, p.expires, p.header, p.raw) for i, p in enumerate(items)]
        for b in range(0, 200, 20):
            await st.append(items[b:b + 20], 1_764_000_100)
        assert st._mem_from > 150, "the early packets must be read from disk"
        seen, after, scans = [], -1, 0
        while scans < 100:
            scans += 1
            got = checked_scan(st, db, "JP", after, 10)
            seen += got
            found = st.scan("JP", after, 10)
            if found.end:
                break
            assert found.upto > after  # each step makes progress
            after = found.upto
        assert seen == [7, 57, 107, 157]
        empty = st.scan("JP", 3, 0)
        assert (empty.packets, empty.upto, empty.end) == ([], 3, False)
        assert scans <= 200 // 8 + 2, scans
    finally:
        await st.close()


async def test_a_database_of_the_first_schema_keeps_its_recipients(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, sqlite_store.MIGRATIONS[:1], "hub")
    for i, to in enumerate((("FR", "IT"), ("JP",), ("DE", "FR"))):
        conn.execute("INSERT INTO packets VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (i, b"%016d" % i, b"d" * 32, "IT", b"c" * 32, "alerts.x", 1, 2_000_000_000, 3, b"h%d" % i,
                      b"l" * 32, b"r%d" % i))
        conn.executemany("INSERT INTO packet_recipients (nation, log_index) VALUES (?, ?)", [(n, i) for n in to])
    conn.close()
    st = SQLiteStorage(db)
    try:
        assert [p.index for p in st.scan("FR", -1, 10).packets] == [0, 2]
        assert [p.index for p in st.scan("JP", -1, 10).packets] == [1]
        assert st.recipients(2) == ["DE", "FR"]
        [more] = await st.append([packet(3, random.Random(13))], 1_764_000_100)
        assert isinstance(more, Appended) and more.index == 3
    finally:
        await st.close()


async def appended_and_closed(db: Path, n: int, rng: random.Random) -> None:
    st = SQLiteStorage(db)
    await st.append([packet(i, rng) for i in range(n)], 1_764_000_100)
    await st.close()


async def test_a_reopened_store_scans_what_it_held(tmp_path: Path) -> None:
    rng = random.Random(8)
    db = tmp_path / "hub.db"
    await appended_and_closed(db, 30, rng)
    st = SQLiteStorage(db)
    try:
        for nation in NATIONS:
            assert checked_scan(st, db, nation, -1, 100) == sql_scan(db, nation, -1, 100)
        more = await st.append([packet(100 + i, rng) for i in range(5)], 1_764_000_200)
        for nation in NATIONS:
            assert checked_scan(st, db, nation, -1, 100) == sql_scan(db, nation, -1, 100)
            assert checked_scan(st, db, nation, 29, 100) == sql_scan(db, nation, 29, 100)
        assert [r.index for r in more if isinstance(r, Appended)] == [30, 31, 32, 33, 34]
    finally:
        await st.close()


async def test_the_same_header_is_a_retry_and_another_is_a_conflict(tmp_path: Path) -> None:
    rng = random.Random(9)
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        p = packet(1, rng)
        [first] = await st.append([p], 1_764_000_100)
        # Re-signed (ML-DSA signatures differ each time): other bytes, same signed header.
        resigned = NewPacket(p.packet_id, p.sender, p.signer, p.topic, p.recipients, p.created, p.expires, p.header,
                             p.raw + b"-other-signature")
        other = NewPacket(p.packet_id, p.sender, p.signer, p.topic, p.recipients, p.created, p.expires,
                          b"another header", b"x")
        again, conflict = await st.append([resigned, other], 1_764_000_200)
        assert isinstance(first, Appended) and isinstance(again, Appended)
        assert (again.index, again.duplicate, again.accepted_at) == (first.index, True, first.accepted_at)
        assert isinstance(conflict, Conflict) and conflict.index == first.index
    finally:
        await st.close()


def page_size(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


async def test_a_new_database_has_pages_a_packet_fits_in_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    rng = random.Random(10)
    new = tmp_path / "new.db"
    await appended_and_closed(new, 3, rng)
    assert page_size(new) == sqlite_store.PAGE_SIZE == 16384
    # A database created by an earlier version, with SQLite's default 4 KiB pages, in WAL mode.
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    st = SQLiteStorage(old)
    try:
        results = await st.append([packet(10 + i, rng) for i in range(3)], 1_764_000_100)
        assert [r.index for r in results if isinstance(r, Appended)] == [0, 1, 2]
    finally:
        await st.close()
    assert page_size(old) == 4096


async def _held_batch(st: SQLiteStorage, ops: list[Any]) -> list[Any]:
    """Run ``ops`` (coroutines on ``st``) as one group commit: the writer is held on another
    operation until all of them are queued behind it."""
    entered, release = threading.Event(), threading.Event()

    def hold(_c: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    holder = asyncio.ensure_future(st._submit(hold))
    assert await asyncio.to_thread(entered.wait, 10)
    tasks = [asyncio.ensure_future(op) for op in ops]
    await asyncio.sleep(0.05)  # every task has queued its operation
    release.set()
    await holder
    return await asyncio.gather(*tasks)


def _dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
                for t, order in (("packets", "1"), ("packet_recipients", "1, 2"), ("acks", "1, 2, 3"))} | {
            "subscriptions": conn.execute("SELECT nation, name, cursor FROM subscriptions ORDER BY 1, 2").fetchall()}
    finally:
        conn.close()


async def test_a_group_commit_of_any_size_takes_a_few_statements(tmp_path: Path) -> None:
    # Python's sqlite3 gives up the GIL on every step of a statement: a statement per row made the
    # writer wait for the GIL hundreds of times per batch while the event loop was busy.
    rng = random.Random(11)
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        for n in NATIONS:
            await st.subscribe(n, "main", ("alerts.>",))
        await st.append([packet(i, rng) for i in range(20)], 1_764_000_100)
        statements: list[str] = []
        st._w.set_trace_callback(statements.append)
        appends = [st.append([packet(100 + i, rng)], 1_764_000_200) for i in range(150)]
        acks = [st.ack(n, "main", [i], i) for n in NATIONS for i in range(0, 20, 5)]
        results = await _held_batch(st, appends + acks)
        assert [r[0].index for r in results[:150]] == list(range(20, 170))
        batch = statements[statements.index("BEGIN IMMEDIATE", 1):]
        # BEGIN, the id query, 2 packet INSERTs (83 rows each), 3 recipient INSERTs, UPDATE, DELETE, COMMIT
        assert len(batch) <= 12, batch
        assert {n: c for n, _, c in _dump(tmp_path / "hub.db")["subscriptions"]} == {n: 15 for n in NATIONS}
    finally:
        st._w.set_trace_callback(None)
        await st.close()


async def test_a_coalesced_group_commit_writes_what_one_operation_at_a_time_writes(tmp_path: Path) -> None:
    # Retries and conflicts inside one batch, acks of several subscriptions in and out of order
    # (some above the cursor, some below an earlier one's), a subscribe and a blob among them.
    def script(rng: random.Random) -> list[tuple[str, Any]]:
        fresh = [packet(i, rng) for i in range(40)]
        ops: list[tuple[str, Any]] = []
        for i, p in enumerate(fresh):
            ops.append(("append", [p]))
            if i % 7 == 3:  # a retry of an earlier packet, and another packet under its id
                old = fresh[i - 2]
                ops.append(("append", [old]))
                ops.append(("append", [NewPacket(old.packet_id, "IT", b"c" * 32, "alerts.x", ("FR",), 1_764_000_000,
                                                 1_764_999_999, b"other", b"other-raw")]))
        for n in NATIONS:
            ops.append(("ack", (n, [3, 9, 4], 4)))
            ops.append(("ack", (n, [12, 30], 2)))  # a lower cursor after a higher one
        ops.append(("subscribe", ("CA", "late")))
        ops.append(("blob", b"k"))
        return ops

    ops = script(random.Random(12))  # packet ids are random: one script for both runs

    async def run(db: Path, together: bool) -> list[Any]:
        st = SQLiteStorage(db)
        try:
            for n in NATIONS:
                await st.subscribe(n, "main", ("alerts.>",))
            coros: list[Coroutine[Any, Any, Any]] = []
            for kind, arg in ops:
                if kind == "append":
                    coros.append(st.append(arg, 1_764_000_100))
                elif kind == "ack":
                    coros.append(st.ack(arg[0], "main", arg[1], arg[2]))
                elif kind == "subscribe":
                    coros.append(st.subscribe(arg[0], arg[1], ("x",)))
                else:
                    coros.append(st.put_blob("cert", arg, b"data"))
            if together:
                return await _held_batch(st, coros)
            return [await c for c in coros]
        finally:
            await st.close()

    one_by_one = await run(tmp_path / "a.db", together=False)
    coalesced = await run(tmp_path / "b.db", together=True)
    assert coalesced == one_by_one
    assert any(isinstance(r, list) and isinstance(r[0], Conflict) for r in coalesced)
    assert any(isinstance(r, list) and isinstance(r[0], Appended) and r[0].duplicate for r in coalesced)
    a, b = _dump(tmp_path / "a.db"), _dump(tmp_path / "b.db")
    assert a == b
    assert a["acks"] and {c for _, _, c in a["subscriptions"]} == {4, -1}


# -- purge: a packet body is dropped only once nobody is owed it ------------------------------------------

ACCEPTED = 1_764_000_100  # when the purge tests' packets are accepted


@pytest.fixture(name="st")
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """A store of its own, closed after the test."""
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        yield st
    finally:
        await st.close()


def addressed(i: int, to: tuple[str, ...], topic: str = "alerts.x", expires: int = 1_764_999_999) -> NewPacket:
    header = b"header-%d" % i
    return NewPacket(os.urandom(16), "IT", b"c" * 32, topic, to, 1_764_000_000, expires, header,
                     header + b"-raw")


async def appended(st: SQLiteStorage, items: list[NewPacket]) -> list[int]:
    results = await st.append(items, ACCEPTED)
    assert all(isinstance(r, Appended) and not r.duplicate for r in results)
    return [r.index for r in results]


def bodies(st: SQLiteStorage, nation: str) -> dict[int, bytes | None]:
    """The nation's packets and their bodies, as a scan sees them; read_range and get see the same."""
    found = st.scan(nation, -1, 100)
    assert found.end
    out = {p.index: p.raw for p in found.packets}
    for p in found.packets:
        [row] = st.read_range(p.index, p.index + 1)
        held = st.get(p.packet_id)
        assert held is not None and row.raw == held.raw == p.raw, p.index
    return out


def raw_of(i: int) -> bytes:
    return b"header-%d-raw" % i


async def test_purge_waits_for_every_subscription_of_a_recipient_its_topic_matches(st: SQLiteStorage) -> None:
    await st.subscribe("FR", "alerts", ("alerts.>",))
    assert await appended(st, [addressed(0, ("FR",)), addressed(1, ("FR",))]) == [0, 1]
    # Subscribed after the packets were accepted: it starts below them, so it is owed them too
    # (an archiving node of FR, say, offline right now).
    await st.subscribe("FR", "archive", (">",))
    await st.ack("FR", "alerts", [], 1)  # FR's first subscription took both
    await st.ack("FR", "archive", [1], -1)  # the second acknowledged index 1 only (above its cursor)
    assert await st.purge(ACCEPTED + 100, 0) == 1, "purged a packet FR/archive never acknowledged"
    assert bodies(st, "FR") == {0: raw_of(0), 1: None}
    await st.ack("FR", "archive", [], 0)  # its cursor reaches index 0
    assert await st.purge(ACCEPTED + 100, 0) == 1
    assert bodies(st, "FR") == {0: None, 1: None}
    assert await st.purge(ACCEPTED + 100, 0) == 0


async def test_purge_holds_a_packet_only_for_subscriptions_its_topic_matches(st: SQLiteStorage) -> None:
    await st.subscribe("FR", "alerts", ("alerts.>",))
    await st.subscribe("FR", "reports", ("reports.>",))
    await st.subscribe("IT", "all", (">",))  # not a recipient: never owed FR's packets
    assert await appended(st, [addressed(0, ("FR",), "alerts.x"), addressed(1, ("FR",), "reports.y")]) == [0, 1]
    # FR/alerts' cursor passes both (the feed skips what its patterns do not match); FR/reports
    # and IT/all acknowledge nothing.
    await st.ack("FR", "alerts", [0], 1)
    assert await st.purge(ACCEPTED + 100, 0) == 1
    # alerts.x was owed to FR/alerts only; reports.y is still owed to FR/reports, whose patterns
    # match it (FR/alerts' cursor passing it says nothing: it was never FR/alerts' to take).
    assert bodies(st, "FR") == {0: None, 1: raw_of(1)}
    await st.ack("FR", "reports", [1], -1)
    assert await st.purge(ACCEPTED + 100, 0) == 1
    assert bodies(st, "FR") == {0: None, 1: None}


async def test_purge_owes_a_recipient_nation_without_a_subscription_until_the_packet_expires(tmp_path: Path) -> None:
    expires = ACCEPTED + 1000
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        await st.subscribe("FR", "main", (">",))
        assert await appended(st, [addressed(0, ("DE", "FR"), expires=expires)]) == [0]
        await st.ack("FR", "main", [], 0)
        # DE has not subscribed yet (its node was never connected): it would be delivered the packet.
        assert await st.purge(ACCEPTED + 100, 0) == 0
        assert await st.purge(expires - 1, 0) == 0
        assert bodies(st, "DE") == {0: raw_of(0)}
        assert await st.purge(expires, 0) == 1  # at its expiry nobody is delivered it any more
        assert bodies(st, "DE") == bodies(st, "FR") == {0: None}
    finally:
        await st.close()


async def test_purge_keeps_a_body_the_retention_period_from_when_nobody_is_owed_it(st: SQLiteStorage) -> None:
    """Retention counts from the last acknowledgement (or the expiry), as seen by a purge: a packet
    acknowledged after a retention period from its acceptance is still kept a whole one."""
    await st.subscribe("FR", "main", (">",))
    # 0: acknowledged at once; 1: never, expires 50 s after its acceptance; 2: expires after 5 s;
    # 3: acknowledged 100 s after its acceptance.
    assert await appended(st, [addressed(0, ("FR",)), addressed(1, ("FR",), expires=ACCEPTED + 50),
                               addressed(2, ("FR",), expires=ACCEPTED + 5), addressed(3, ("FR",))]) == [0, 1, 2, 3]
    await st.ack("FR", "main", [0], -1)
    assert await st.purge(ACCEPTED, 10) == 0  # 0 released now
    assert await st.purge(ACCEPTED + 8, 10) == 0  # 2 expired (released) now
    assert await st.purge(ACCEPTED + 10, 10) == 1  # 0, ten seconds after its release
    assert bodies(st, "FR") == {0: None, 1: raw_of(1), 2: raw_of(2), 3: raw_of(3)}
    assert await st.purge(ACCEPTED + 17, 10) == 0
    assert await st.purge(ACCEPTED + 18, 10) == 1  # 2
    await st.ack("FR", "main", [3], 0)
    assert await st.purge(ACCEPTED + 100, 10) == 0  # 3 released now: kept, though accepted 100 s ago
    assert bodies(st, "FR") == {0: None, 1: raw_of(1), 2: None, 3: raw_of(3)}
    assert await st.purge(ACCEPTED + 109, 10) == 0
    assert await st.purge(ACCEPTED + 110, 10) == 2  # 3, and 1 (expired at +50, released then)
    assert bodies(st, "FR") == {0: None, 1: None, 2: None, 3: None}


async def test_a_released_body_owed_again_to_a_new_subscription_is_kept_for_it(st: SQLiteStorage) -> None:
    """Held again, and kept the retention period from when the new subscription acknowledged it."""
    await st.subscribe("FR", "main", (">",))
    assert await appended(st, [addressed(0, ("FR",))]) == [0]
    await st.ack("FR", "main", [0], -1)
    assert await st.purge(ACCEPTED, 10) == 0  # released
    await st.subscribe("FR", "archive", (">",))  # starts below it: owed it
    assert await st.purge(ACCEPTED + 60, 10) == 0
    assert bodies(st, "FR") == {0: raw_of(0)}
    await st.ack("FR", "archive", [], 0)
    assert await st.purge(ACCEPTED + 61, 10) == 0  # released again now
    assert await st.purge(ACCEPTED + 70, 10) == 0
    assert await st.purge(ACCEPTED + 71, 10) == 1


async def test_released_bodies_owed_again_are_held_again_a_chunk_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FR removes its only subscription: a nation with none is owed everything addressed to it
    again. The drop pass puts those released bodies back among the held (reading each once, not
    every chunk), and drops the others."""
    from hub.server import sqlite_store

    monkeypatch.setattr(sqlite_store, "PURGE_CHUNK", 2)
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        await st.subscribe("FR", "main", (">",))
        await st.subscribe("DE", "main", (">",))
        to = [("FR",), ("DE",), ("FR",), ("DE",), ("FR",)]
        assert await appended(st, [addressed(i, t) for i, t in enumerate(to)]) == list(range(5))
        await st.ack("FR", "main", [], 4)
        await st.ack("DE", "main", [], 4)
        assert await st.purge(ACCEPTED, 10) == 0  # all released
        assert await st.unsubscribe("FR", "main")
        assert await st.purge(ACCEPTED + 10, 10) == 2  # DE's two; FR's three are held again
        assert bodies(st, "FR") == {0: raw_of(0), 2: raw_of(2), 4: raw_of(4)}
        rows = sqlite3.connect(tmp_path / "hub.db").execute(
            "SELECT log_index, released_at FROM packets WHERE raw IS NOT NULL").fetchall()
        assert rows == [(0, None), (2, None), (4, None)]
    finally:
        await st.close()


async def test_memory_index_stays_bounded_while_purges_empty_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Purges take packets out of the cache of recent packets; the per-nation index lists and the
    # memory bound must still be trimmed (they were trimmed by the size of the cache: never, here).
    recent = 16
    monkeypatch.setattr(sqlite_store, "RECENT", recent)
    rng = random.Random(14)
    db = tmp_path / "hub.db"
    st = SQLiteStorage(db)
    try:
        for n in NATIONS:
            await st.subscribe(n, "main", (">",))
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for b in range(40):  # 200 packets, 12 times RECENT
                now = ACCEPTED + b * 10
                results = await st.append([packet(b * 5 + i, rng) for i in range(5)], now)
                last = max(r.index for r in results)
                for n in NATIONS:
                    await st.ack(n, "main", [], last)
                purged = await st.purge(now + 1, 0)  # retention short against the traffic
                assert purged == 5 and not st._recent, (b, purged, len(st._recent))
                for n, lst in st._by_nation.items():
                    assert len(lst) <= recent + recent // 8, (b, n, len(lst))
                    assert not lst or lst[0] >= st._mem_from, (b, n, lst, st._mem_from)
                span = st._committed + 1 - st._mem_from  # what memory answers for, the lists' bound
                assert span <= recent + recent // 8, (b, span)
                for _ in range(10):
                    nation, after, limit = rng.choice(NATIONS), rng.randint(-1, st.size()), rng.randint(1, 30)
                    checked_scan(st, db, nation, after, limit)
                # What a scan returns is what the disk holds, bodies included (all purged here).
                found = st.scan(rng.choice(NATIONS), max(-1, st.size() - 20), 20)
                on_disk = dict(conn.execute(f"SELECT log_index, raw FROM packets WHERE log_index > {st.size() - 21}"))
                assert all(p.raw is None and on_disk[p.index] is None for p in found.packets)
        finally:
            conn.close()
        assert st._mem_from > 150, "the memory index was never trimmed: the test would not test it"
    finally:
        await st.close()


def _purge_state(path: Path) -> list[tuple[int, bool, int | None]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT log_index, raw IS NULL, released_at FROM packets ORDER BY log_index").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("seed", range(8))
async def test_a_later_purge_pass_ends_as_a_first_pass_would(tmp_path: Path, seed: int) -> None:
    """A purge pass after the first looks in full only at packets whose subscriptions changed: after
    random appends, subscriptions, pattern changes, acks, unsubscriptions and expiries, each pass of
    a long-running store leaves every body held, released and dropped exactly as a first pass does
    (a store opened on a copy of the database taken just before)."""
    rng = random.Random(seed)
    nations, names = ("CA", "DE", "FR"), ("main", "archive")
    topics = ("alerts.x", "alerts.y", "reports.z")
    patterns = ((">",), ("alerts.>",), ("reports.*",), ("alerts.x",))
    st = SQLiteStorage(tmp_path / "hub.db")
    cursors: dict[tuple[str, str], int] = {}
    now, count, passes = ACCEPTED, 0, 0
    try:
        for step in range(40):
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                if op < 0.35:
                    items = [addressed(count + k, tuple(rng.sample(nations, rng.randint(1, 3))), rng.choice(topics),
                                       now + rng.randint(1, 60)) for k in range(rng.randint(1, 4))]
                    results = await st.append(items, now)
                    count += len(items)
                    assert all(isinstance(r, Appended) for r in results)
                elif op < 0.55:
                    key = (rng.choice(nations), rng.choice(names))
                    sub = await st.subscribe(*key, rng.choice(patterns), now=now)
                    cursors[key] = sub.cursor
                elif op < 0.65 and cursors:
                    key = rng.choice(sorted(cursors))
                    assert await st.unsubscribe(*key)
                    del cursors[key]
                elif cursors and count:
                    key = rng.choice(sorted(cursors))
                    cursor = rng.randint(cursors[key], count - 1) if rng.random() < 0.5 else cursors[key]
                    above = sorted(rng.sample(range(cursor + 1, count), min(2, count - cursor - 1)))
                    await st.ack(*key, above, cursor)
                    cursors[key] = cursor
            now += rng.randint(0, 20)
            retention = rng.randint(0, 30)
            copy = tmp_path / f"copy-{step}.db"
            src, dst = sqlite3.connect(tmp_path / "hub.db"), sqlite3.connect(copy)
            src.backup(dst)
            src.close()
            dst.close()
            fresh = SQLiteStorage(copy)
            try:
                expected = await fresh.purge(now, retention)
            finally:
                await fresh.close()
            assert await st.purge(now, retention) == expected, step
            assert _purge_state(tmp_path / "hub.db") == _purge_state(copy), step
            passes += expected > 0
    finally:
        await st.close()
    assert passes >= 3, "too few bodies dropped for the comparison to mean much"


async def test_a_later_purge_pass_sees_an_acknowledgement_above_the_cursor(st: SQLiteStorage) -> None:
    """A packet held at one pass, then acknowledged out of order (the cursor stays below it), goes at
    the next pass: an acknowledgement counts as a change of its subscription."""
    await st.subscribe("FR", "main", (">",))
    assert await appended(st, [addressed(i, ("FR",)) for i in range(4)]) == [0, 1, 2, 3]
    assert await st.purge(ACCEPTED, 0) == 0
    await st.ack("FR", "main", [2], -1)
    assert await st.purge(ACCEPTED + 1, 0) == 1
    assert bodies(st, "FR") == {0: raw_of(0), 1: raw_of(1), 2: None, 3: raw_of(3)}


async def test_a_later_purge_pass_sees_a_new_subscription_acknowledge_what_it_held_again(
        st: SQLiteStorage) -> None:
    """Bodies released but kept for their retention are held again for a new subscription of the
    nation; once it acknowledges them they are released again at the next pass (not at expiry)."""
    await st.subscribe("FR", "main", (">",))
    assert await appended(st, [addressed(i, ("FR",)) for i in range(3)]) == [0, 1, 2]
    await st.ack("FR", "main", [], 2)
    assert await st.purge(ACCEPTED, 100) == 0  # released now, kept 100 s
    await st.subscribe("FR", "archive", (">",), now=ACCEPTED)  # owed them again: held
    await st.ack("FR", "archive", [], 2)  # before any pass saw the new subscription
    assert await st.purge(ACCEPTED + 2, 0) == 3


async def test_a_later_purge_pass_sees_patterns_narrowed(st: SQLiteStorage) -> None:
    """Held for a subscription whose patterns then stop matching it: released at the next pass."""
    await st.subscribe("FR", "main", (">",))
    assert await appended(st, [addressed(0, ("FR",), "reports.z"), addressed(1, ("FR",), "alerts.x")]) == [0, 1]
    assert await st.purge(ACCEPTED, 0) == 0
    await st.subscribe("FR", "main", ("alerts.>",))
    assert await st.purge(ACCEPTED + 1, 0) == 1
    assert bodies(st, "FR") == {0: None, 1: raw_of(1)}


async def test_a_later_purge_pass_sees_patterns_changed_and_changed_back(st: SQLiteStorage) -> None:
    """Patterns widened (holding released bodies again) and narrowed back between two passes leave
    the subscription as the last pass saw it; the bodies are released again all the same."""
    await st.subscribe("FR", "main", ("reports.>",))
    assert await appended(st, [addressed(i, ("FR",)) for i in range(3)]) == [0, 1, 2]
    assert await st.purge(ACCEPTED, 100) == 0  # not matched: released now, kept 100 s
    await st.subscribe("FR", "main", (">",), now=ACCEPTED)  # held again
    await st.subscribe("FR", "main", ("reports.>",), now=ACCEPTED)
    assert await st.purge(ACCEPTED + 2, 0) == 3


async def test_a_later_purge_pass_sees_an_acknowledgement_that_replaces_one_below_the_cursor(st: SQLiteStorage) -> None:
    """A feed stopped meanwhile flushes its acks with cursor -1, leaving one at or below the cursor;
    a later ack deletes it and adds one above: as many acks as before, one more packet released."""
    await st.subscribe("FR", "main", (">",))
    assert await appended(st, [addressed(i, ("FR",)) for i in range(10)]) == list(range(10))
    await st.ack("FR", "main", [7], 5)
    await st.ack("FR", "main", [3], -1)
    assert await st.purge(ACCEPTED, 100) == 0  # 0-5 and 7 released, kept 100 s; 6, 8, 9 held
    await st.ack("FR", "main", [9], 5)
    assert await st.purge(ACCEPTED + 200, 0) == 8
    assert [i for i, raw in bodies(st, "FR").items() if raw is not None] == [6, 8]


async def test_a_later_purge_pass_sees_a_subscription_made_anew_as_it_was(st: SQLiteStorage) -> None:
    """A subscription removed and made again between two passes, and acknowledged back to the same
    cursor, looks unchanged to a comparison of cursors; what it held again is released all the same."""
    await st.subscribe("FR", "main", (">",))
    await st.subscribe("FR", "archive", (">",))
    assert await appended(st, [addressed(i, ("FR",)) for i in range(3)]) == [0, 1, 2]
    await st.ack("FR", "main", [], 2)
    await st.ack("FR", "archive", [], 2)
    assert await st.purge(ACCEPTED, 100) == 0  # released now, kept 100 s
    assert await st.unsubscribe("FR", "archive")
    await st.subscribe("FR", "archive", (">",), now=ACCEPTED)  # owed them again: held
    await st.ack("FR", "archive", [], 2)
    assert await st.purge(ACCEPTED + 2, 0) == 3


async def test_purge_goes_through_a_backlog_in_chunks_and_misses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of two packets: the ones owed (to FR/archive) in between do not stop the passes."""
    from hub.server import sqlite_store

    monkeypatch.setattr(sqlite_store, "PURGE_CHUNK", 2)
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        await st.subscribe("FR", "main", (">",))
        await st.subscribe("FR", "archive", ("alerts.>",))
        topics = ["alerts.x", "reports.y", "reports.y", "alerts.x", "reports.y", "reports.y", "reports.y"]
        assert await appended(st, [addressed(i, ("FR",), t) for i, t in enumerate(topics)]) == list(range(7))
        await st.ack("FR", "main", [], 6)  # FR/archive, owed 0 and 3, acknowledges nothing
        assert await st.purge(ACCEPTED, 0) == 5
        assert bodies(st, "FR") == {i: (raw_of(i) if i in (0, 3) else None) for i in range(7)}
        await st.ack("FR", "archive", [3], -1)
        assert await st.purge(ACCEPTED + 1, 0) == 1
        assert bodies(st, "FR")[3] is None and bodies(st, "FR")[0] == raw_of(0)
    finally:
        await st.close()


async def test_the_upgrade_to_release_times_keeps_what_was_owed_and_releases_the_rest_at_acceptance(
        tmp_path: Path) -> None:
    """Schema 3 -> 4: bodies nobody was owed count their retention from acceptance, as before the
    upgrade (one past it goes at the first purge, not a whole period later); owed ones stay held."""
    db = tmp_path / "hub.db"
    conn = sqlite3.connect(db, isolation_level=None)
    sqlite_store.register_functions(conn)
    migrate(conn, sqlite_store.MIGRATIONS[:3], "hub")
    conn.execute("INSERT INTO subscriptions (nation, name, patterns, cursor, created) VALUES "
                 "('FR', 'main', '[\">\"]', 0, 1)")
    for i in range(2):  # 0: acknowledged by FR/main (its cursor); 1: still owed to it
        conn.execute("INSERT INTO packets VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (i, b"%016d" % i, b"d" * 32, "IT", b"c" * 32, "alerts.x", 1, 2_000_000_000, ACCEPTED,
                      b"h%d" % i, b"l" * 32, b"r%d" % i))
        conn.execute("INSERT INTO packet_recipients (log_index, nation) VALUES (?, 'FR')", (i,))
    conn.close()
    st = SQLiteStorage(db)
    try:
        rows = sqlite3.connect(db).execute("SELECT log_index, released_at FROM packets ORDER BY log_index").fetchall()
        assert rows == [(0, ACCEPTED), (1, None)]
        assert await st.purge(ACCEPTED + 40 * 86400, 30 * 86400) == 1
        assert [p.raw for p in st.read_range(0, 2)] == [None, b"r1"]
    finally:
        await st.close()


async def test_a_new_subscription_holds_again_only_what_it_is_owed(tmp_path: Path) -> None:
    """Released bodies of a topic the new subscription does not match, or expired, keep their
    release time: they go a retention period after it, not a period after the subscription."""
    day = 86_400
    st = SQLiteStorage(tmp_path / "hub.db")
    try:
        await st.subscribe("FR", "alerts", ("alerts.>",))
        # 0: a notice no FR subscription matches; 1: an alert that expired long ago; 2: an alert
        # acknowledged and released, which the new subscription (alerts and reports) is owed.
        assert await appended(st, [addressed(0, ("FR",), "notices.x"), addressed(1, ("FR",), expires=ACCEPTED + 10),
                                   addressed(2, ("FR",), expires=ACCEPTED + 100 * day)]) == [0, 1, 2]
        await st.ack("FR", "alerts", [2], -1)
        assert await st.purge(ACCEPTED + 60, 30 * day) == 0  # all three released now
        await st.subscribe("FR", "archive", ("alerts.>", "reports.>"), ACCEPTED + 29 * day)
        assert await st.purge(ACCEPTED + 31 * day, 30 * day) == 2  # 0 and 1; 2 is held for FR/archive
        assert bodies(st, "FR") == {0: None, 1: None, 2: raw_of(2)}
    finally:
        await st.close()


async def test_the_upgrade_to_acknowledgement_times_marks_the_unknown_ones(tmp_path: Path) -> None:
    """Schema 2 -> 3: a subscription that had acknowledged something shows as acknowledged at an
    unknown time (0), one that had not as never (None)."""
    from hub.server.admin import subscriptions

    db = tmp_path / "hub.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, sqlite_store.MIGRATIONS[:2], "hub")
    conn.execute("INSERT INTO subscriptions VALUES ('FR', 'main', '[\">\"]', 5, 1), ('FR', 'new', '[\">\"]', -1, 1)")
    conn.close()
    await SQLiteStorage(db).close()
    assert {s.name: s.acked_at for s in subscriptions(db, ACCEPTED)} == {"main": 0, "new": None}
