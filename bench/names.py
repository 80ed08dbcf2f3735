"""Blocking and scoring of clients/node/names.py on a synthetic store of names in SQLite.

Generates N names (default 200,000) in Latin, Arabic and Cyrillic script from seeded random
combinations of common given names and surnames (plus syllable-made surnames, so the key
space is as varied as a real store's), builds the blocking index two ways — a plain
``(key, nkeys, name_id)`` table and an FTS5 table — and measures keys per name, build rate,
query latency (blocking + scoring, candidates capped) and recall on tests/test_names.py's
MUST_MATCH pairs planted among them. Bounded: under a minute at the default size.

Run: .venv/bin/python bench/names.py [--names N] [--queries Q] [--skip-fts]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.node import names  # noqa: E402
from tests.test_names import MUST_MATCH  # noqa: E402

SEED = 20251124
POSTINGS_CAP = 500  # rows read per key: a common given name cannot blow the budget
CANDIDATES_CAP = 300  # names scored per query
SHOWN = 10  # hits explained per query
VERIFY_CAP = 1000  # names from fully read keys checked against the capped ones

# Test data for the generator: common names as people write them in each script.
LATIN_GIVEN = """Mohammed Muhammad Mohamed Ahmed Ahmad Ali Omar Yusuf Youssef Ibrahim Hassan
Hussein Khalid Mahmoud Mustafa Abdullah Karim Tariq Walid Samir Nabil Rashid Said Fatima Aisha
Mariam Layla Zainab Amina John James Michael David Maria Anna Peter Thomas Jean Pierre Marco
Giuseppe Hans Juan Carlos Luis Ana Sofia Paolo Mehmet Emre Ayse Elif Olga Ivan""".split()
LATIN_SURNAMES = """Smith Johnson Williams Brown Garcia Martinez Rodriguez Lopez Muller Schmidt
Schneider Fischer Rossi Russo Ferrari Esposito Bianchi Martin Bernard Dubois Moreau Laurent
Yilmaz Kaya Demir Sahin Celik Khan Hussain Haddad Mansour Nasser Saleh Hamdan Khoury Aziz
Karimi Rahimi Hosseini Al-Rashid Al-Masri El-Khatib Bin-Laden Ben-Ali Abdelaziz""".split()
ARABIC_GIVEN = """محمد أحمد علي عمر يوسف إبراهيم حسن حسين خالد محمود مصطفى عبدالله كريم طارق
وليد سمير نبيل راشد سعيد فاطمة عائشة مريم ليلى زينب أمينة عبدالرحمن بشار قاسم""".split()
ARABIC_SURNAMES = """الراشد الحسن المصري الخطيب حداد منصور ناصر صالح حمدان خوري عزيز العلي
الشامي البغدادي التميمي القحطاني العتيبي الزهراني الهاشمي السيد النجار الحلبي""".split()
CYRILLIC_GIVEN = """Александр Сергей Андрей Дмитрий Алексей Иван Михаил Николай Владимир Евгений
Ольга Елена Наталья Татьяна Ирина Мария Анна Мухаммед Ахмед Рамзан Руслан Тимур Юсуф Магомед
Ибрагим Хасан""".split()
CYRILLIC_SURNAMES = """Иванов Смирнов Кузнецов Попов Васильев Петров Соколов Михайлов Новиков
Фёдоров Морозов Волков Алексеев Лебедев Семёнов Егоров Павлов Козлов Степанов Николаев
Шевченко Коваленко Бондаренко Ткаченко Кадыров Алиев Мамедов Гусейнов Расулов Ахмедов""".split()
# Syllables and suffixes to make surnames no list holds, in each script's own letters.
SYLLABLES = {
    "latin": ("ka ro ber lin mo ta shi vel dor an ne gu fa rel to mi sa ben ur zo".split(),
              "son er i ez ini ov ski mann ou a".split()),
    "arabic": ("بر كم سل نج فر طب زه دو قي رح مل شع عب".split(), "ي ان اوي ة".split()),
    "cyrillic": ("ка ро бер лин мо та ши вел дор ан не гу фа рел то ми".split(),
                 "ов ев енко ский ин ян".split()),
}
SCRIPTS = {  # share of names, given names, surnames
    "latin": (0.45, LATIN_GIVEN, LATIN_SURNAMES),
    "arabic": (0.30, ARABIC_GIVEN, ARABIC_SURNAMES),
    "cyrillic": (0.25, CYRILLIC_GIVEN, CYRILLIC_SURNAMES),
}


def zipf_choice(rng: random.Random, items: list[str], offset: int = 0) -> str:
    """Pick with weight 1/(rank + offset), as real name frequencies fall off.

    Given names take offset 0 (a tenth of Arabic-script names start with محمد); surnames
    a flatter 30, since no family name is that common among a store's entities.
    """
    return rng.choices(items, cum_weights=_cum(len(items), offset))[0]


_CUM: dict[tuple[int, int], list[float]] = {}


def _cum(n: int, offset: int) -> list[float]:
    if (n, offset) not in _CUM:
        total, acc = 0.0, []
        for r in range(1, n + 1):
            total += 1 / (r + offset)
            acc.append(total)
        _CUM[n, offset] = acc
    return _CUM[n, offset]


def make_surnames(rng: random.Random, script: str, real: list[str], n: int) -> list[str]:
    syl, suffixes = SYLLABLES[script]
    made = {"".join(rng.choices(syl, k=rng.randint(1, 3))) + rng.choice(suffixes)
            for _ in range(n)}
    if script == "arabic":
        made = {("ال" if rng.random() < 0.5 else "") + m for m in sorted(made)}
    else:
        made = {m.capitalize() for m in made}
    return real + sorted(made)


def generate(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    pools = {s: (given, make_surnames(rng, s, surnames, 4000))
             for s, (_, given, surnames) in SCRIPTS.items()}
    scripts = list(SCRIPTS)
    weights = [SCRIPTS[s][0] for s in scripts]
    out = []
    for _ in range(n):
        script = rng.choices(scripts, weights)[0]
        given, surnames = pools[script]
        parts = [zipf_choice(rng, given)]
        if rng.random() < 0.3:
            parts.append(zipf_choice(rng, given))  # father's or middle name
        parts.append(zipf_choice(rng, surnames, offset=30))
        if script == "latin" and rng.random() < 0.15:
            parts.reverse()  # "SURNAME Given" list order
        out.append(" ".join(parts))
    return out


def build_table(db: sqlite3.Connection, rows: list[tuple[int, list[str]]]) -> None:
    # nkeys in the primary key orders each key's postings shortest name first, so a capped
    # read of a common key returns the names with the fewest tokens the query lacks.
    db.execute("CREATE TABLE name_keys (key TEXT NOT NULL, nkeys INTEGER NOT NULL, "
               "name_id INTEGER NOT NULL, PRIMARY KEY (key, nkeys, name_id)) WITHOUT ROWID")
    db.executemany("INSERT OR IGNORE INTO name_keys VALUES (?, ?, ?)",
                   ((k, len(keys), i) for i, keys in rows for k in keys))


def build_fts(db: sqlite3.Connection, rows: list[tuple[int, list[str]]]) -> None:
    db.execute("CREATE VIRTUAL TABLE name_fts USING fts5(keys, "
               "tokenize = \"ascii tokenchars '.='\", detail = none)")
    db.executemany("INSERT INTO name_fts (rowid, keys) VALUES (?, ?)",
                   ((i, " ".join(keys)) for i, keys in rows))


def set_postings_cap(cap: int) -> None:
    global POSTINGS_CAP
    POSTINGS_CAP = cap


KIND_WEIGHT = {"spelling": 4.0, "pair": 2.0, "skeleton": 1.0}


def candidates_table(db: sqlite3.Connection, keys: list[str]) -> list[int]:
    """Names sharing the most (and the rarest) keys, closest in length to the query first.

    Keys come most selective first. Each read is capped at POSTINGS_CAP rows, taking the
    names whose key count is nearest the query's. A key read in full is exact evidence; for
    the names it gives, the capped (big) spelling and pair keys are then checked by primary
    key, so "Khaled Shaikh Mohamed", reached through a rare pair, also gets credit for the
    common pair "khalid + mohammed" that a capped read stopped short of. Once enough
    candidates are in, single-skeleton keys (long postings, weak evidence) are not read.
    """
    qn = len(keys)
    credit: defaultdict[int, set[int]] = defaultdict(set)  # name -> keys it holds
    size: dict[int, int] = {}
    weights: list[float] = []
    exact: list[int] = []
    big: list[int] = []
    for k, key in enumerate(keys):
        kind = names.key_kind(key)
        if kind == "skeleton" and len(credit) >= CANDIDATES_CAP:
            break
        rows = db.execute("SELECT nkeys, name_id FROM name_keys WHERE key = ? AND nkeys >= ? "
                          "ORDER BY nkeys LIMIT ?", (key, qn, POSTINGS_CAP)).fetchall()
        rows += db.execute("SELECT nkeys, name_id FROM name_keys WHERE key = ? AND nkeys < ? "
                           "ORDER BY nkeys DESC LIMIT ?",
                           (key, qn, POSTINGS_CAP - len(rows))).fetchall()
        weights.append(KIND_WEIGHT[kind] / math.log2(2 + len(rows)))  # a rare key says more
        for nkeys, nid in rows:
            credit[nid].add(k)
            size[nid] = nkeys
        if len(rows) < POSTINGS_CAP:
            exact.extend(nid for _, nid in rows)
        elif kind != "skeleton":
            big.append(k)
    by_size: defaultdict[int, list[int]] = defaultdict(list)
    for nid in dict.fromkeys(exact[:VERIFY_CAP]):
        by_size[size[nid]].append(nid)
    for k in big:
        for nkeys, ids in by_size.items():
            for (nid,) in db.execute(
                    "SELECT name_id FROM name_keys WHERE key = ? AND nkeys = ? "
                    f"AND name_id IN ({','.join('?' * len(ids))})", (keys[k], nkeys, *ids)):
                credit[nid].add(k)
    score = {nid: sum(weights[k] for k in ks) for nid, ks in credit.items()}
    best = sorted(score, key=lambda i: (-score[i], abs(size[i] - qn), i))
    return best[:CANDIDATES_CAP]


def candidates_fts(db: sqlite3.Connection, keys: list[str]) -> list[int]:
    query = " OR ".join(f'"{k}"' for k in keys)
    return [r[0] for r in db.execute(
        "SELECT rowid FROM name_fts WHERE name_fts MATCH ? ORDER BY rank LIMIT ?",
        (query, CANDIDATES_CAP))]


Blocker = Callable[[sqlite3.Connection, list[str]], list[int]]
TIMES: dict[str, list[float]] = {"blocking": [], "scoring": []}


def search(db: sqlite3.Connection, query: str, blocker: Blocker,
           ) -> list[tuple[int, names.Match]]:
    """Blocking, then scoring every candidate, then explaining the best few."""
    t0 = time.perf_counter()
    q = names.prepare(query)
    ids = blocker(db, names.query_keys(query))
    rows = db.execute(f"SELECT id, name FROM names WHERE id IN ({','.join('?' * len(ids))})",
                      ids).fetchall()
    t1 = time.perf_counter()
    scored = sorted((-names.score(q, names.prepare(n), explain=False).score, i, n)
                    for i, n in rows)
    hits = [(i, names.score(q, names.prepare(n))) for s, i, n in scored[:SHOWN]
            if -s >= names.MATCH_THRESHOLD]
    TIMES["blocking"].append((t1 - t0) * 1000)
    TIMES["scoring"].append((time.perf_counter() - t1) * 1000)
    return hits


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def timed_queries(db: sqlite3.Connection, queries: Iterable[str], blocker: Blocker,
                  ) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per query; CPU time is immune to a busy machine."""
    wall, cpu = [], []
    for query in queries:
        t, c = time.perf_counter(), time.thread_time()
        search(db, query, blocker)
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return wall, cpu


def report_recall(db: sqlite3.Connection, label: str, blocker: Blocker,
                  planted: dict[str, int]) -> None:
    """Does each MUST_MATCH query find its planted name?

    Found: among the hits shown, or crowded out of them only by names that score at least
    as well: the generator makes real homonyms ("Mohammed Al-Rashid" is common), and a
    search shows the best ten of a thousand equal hits, not all of them.
    """
    reached = found = crowded = 0
    misses = []
    for query, name in MUST_MATCH:
        nid = planted[name]
        reached += nid in blocker(db, names.query_keys(query))
        hits = search(db, query, blocker)
        own = names.score(query, name).score
        if nid in dict(hits):
            found += 1
        elif own >= names.MATCH_THRESHOLD and len(hits) == SHOWN and hits[-1][1].score >= own:
            crowded += 1
        else:
            misses.append(f"{query} / {name}: scored {own}")
    print(f"recall via {label}: {found + crowded}/{len(MUST_MATCH)} found ({found} shown, "
          f"{crowded} crowded out by as good homonyms; {reached} reached scoring); "
          f"misses: {misses or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--postings-cap", type=int, default=POSTINGS_CAP)
    ap.add_argument("--skip-fts", action="store_true")
    args = ap.parse_args()
    set_postings_cap(args.postings_cap)
    start = time.perf_counter()

    t = time.perf_counter()
    stored = generate(args.names)
    planted = {name: args.names + k for k, (_, name) in enumerate(MUST_MATCH)}
    stored += list(planted)
    print(f"generated {len(stored):,} names in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    rows = [(i, names.index_keys(n)) for i, n in enumerate(stored)]
    t_keys = time.perf_counter() - t
    per_name = [len(k) for _, k in rows]
    print(f"keys: {sum(per_name) / len(rows):.2f} per name (max {max(per_name)}), "
          f"{t_keys / len(rows) * 1e6:.0f} µs per name to derive "
          f"({len(rows) / t_keys:,.0f} names/s)")

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    db.executemany("INSERT INTO names VALUES (?, ?)", enumerate(stored))
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    t = time.perf_counter()
    build_table(db, rows)
    t_table = time.perf_counter() - t
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    table_mb = (db.execute("PRAGMA page_count").fetchone()[0] - pages) * page_size / 2**20
    distinct = db.execute("SELECT COUNT(DISTINCT key) FROM name_keys").fetchone()[0]
    biggest = db.execute("SELECT key, COUNT(*) c FROM name_keys GROUP BY key "
                         "ORDER BY c DESC LIMIT 3").fetchall()
    print(f"key table: {sum(per_name):,} rows ({table_mb:.0f} MiB), {distinct:,} distinct "
          f"keys, insert {len(rows) / t_table:,.0f} names/s; overall build "
          f"{len(rows) / (t_keys + t_table):,.0f} names/s; largest postings {biggest}")
    blockers = {"key table": candidates_table}
    if not args.skip_fts:
        t = time.perf_counter()
        build_fts(db, rows)
        t_fts = time.perf_counter() - t
        print(f"fts5 table: insert {len(rows) / t_fts:,.0f} names/s")
        blockers["fts5"] = candidates_fts

    rng = random.Random(SEED + 1)
    queries = [stored[rng.randrange(args.names)] for _ in range(args.queries)]
    # The bench's own millions of objects (names, keys) would make each full garbage
    # collection a 0.5 s pause that a node, whose store is on disk, does not have.
    del rows, per_name
    gc.collect()
    gc.freeze()
    for label, blocker in blockers.items():
        names.prepare.cache_clear()
        for q in queries[:20]:  # warm SQLite's statement cache, not the name caches
            search(db, q, blocker)
        # FTS5 is an order of magnitude slower: a sample is enough to show it.
        sample = queries if blocker is candidates_table else queries[:100]
        for v in TIMES.values():
            v.clear()
        ms, cpu = timed_queries(db, sample, blocker)
        print(f"query via {label}: p50 {percentile(ms, 0.5):.1f} ms, "
              f"p99 {percentile(ms, 0.99):.1f} ms, max {max(ms):.1f} ms (CPU p50/p99 "
              f"{percentile(cpu, 0.5):.1f}/{percentile(cpu, 0.99):.1f} ms), "
              f"mean {statistics.fmean(ms):.1f} ms over {len(ms)} queries "
              f"(blocking p50/p99 {percentile(TIMES['blocking'], 0.5):.1f}/"
              f"{percentile(TIMES['blocking'], 0.99):.1f} ms, scoring "
              f"{percentile(TIMES['scoring'], 0.5):.1f}/"
              f"{percentile(TIMES['scoring'], 0.99):.1f} ms)")
        report_recall(db, label, blocker, planted)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
