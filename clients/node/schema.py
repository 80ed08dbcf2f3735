"""The node store's tables (numbered migrations) and the mapping of content onto rows.

No I/O here: the DDL as data, and :func:`derive` which turns one version of an alert or
freeze (docs/content.md §7, §8) into the rows of the current view (with a cache of analysed
names). ``store.py`` does the I/O. Tables, and who reads them:

* ``packets`` / ``packet_blobs`` — every packet received, one row each; the blobs (raw signed
  packet, commitment salt, canonical content bytes) sit apart so that scans of the metadata
  stay small. ``raw_packets()`` re-audits from them; ``show`` decodes versions from them.
* ``records`` — one per alert/freeze, keyed by the original's packet id (what ``ref`` names);
  ``versions`` — its history (original, amendments, withdrawals), numbered by signed time.
* the current view of each record: ``entities``, ``names`` (original and normalised),
  ``names_fts`` (FTS5, word/prefix search), ``name_keys`` (fuzzy blocking keys),
  ``identifiers`` (normalised, for ``lookup``), ``links``, ``freezes``, ``assets``.
* ``receipts``, ``sent`` (what this nation published), ``quarantine``, ``outbox`` (sinks).

Two name indexes, two jobs, both FTS5: ``name_keys`` holds :func:`clients.node.names.index_keys`
(phonetic skeletons across scripts) and answers fuzzy search with bounded, length-ordered
postings; ``names_fts`` answers exact word and prefix queries (``Rash*``) over the names as
written and normalised, which skeletons cannot.

Indexes, by the lookup that needs them: packet id (duplicates, ``show``, ``has_packet``), log
index (audits), ``ref`` (versions), record's original id (amendments, ``show``), versions by
record, entities by record, names by entity, identifier digest (``lookup``), links, assets and
freeze by record, freeze status, receipts by ``ref`` (``status``), sent by ``ref``, quarantine
by digest (idempotence), outbox by sink and due time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from clients.node import names as namelib

#: Migration N is MIGRATIONS[N - 1]; applied by hub.migrations.migrate, recorded in
#: ``schema_migrations``. Never edit a released step: append a new one.
MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE packets (
        seq         INTEGER PRIMARY KEY,
        packet_id   TEXT NOT NULL UNIQUE,      -- UUID, as Header.packet_id writes it
        type        TEXT NOT NULL,             -- alert | freeze | amend | withdraw | receipt
        sender      TEXT NOT NULL,             -- nation (signed header)
        signer      BLOB NOT NULL,             -- certificate fingerprint
        signer_name TEXT NOT NULL,             -- NATION/subject of that certificate
        topic       TEXT NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        ref         TEXT,                      -- amend / withdraw / receipt: the packet named
        log_index   INTEGER,
        received_at INTEGER NOT NULL,
        action      TEXT NOT NULL,             -- store | drop (filtered out: raw kept only)
        rule        TEXT,
        processed   INTEGER NOT NULL DEFAULT 0,
        proof       TEXT                       -- inclusion proof (JSON), when the node had one
    );
    CREATE INDEX packets_log ON packets (log_index) WHERE log_index IS NOT NULL;
    CREATE INDEX packets_ref ON packets (ref) WHERE ref IS NOT NULL;
    CREATE TABLE packet_blobs (
        seq     INTEGER PRIMARY KEY,           -- packets.seq
        raw     BLOB NOT NULL,
        salt    BLOB,
        content BLOB                           -- canonical msgpack the header commits to
    );
    CREATE TABLE records (
        id               INTEGER PRIMARY KEY,
        packet_id        TEXT NOT NULL UNIQUE, -- the original's id, what amendments ref
        type             TEXT,                 -- alert | freeze; NULL while only a withdrawal is known
        sender           TEXT NOT NULL,        -- the originator: the only nation that may change it
        status           TEXT NOT NULL,        -- active | amended | withdrawn
        version          INTEGER NOT NULL,     -- number of the current version (0: none yet)
        current          TEXT,                 -- packet id holding the current content
        original_seen    INTEGER NOT NULL,
        created          INTEGER NOT NULL,     -- signed time of the earliest version held
        received_at      INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        withdrawn_at     INTEGER,
        withdrawn_reason TEXT,
        withdrawn_by     TEXT                  -- packet id of the withdrawal
    );
    CREATE INDEX records_status ON records (status, created);
    CREATE TABLE versions (
        id          INTEGER PRIMARY KEY,
        record      INTEGER NOT NULL,
        version     INTEGER NOT NULL,          -- 1.. by (signed created, packet id)
        packet_id   TEXT NOT NULL UNIQUE,
        kind        TEXT NOT NULL,             -- original | amend | withdraw
        sender      TEXT NOT NULL,
        created     INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        reason      TEXT,
        rejected    TEXT                       -- why it does not count (not from the originator)
    );
    CREATE INDEX versions_record ON versions (record, version);
    CREATE TABLE entities (
        id        INTEGER PRIMARY KEY,
        record    INTEGER NOT NULL,
        local_id  TEXT NOT NULL,               -- the id inside the packet ("e1", "s1")
        schema    TEXT NOT NULL,
        role      TEXT NOT NULL,               -- entity | subject (of a freeze)
        caption   TEXT NOT NULL,               -- first name, address or identifier: for display
        countries TEXT NOT NULL                -- countries, nationality, jurisdiction, flag: "FR LY"
    );
    CREATE INDEX entities_record ON entities (record);
    CREATE TABLE names (
        id         INTEGER PRIMARY KEY,
        entity     INTEGER NOT NULL,
        name       TEXT NOT NULL,              -- as written, any script
        normalized TEXT NOT NULL,              -- names.normalize_name: ASCII, casefolded
        kind       TEXT NOT NULL,              -- name | alias
        keys       TEXT NOT NULL               -- its blocking keys as indexed, to delete exactly those
    );
    CREATE INDEX names_entity ON names (entity);
    CREATE VIRTUAL TABLE names_fts USING fts5 (
        name, normalized, content = 'names', content_rowid = 'id', columnsize = 0,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    -- Blocking keys, one document per name, rowid = nkeys << 40 | names.id: FTS5 keeps each
    -- posting list in rowid order, so a capped read of a common key ("mhmt") takes the names
    -- with as many keys as the query first, like a (key, nkeys, id) b-tree would. FTS5 rather
    -- than that b-tree: its inserts append segments, where the b-tree's land on random pages
    -- and, at a million entities, made every commit rewrite thousands of them.
    CREATE VIRTUAL TABLE name_keys USING fts5 (
        keys, content = '', detail = none, columnsize = 0, tokenize = "ascii tokenchars '.='"
    );
    -- columnsize = 0: no per-row size table (a b-tree keyed by rowid, which here is not in
    -- insertion order); it serves only bm25 ranking, which neither table uses.
    CREATE TABLE identifiers (
        id     INTEGER PRIMARY KEY,
        record INTEGER NOT NULL,
        entity INTEGER,                        -- the entity it identifies, or
        asset  INTEGER,                        -- the frozen asset it identifies
        kind   TEXT NOT NULL,
        value  TEXT NOT NULL,                  -- canonical (identifiers.normalize_identifier)
        extra  TEXT,                           -- country / chain / platform, JSON
        key    INTEGER NOT NULL                -- identifier_key(kind, value)
    );
    -- Lookups go by a 64-bit digest of (kind, value), then compare both: the index is a third
    -- the size of one on the text, and as its inserts land on random pages, a bulk batch
    -- rewrites most of it: the smaller it is, the less each commit writes.
    CREATE INDEX identifiers_lookup ON identifiers (key);
    CREATE INDEX identifiers_record ON identifiers (record);
    CREATE TABLE links (
        record     INTEGER NOT NULL,
        src        INTEGER NOT NULL,           -- entities.id: "src is the <type> of dst"
        dst        INTEGER NOT NULL,
        type       TEXT NOT NULL,
        role       TEXT,
        start_date TEXT,
        end_date   TEXT
    );
    CREATE INDEX links_record ON links (record);
    CREATE INDEX links_src ON links (src);
    CREATE INDEX links_dst ON links (dst);
    CREATE TABLE freezes (
        record            INTEGER PRIMARY KEY,
        authority         TEXT NOT NULL,
        authority_country TEXT NOT NULL,
        legal_basis       TEXT NOT NULL,
        reference         TEXT NOT NULL,
        status            TEXT NOT NULL,       -- issued | extended | lifted
        effective         TEXT NOT NULL,
        expires           TEXT
    );
    CREATE INDEX freezes_status ON freezes (status, expires);
    CREATE TABLE assets (
        id          INTEGER PRIMARY KEY,
        record      INTEGER NOT NULL,
        local_id    TEXT NOT NULL,
        kind        TEXT NOT NULL,
        id_kind     TEXT,
        id_value    TEXT,
        amount      TEXT,                      -- exact decimal, never a float
        currency    TEXT,
        quantity    TEXT,
        unit        TEXT,
        holder      TEXT,
        institution TEXT,
        description TEXT,
        status      TEXT NOT NULL              -- frozen | lifted
    );
    CREATE INDEX assets_record ON assets (record);
    CREATE TABLE receipts (
        packet_id   TEXT PRIMARY KEY,          -- the receipt's own packet
        ref         TEXT NOT NULL,             -- the packet acknowledged
        nation      TEXT NOT NULL,             -- who acknowledged it (the receipt's sender)
        status      TEXT NOT NULL,             -- delivered | processed
        at          TEXT NOT NULL,             -- the receipt's own timestamp
        note        TEXT,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX receipts_ref ON receipts (ref, received_at);
    CREATE TABLE sent (
        packet_id  TEXT PRIMARY KEY,
        type       TEXT NOT NULL,
        ref        TEXT,
        topic      TEXT NOT NULL,
        recipients TEXT NOT NULL,              -- JSON list of nations
        created    INTEGER NOT NULL,
        log_index  INTEGER,
        promise    TEXT,
        sent_at    INTEGER NOT NULL,
        content    BLOB NOT NULL,              -- canonical msgpack
        raw        BLOB NOT NULL
    );
    CREATE INDEX sent_ref ON sent (ref) WHERE ref IS NOT NULL;
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY,
        digest      BLOB NOT NULL UNIQUE,      -- SHA-256 of raw: the same bytes twice are one entry
        packet_id   TEXT,
        reason      TEXT NOT NULL,
        log_index   INTEGER,
        received_at INTEGER NOT NULL,
        raw         BLOB NOT NULL
    );
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY,
        sink       TEXT NOT NULL,
        packet_id  TEXT NOT NULL,
        payload    TEXT NOT NULL,              -- JSON
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER NOT NULL,
        last_error TEXT
    );
    CREATE INDEX outbox_due ON outbox (sink, next_at);
    """,
    # The hub subscriptions this node made, so that one dropped from its configuration is removed
    # at the hub too (there it would hold every packet it is owed until the packet expires).
    """
    CREATE TABLE hub_subscriptions (
        name     TEXT PRIMARY KEY,
        patterns TEXT NOT NULL,   -- JSON list
        since    INTEGER NOT NULL
    );
    """,
]

#: Entity fields (besides the lists ``countries`` and ``nationality``) that name a country.
SINGLE_COUNTRY_FIELDS: Final = ("jurisdiction", "flag")
#: rowid of a name's document in ``name_keys``: ``nkeys << KEY_SHIFT | names.id``.
KEY_SHIFT: Final[int] = 40
NAME_ID_MASK: Final[int] = (1 << KEY_SHIFT) - 1


NameRow = tuple[str, str, int]
_ANALYSED: dict[str, NameRow] = {}
_ANALYSED_MAX: Final = 1 << 18  # about 60 MiB of common names, then start afresh


def analyse_name(name: str) -> NameRow:
    """``(normalized, blocking keys joined by spaces, number of keys)``; cached, as names repeat."""
    row = _ANALYSED.get(name)
    if row is None:
        row = _analyse(name)
        remember({name: row})
    return row


def _analyse(name: str) -> NameRow:
    keys = namelib.index_keys(name)
    return namelib.normalize_name(name), " ".join(keys), len(keys)


def analyse_names(batch: list[str]) -> dict[str, NameRow]:
    """:func:`analyse_name` of many names: what a bulk load's helper process runs."""
    return {name: _analyse(name) for name in batch}


def remember(rows: dict[str, NameRow]) -> None:
    """Add analysed names to the cache (a helper process's results, in bulk loads)."""
    if len(_ANALYSED) + len(rows) > _ANALYSED_MAX:
        _ANALYSED.clear()  # crude but O(1) per name; common names come straight back
    _ANALYSED.update(rows)


def unknown_names(names: list[str]) -> list[str]:
    return [n for n in dict.fromkeys(names) if n not in _ANALYSED]


@dataclass
class Ids:
    """Next free row ids, allocated here so a batch's rows can go in with executemany."""

    seq: int = 1
    record: int = 1
    entity: int = 1
    name: int = 1
    asset: int = 1
    identifier: int = 1

    def take(self, what: str) -> int:
        value: int = getattr(self, what)
        setattr(self, what, value + 1)
        return value


@dataclass
class Rows:
    """Rows of the current view waiting for one executemany per table."""

    entities: list[tuple[Any, ...]] = field(default_factory=list)
    names: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[int, str]] = field(default_factory=list)
    identifiers: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    freezes: list[tuple[Any, ...]] = field(default_factory=list)
    assets: list[tuple[Any, ...]] = field(default_factory=list)


#: INSERT statement per Rows field, in the column order derive() writes.
INSERTS: Final[dict[str, str]] = {
    "entities": "INSERT INTO entities VALUES (?, ?, ?, ?, ?, ?, ?)",
    "names": "INSERT INTO names VALUES (?, ?, ?, ?, ?, ?)",
    "keys": "INSERT INTO name_keys (rowid, keys) VALUES (?, ?)",
    "identifiers": "INSERT INTO identifiers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "links": "INSERT INTO links VALUES (?, ?, ?, ?, ?, ?, ?)",
    "freezes": "INSERT INTO freezes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "assets": "INSERT INTO assets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
}
FTS_INSERT: Final = "INSERT INTO names_fts (rowid, name, normalized) VALUES (?, ?, ?)"


def identifier_key(kind: str, value: str) -> int:
    """The lookup index key of a canonical identifier: 64 bits of BLAKE2b over kind and value."""
    digest = hashlib.blake2b(f"{kind}\x00{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # SQLite integers are signed 64-bit


def _extra(ident: dict[str, str]) -> str | None:
    # Only country / chain / platform, whose canonical values need no JSON escaping; an
    # f-string is a fifth of json.dumps' cost, which showed in bulk ingest.
    if len(ident) == 2:
        return None
    rest = [(k, v) for k, v in sorted(ident.items()) if k != "type" and k != "value"]
    if any('"' in v or "\\" in v for _, v in rest):  # not canonical content: be safe anyway
        return json.dumps(dict(rest))
    return "{" + ", ".join(f'"{k}": "{v}"' for k, v in rest) + "}"


def entity_countries(entity: dict[str, Any]) -> str:
    """Every country an entity is tied to, as ``"FR LY"`` (what the country filter reads)."""
    found = [*entity.get("countries", ()), *entity.get("nationality", ())]
    for f in SINGLE_COUNTRY_FIELDS:
        if f in entity:
            found.append(entity[f])
    return " ".join(sorted(set(found))) if len(found) > 1 else "".join(found)


def _caption(entity: dict[str, Any]) -> str:
    if entity.get("names"):
        return str(entity["names"][0])
    if "full" in entity:
        return str(entity["full"])
    idents = entity.get("identifiers") or [{"value": entity["id"]}]
    return str(idents[0]["value"])


def _entity(rows: Rows, ids: Ids, record: int, entity: dict[str, Any], role: str) -> int:
    eid = ids.entity
    ids.entity += 1
    rows.entities.append((eid, record, entity["id"], entity["schema"], role, _caption(entity),
                          entity_countries(entity)))
    for kind, items in (("name", entity.get("names", ())), ("alias", entity.get("aliases", ()))):
        for name in items:
            normalized, keys, nkeys = analyse_name(name)
            nid = ids.name
            ids.name += 1
            rows.names.append((nid, eid, name, normalized, kind, keys))
            if keys:
                rows.keys.append(((nkeys << KEY_SHIFT) | nid, keys))
    for ident in entity.get("identifiers", ()):
        kind, value = ident["type"], ident["value"]
        rows.identifiers.append((ids.identifier, record, eid, None, kind, value, _extra(ident),
                                 identifier_key(kind, value)))
        ids.identifier += 1
    return eid


def derive(rows: Rows, ids: Ids, record: int, content: dict[str, Any]) -> None:
    """Append the current-view rows of ``content`` (a validated alert or freeze) to ``rows``.

    Identifier values are taken as they are: validated content already holds the canonical
    form from ``normalize_identifier`` (docs/content.md §5), the same key ``lookup`` builds.
    """
    if content["type"] == "alert":
        local = {e["id"]: _entity(rows, ids, record, e, "entity") for e in content["entities"]}
        for link in content.get("links", ()):
            rows.links.append((record, local[link["from"]], local[link["to"]], link["type"],
                               link.get("role"), link.get("start_date"), link.get("end_date")))
        return
    _entity(rows, ids, record, content["subject"], "subject")
    authority = content["authority"]
    rows.freezes.append((record, authority["name"], authority["country"], content["legal_basis"],
                         content["reference"], content["status"], content["effective"],
                         content.get("expires")))
    for asset in content["assets"]:
        aid = ids.take("asset")
        ident = asset.get("identifier")
        rows.assets.append((
            aid, record, asset["id"], asset["kind"], ident and ident["type"], ident and ident["value"],
            asset.get("amount"), asset.get("currency"), asset.get("quantity"), asset.get("unit"),
            asset.get("holder"), asset.get("institution"), asset.get("description"), asset["status"]))
        if ident:
            kind, value = ident["type"], ident["value"]
            rows.identifiers.append((ids.take("identifier"), record, None, aid, kind, value, _extra(ident),
                                     identifier_key(kind, value)))
