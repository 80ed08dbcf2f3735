"""The hub's SQLite storage on its own: scans served from memory agree with the database."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

from hub.server import sqlite_store
from hub.server.sqlite_store import SQLiteStorage
from hub.server.storage import Appended, Conflict, NewPacket

NATIONS = ("CA", "DE", "FR", "GB", "IT", "JP", "US")


def packet(i: int, rng: random.Random) -> NewPacket:
    to = tuple(sorted(rng.sample(NATIONS, rng.randint(1, 4))))
    header = b"header-%d" % i
    return NewPacket(os.urandom(16), "IT", b"c" * 32, "alerts.x", to, 1_764_000_000, 1_764_999_999, header,
                     header + b"-raw", b"d" * 32)


def sql_scan(db: Path, nation: str, after: int, limit: int) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute(sqlite_store._SCAN, (nation, after, limit))]
    finally:
        conn.close()


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
                got = [p.index for p in st.scan(nation, after, limit)]
                assert got == sql_scan(db, nation, after, limit), (nation, after, limit, st._mem_from)
        assert st._mem_from > 300, "the memory index was never trimmed: the test would not test it"
    finally:
        await st.close()


async def test_a_reopened_store_scans_what_it_held(tmp_path: Path) -> None:
    rng = random.Random(8)
    db = tmp_path / "hub.db"
    st = SQLiteStorage(db)
    await st.append([packet(i, rng) for i in range(30)], 1_764_000_100)
    await st.close()
    st = SQLiteStorage(db)
    try:
        for nation in NATIONS:
            assert [p.index for p in st.scan(nation, -1, 100)] == sql_scan(db, nation, -1, 100)
        more = await st.append([packet(100 + i, rng) for i in range(5)], 1_764_000_200)
        for nation in NATIONS:
            assert [p.index for p in st.scan(nation, -1, 100)] == sql_scan(db, nation, -1, 100)
            assert [p.index for p in st.scan(nation, 29, 100)] == sql_scan(db, nation, 29, 100)
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
                             p.raw + b"-other-signature", b"e" * 32)
        other = NewPacket(p.packet_id, p.sender, p.signer, p.topic, p.recipients, p.created, p.expires,
                          b"another header", b"x", b"f" * 32)
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
    st = SQLiteStorage(new)
    await st.append([packet(i, rng) for i in range(3)], 1_764_000_100)
    await st.close()
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
