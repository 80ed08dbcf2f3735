"""Read side of the node store: fuzzy name search, identifier lookup, records, freezes.

Name search is two-stage (see ``clients/node/names.py``): blocking keys read from
``name_keys`` give a bounded set of candidate names, then :func:`names.score` ranks them and
says why each matched. Reads are capped per key (``POSTINGS_CAP``) and in total
(``CANDIDATES_CAP``) so a query for a common given name costs the same on a store of a
million entities as on a small one. A query with ``*`` (``Rash*``) or in double quotes is a
word/prefix query, answered by FTS5 instead: skeleton keys cannot express a prefix.

Filters go into SQL: the record's status, schema, country and issue date are joined into the
candidate fetch. With a filter, blocking reads ``FILTER_FACTOR`` times more postings and
candidates, so a selective filter still leaves names to score, at a bounded cost.

Lookup normalises the value with ``hub.protocol.identifiers`` — the one place normalisation
lives, the same code that canonicalised stored content — and reads the index of
``(kind, value)`` digests.
"""

from __future__ import annotations

import datetime
import heapq
import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import sqlite_utils

from clients.node import names
from clients.node.schema import KEY_SHIFT, NAME_ID_MASK, identifier_key
from hub.protocol import codec
from hub.protocol.errors import ValidationError
from hub.protocol.identifiers import (
    IDENTIFIER_TYPES, guess_identifier_kind, normalize_identifier, resolve_kind,
)

# Measured on 1M entities (bench/store.py): 500/200 keep recall within 1% of 1000/300 at
# half the latency; most of what either misses is a consonant typo in a rare surname.
POSTINGS_CAP: Final[int] = 500  # rows read per key: a common given name cannot blow the budget
CANDIDATES_CAP: Final[int] = 200  # names scored per query
FILTER_FACTOR: Final[int] = 3  # with a filter, read and fetch this many times more candidates
LOOKUP_LIMIT: Final[int] = 200
MIN_PREFIX: Final[int] = 2
_KIND_WEIGHT: Final = {"spelling": 4.0, "pair": 2.0, "skeleton": 1.0}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Hit:
    """One entity that matched a name search."""

    entity_id: str  # the entity's id inside its packet ("e1")
    packet_id: str  # the record: its original packet's id, what `intelhub show` takes
    schema: str
    name: str  # the entity's name (or alias) that matched best
    names: tuple[str, ...]  # all its names, then aliases
    countries: tuple[str, ...]
    score: float
    why: tuple[str, ...]
    sender: str
    received_at: int
    status: str  # active | amended | withdrawn

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"], d["countries"], d["why"] = list(self.names), list(self.countries), list(self.why)
        return d


def parse_when(text: str, field: str, *, end: bool = False) -> int:
    """A date (``2026-03-01``) or UTC timestamp as Unix seconds; a date ``end`` is its last second."""
    value = text.strip()
    try:
        if _DATE.fullmatch(value):
            day = datetime.date.fromisoformat(value) + datetime.timedelta(days=1 if end else 0)
            moment = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
            return int(moment.timestamp()) - (1 if end else 0)
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(field, f'"{text}" is not a date (YYYY-MM-DD) or UTC timestamp') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def _filters(schema: str | None, country: str | None, since: str | None, until: str | None,
             include_withdrawn: bool) -> tuple[str, list[Any], bool]:
    """SQL conditions over ``e`` (entities) and ``r`` (records); whether any is selective."""
    sql: list[str] = ["1"]
    params: list[Any] = []
    if not include_withdrawn:
        sql.append("r.status != 'withdrawn'")
    if schema is not None:
        sql.append("e.schema = ?")
        params.append(schema)
    if country is not None:
        sql.append("instr(' ' || e.countries || ' ', ?) > 0")
        params.append(f" {country.strip().upper()} ")
    if since is not None:
        sql.append("r.created >= ?")
        params.append(parse_when(since, "since"))
    if until is not None:
        sql.append("r.created <= ?")
        params.append(parse_when(until, "until", end=True))
    return " AND ".join(sql), params, len(params) > 0


def _postings(conn: sqlite3.Connection, key: str, qn: int, cap: int) -> list[tuple[int, int]]:
    """``(nkeys, name id)`` of names holding ``key``: those with as many keys as the query
    first, then fewer, nearest first; so a common key's capped read keeps the likeliest."""
    match = '"' + key.replace('"', '""') + '"'  # one quoted token: no FTS5 syntax gets through
    pivot = qn << KEY_SHIFT
    rows = conn.execute("SELECT rowid FROM name_keys WHERE name_keys MATCH ? AND rowid >= ? "
                        "ORDER BY rowid LIMIT ?", (match, pivot, cap)).fetchall()
    if len(rows) < cap:
        rows += conn.execute("SELECT rowid FROM name_keys WHERE name_keys MATCH ? AND rowid < ? "
                             "ORDER BY rowid DESC LIMIT ?", (match, pivot, cap - len(rows))).fetchall()
    return [(r >> KEY_SHIFT, r & NAME_ID_MASK) for (r,) in rows]


def _blocking(conn: sqlite3.Connection, keys: list[str], cap: int, want: int) -> list[int]:
    """Up to ``want`` names sharing the most, and the rarest, keys with the query, best first."""
    qn = len(keys)
    weight: defaultdict[int, float] = defaultdict(float)
    size: dict[int, int] = {}
    for key in keys:  # most selective first: spelling, pairs, then single skeletons
        kind = names.key_kind(key)
        if kind == "skeleton" and len(weight) >= want:
            break  # enough precise candidates: the long single-skeleton lists add only noise
        rows = _postings(conn, key, qn, cap)
        w = _KIND_WEIGHT[kind] / (1 + len(rows)).bit_length()  # a rare key says more
        for nkeys, nid in rows:
            weight[nid] += w
            size[nid] = nkeys
    ranked = [(-w, abs(size[i] - qn), i) for i, w in weight.items()]
    return [i for _, _, i in heapq.nsmallest(want, ranked)]


def _fts_query(query: str) -> str:
    """User words as an FTS5 expression: each word quoted (no operator injection), ``*`` kept."""
    terms = []
    for word in query.replace('"', " ").split():
        prefix = word.endswith("*")
        word = word.strip("*")
        if not word:
            continue
        if prefix and len(word) < MIN_PREFIX:
            raise ValidationError("query", f'"{word}*" is too short a prefix (at least {MIN_PREFIX} letters)')
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    if not terms:
        raise ValidationError("query", "nothing to search for: give a name")
    return " ".join(terms)


def search(conn: sqlite3.Connection, query: str, *, schema: str | None = None,
           country: str | None = None, since: str | None = None, until: str | None = None,
           limit: int = 20, include_withdrawn: bool = False) -> list[Hit]:
    """Entities whose names match ``query``, best first, each with its score and reasons."""
    if not isinstance(query, str) or not query.strip():
        raise ValidationError("query", "nothing to search for: give a name")
    if limit < 1:
        raise ValidationError("limit", "must be at least 1")
    where, params, selective = _filters(schema, country, since, until, include_withdrawn)
    full_text = "*" in query or query.lstrip().startswith('"')
    plain = query.replace("*", " ").replace('"', " ")
    factor = FILTER_FACTOR if selective else 1
    if full_text:
        expr = _fts_query(query)
        # Rowid order, no ORDER BY rank: a short prefix may match a million names, and
        # ranking them all would blow the time budget; names.score orders what is kept.
        ids = [r[0] for r in conn.execute("SELECT rowid FROM names_fts WHERE names_fts MATCH ? "
                                          "LIMIT ?", (expr, CANDIDATES_CAP * factor))]
    else:
        keys = names.query_keys(query)
        if not keys:
            raise ValidationError("query", f'"{query}" has no letters or digits to match')
        # A filter is applied to the candidates, so read more of them: a selective filter
        # (one country of many) still leaves enough to score, at a bounded cost.
        ids = _blocking(conn, keys, POSTINGS_CAP * factor, CANDIDATES_CAP * factor)
    if not ids:
        return []
    found = conn.execute(
        f"SELECT n.id, n.name, n.entity, r.received_at FROM names n JOIN entities e ON e.id = n.entity "
        f"JOIN records r ON r.id = e.record WHERE n.id IN ({','.join('?' * len(ids))}) AND {where}",
        [*ids, *params]).fetchall()
    order = {nid: i for i, nid in enumerate(ids)}  # blocking's ranking: keep its best CANDIDATES_CAP
    rows = sorted(found, key=lambda r: order[r[0]])[:CANDIDATES_CAP]
    q = names.prepare(plain)
    scores: dict[str, float] = {}  # homonyms are common: score each distinct spelling once
    best: dict[int, tuple[float, int, str]] = {}
    for _, name, entity, received in rows:
        value = scores.get(name)
        if value is None:
            value = scores[name] = names.score(q, names.prepare(name), explain=False).score
        if (full_text or value >= names.MATCH_THRESHOLD) and value > best.get(entity, (-1.0,))[0]:
            best[entity] = (value, received, name)
    top = sorted(best.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:limit]
    return _hits(conn, q, top, f"full-text match for {expr}" if full_text else None)


def _hits(conn: sqlite3.Connection, q: names.PreparedName,
          top: list[tuple[int, tuple[float, int, str]]], note: str | None) -> list[Hit]:
    if not top:
        return []
    marks = ",".join("?" * len(top))
    info = {r[0]: r[1:] for r in conn.execute(
        f"SELECT e.id, e.local_id, e.schema, e.countries, r.packet_id, r.sender, r.received_at, "
        f"r.status FROM entities e JOIN records r ON r.id = e.record WHERE e.id IN ({marks})",
        [eid for eid, _ in top])}
    all_names: defaultdict[int, list[str]] = defaultdict(list)
    for entity, name in conn.execute(f"SELECT entity, name FROM names WHERE entity IN ({marks}) "
                                     f"ORDER BY kind DESC, id", [eid for eid, _ in top]):
        all_names[entity].append(name)
    out = []
    for eid, (value, _, name) in top:
        local_id, schema, countries, packet_id, sender, received_at, status = info[eid]
        why = names.score(q, names.prepare(name)).why
        out.append(Hit(local_id, packet_id, schema, name, tuple(all_names[eid]),
                       tuple(countries.split()), value, (note, *why) if note else why,
                       sender, received_at, status))
    return out


def lookup_keys(kind: str | None, value: str, country: str | None = None) -> list[tuple[str, str]]:
    """``(kind, canonical value)`` pairs to look up; kind None: the kind the value must be.

    A value no kind claims outright (``X1234567`` may be a passport, a national id, an
    account number …) is looked up as every kind whose format accepts it.
    """
    extra = {"country": country} if country else {}
    if kind is not None:
        k = resolve_kind(kind)
        try:
            return [(k, normalize_identifier(k, value, **extra))]
        except ValidationError as exc:
            raise ValidationError("value", exc.reason) from None
    guessed = guess_identifier_kind(value)
    if guessed is not None:
        return [(guessed, normalize_identifier(guessed, value, **extra))]
    pairs = []
    for k in IDENTIFIER_TYPES:
        try:
            pairs.append((k, normalize_identifier(k, value, **extra)))
        except ValidationError:
            continue
    if not pairs:
        raise ValidationError("value", f'"{value}" is not a valid identifier of any kind; give its '
                              f'kind (iban, wallet, imo, passport, phone, …) to see what is wrong')
    return pairs


def lookup(conn: sqlite3.Connection, kind: str | None, value: str, *, country: str | None = None,
           include_withdrawn: bool = False) -> list[dict[str, Any]]:
    """Entities and frozen assets holding exactly this identifier, newest first."""
    live = "" if include_withdrawn else "AND r.status != 'withdrawn'"
    out: list[dict[str, Any]] = []
    for k, v in lookup_keys(kind, value, country):
        for row in conn.execute(
                "SELECT i.kind, i.value, i.extra, r.packet_id, r.type, r.status, r.sender, "
                "r.received_at, e.local_id, e.schema, e.caption, a.local_id, a.kind, a.status, "
                "a.amount, a.currency FROM identifiers i JOIN records r ON r.id = i.record "
                "LEFT JOIN entities e ON e.id = i.entity LEFT JOIN assets a ON a.id = i.asset "
                f"WHERE i.key = ? AND i.kind = ? AND i.value = ? {live} ORDER BY r.received_at DESC LIMIT ?",
                (identifier_key(k, v), k, v, LOOKUP_LIMIT)):
            out.append({
                "kind": row[0], "value": row[1], "extra": json.loads(row[2]) if row[2] else {},
                "packet_id": row[3], "type": row[4], "status": row[5], "sender": row[6],
                "received_at": row[7],
                "entity": None if row[8] is None else
                {"id": row[8], "schema": row[9], "caption": row[10]},
                "asset": None if row[11] is None else
                {"id": row[11], "kind": row[12], "status": row[13], "amount": row[14],
                 "currency": row[15]},
            })
    out.sort(key=lambda d: -d["received_at"])
    return out


# -- records, receipts, freezes: the low-rate reads, as dict rows through sqlite-utils ---------


def _dicts(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return list(db.query(sql, params))


def receipts_for(db: sqlite_utils.Database, packet_id: str) -> list[dict[str, Any]]:
    return _dicts(db, "SELECT packet_id, ref, nation, status, at, note, received_at FROM receipts "
                      "WHERE ref = ? ORDER BY received_at, nation, packet_id", (packet_id,))


def show(db: sqlite_utils.Database, packet_id: str) -> dict[str, Any] | None:
    """A record (by its id or any version's), else a packet we sent, else any stored packet."""
    rec = _dicts(db, "SELECT * FROM records WHERE packet_id = ? OR id = (SELECT record FROM versions "
                     "WHERE packet_id = ?)", (packet_id, packet_id))
    if rec:
        return _show_record(db, rec[0])
    sent = _dicts(db, "SELECT * FROM sent WHERE packet_id = ?", (packet_id,))
    if sent:
        return _show_sent(db, sent[0])
    pkt = _dicts(db, "SELECT p.*, b.content AS content_bytes FROM packets p JOIN packet_blobs b USING (seq) "
                     "WHERE packet_id = ?", (packet_id,))
    if not pkt:
        return None
    p = pkt[0]
    blob = p.pop("content_bytes")
    return {**p, "direction": "received", "status": "dropped" if p["action"] == "drop" else "stored",
            "signer": p["signer"].hex(), "proof": json.loads(p["proof"]) if p["proof"] else None,
            "content": codec.decode(blob) if blob else None, "receipts": receipts_for(db, packet_id)}


def _show_record(db: sqlite_utils.Database, rec: dict[str, Any]) -> dict[str, Any]:
    versions = _dicts(
        db, "SELECT v.version, v.packet_id, v.kind, v.sender, v.created, v.received_at, v.reason, "
            "v.rejected, p.log_index, p.signer_name AS signer, b.content FROM versions v "
            "LEFT JOIN packets p ON p.packet_id = v.packet_id LEFT JOIN packet_blobs b ON b.seq = p.seq "
            "WHERE v.record = ? ORDER BY v.version", (rec["id"],))
    current = None
    for v in versions:
        blob = v.pop("content")
        body = codec.decode(blob) if blob else None
        v["content"] = (body["content"] if v["kind"] == "amend" else body) if body and v["kind"] != "withdraw" else None
        if v["packet_id"] == rec["current"]:
            current = v["content"]
    first = next((v for v in versions if v["packet_id"] == rec["packet_id"]), None)
    return {
        "direction": "received", "packet_id": rec["packet_id"], "type": rec["type"],
        "sender": rec["sender"], "status": rec["status"], "version": rec["version"],
        "content": current, "created": rec["created"], "received_at": rec["received_at"],
        "updated_at": rec["updated_at"], "original_seen": bool(rec["original_seen"]),
        "log_index": first["log_index"] if first else None, "signer": first["signer"] if first else None,
        "withdrawn": None if rec["withdrawn_by"] is None else {
            "packet_id": rec["withdrawn_by"], "at": rec["withdrawn_at"], "reason": rec["withdrawn_reason"]},
        "versions": versions, "receipts": [r for v in versions for r in receipts_for(db, v["packet_id"])],
    }


def _show_sent(db: sqlite_utils.Database, row: dict[str, Any]) -> dict[str, Any]:
    later = _dicts(db, "SELECT packet_id, type, created, sent_at, log_index FROM sent WHERE ref = ? "
                       "ORDER BY created, packet_id", (row["packet_id"],))
    status = ("withdrawn" if any(x["type"] == "withdraw" for x in later) else
              "amended" if any(x["type"] == "amend" for x in later) else "sent")
    return {
        "direction": "sent", "packet_id": row["packet_id"], "type": row["type"], "ref": row["ref"],
        "topic": row["topic"], "recipients": json.loads(row["recipients"]), "created": row["created"],
        "log_index": row["log_index"], "promise": row["promise"], "sent_at": row["sent_at"],
        "content": codec.decode(row["content"]), "status": status, "later": later,
        "receipts": receipts_for(db, row["packet_id"]),
    }


def freezes(db: sqlite_utils.Database, *, active_only: bool, today: str,
            include_withdrawn: bool) -> list[dict[str, Any]]:
    where = "" if include_withdrawn else "AND r.status != 'withdrawn'"
    rows = _dicts(
        db, "SELECT r.id AS record, r.packet_id, r.sender, r.status AS record_status, r.version, "
            "f.authority, f.authority_country, f.legal_basis, f.reference, f.status, f.effective, "
            "f.expires, e.schema AS subject_schema, e.caption AS subject FROM freezes f "
            "JOIN records r ON r.id = f.record JOIN entities e ON e.record = f.record AND e.role = 'subject' "
            f"WHERE 1 {where} ORDER BY f.effective DESC, r.packet_id")
    out = []
    for row in rows:
        row["assets"] = _dicts(
            db, "SELECT local_id AS id, kind, id_kind, id_value, amount, currency, quantity, unit, "
                "holder, institution, description, status FROM assets WHERE record = ? ORDER BY id",
            (row.pop("record"),))
        row["active"] = (row["record_status"] != "withdrawn" and row["status"] != "lifted"
                         and (row["expires"] is None or row["expires"] >= today)
                         and any(a["status"] == "frozen" for a in row["assets"]))
        if row["active"] or not active_only:
            out.append(row)
    return out


def stats(db: sqlite_utils.Database) -> dict[str, Any]:
    def count(sql: str) -> int:
        return int(_dicts(db, f"SELECT COUNT(*) AS n {sql}")[0]["n"])

    return {
        "packets": {r["type"]: r["n"] for r in _dicts(
            db, "SELECT type, COUNT(*) AS n FROM packets WHERE action = 'store' GROUP BY type ORDER BY type")},
        "records": {r["status"]: r["n"] for r in _dicts(
            db, "SELECT status, COUNT(*) AS n FROM records GROUP BY status ORDER BY status")},
        "entities": count("FROM entities"), "names": count("FROM names"),
        "identifiers": count("FROM identifiers"), "quarantined": count("FROM quarantine"),
        "dropped": count("FROM packets WHERE action = 'drop'"), "receipts": count("FROM receipts"),
        "sent": count("FROM sent"), "receipts_sent": count("FROM sent WHERE type = 'receipt'"),
        "outbox": count("FROM outbox"),
    }
