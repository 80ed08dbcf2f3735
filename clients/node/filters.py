"""Subscription filters: declarative rules that decide what a node keeps and whom it tells.

The rule language, its evaluation order and the watch list formats are specified in
docs/node.md ("Filters"); this module is their one implementation. Rules are data read
from the node's TOML configuration, never code (no ``eval``). :meth:`FilterSet.from_config`
checks everything at start-up and raises :class:`ConfigError` naming the rule, so a typo
fails loudly instead of silently matching nothing. :meth:`FilterSet.decide` runs for every
packet, so watch lists are compiled once: identifier keys into a set, names prepared and
indexed by the blocking keys of the node's name search (``clients/node/names.py``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

from clients.node.names import MATCH_THRESHOLD, MAX_NAME_CHARS, PreparedName, key_kind, prepare, query_keys, score
from hub.confpath import config_path
from hub.protocol.content import CATEGORIES, PACKET_TYPES, SEVERITIES, TLP_LEVELS, entities_of, identifiers_of
from hub.protocol.entities import SCHEMAS
from hub.protocol.envelope import Header
from hub.protocol.errors import ConfigError, ValidationError
from hub.protocol.identifiers import country_code, normalize_identifier, resolve_kind
from hub.protocol.topics import check_pattern, matches

__all__ = ["Decision", "FilterSet", "IdentifierWatchList", "NameWatchList", "Rule", "STORE_ALL"]

Action = Literal["store", "drop"]
#: A watch list file larger than this is refused: it would make start-up slow and memory heavy.
MAX_WATCHLIST_BYTES: Final[int] = 64 << 20
#: Names are analysed and kept in memory (about 1 KiB each), identifiers are short strings.
MAX_WATCHLIST_NAMES: Final[int] = 200_000
MAX_WATCHLIST_IDENTIFIERS: Final[int] = 2_000_000
#: A one-consonant-skeleton key shared by more listed names than this ("mhmt") is too
#: common to be evidence; pair and spelling keys always count. Bounds the cost per name.
MAX_SKELETON_POSTINGS: Final[int] = 256
MAX_CANDIDATES_PER_NAME: Final[int] = 2_000
#: Explanations kept per watch list and rule, so a packet of 200 hits logs a readable line.
MAX_EXPLAINED: Final[int] = 5
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHOWN_KIND: Final = {"iban": "IBAN", "bic": "BIC", "imo": "IMO", "mmsi": "MMSI", "lei": "LEI"}

_CONDITIONS: Final = ("packet_type", "topic", "sender", "category", "severity", "min_severity", "tlp",
                      "max_tlp", "schema", "countries", "nationality", "watchlist", "threshold")
_ACTIONS: Final = ("action", "notify", "processed")
_RULE_KEYS: Final = frozenset({"name", "description", *_CONDITIONS, *_ACTIONS})
#: Keys people plausibly write for a known one; difflib would not guess these.
_ALIASES: Final = {"type": "packet_type", "types": "packet_type", "entity_type": "schema",
                   "schemas": "schema", "nation": "sender", "sender_nation": "sender",
                   "country": "countries", "sink": "notify", "sinks": "notify", "watchlists": "watchlist",
                   "watch_list": "watchlist", "categories": "category", "min_tlp": "tlp"}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one packet, and why (docs/node.md "Evaluation")."""

    action: Action
    #: Sinks to notify, in rule order, each once; empty when dropped.
    sinks: tuple[str, ...]
    #: Send a signed "processed" receipt to the originator.
    processed: bool
    #: The rule that decided store or drop; None when no rule matched (stored by default).
    rule: str | None
    #: Why watch lists matched, e.g. "watch list 'eu': IBAN FR76..." (capped per list).
    matches: tuple[str, ...]
    #: Every rule that matched and took effect, in order (for the audit log).
    rules: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        return self.action == "store"


STORE_ALL: Final = Decision("store", (), False, None, ())


@dataclass(frozen=True, eq=False)
class IdentifierWatchList:
    """Canonical ``(type, value)`` keys, the same form content identifiers take."""

    name: str
    path: Path
    keys: frozenset[tuple[str, str]]

    def explain(self, key: tuple[str, str]) -> str:
        return f"watch list '{self.name}': {_SHOWN_KIND.get(key[0], key[0])} {key[1]}"


@dataclass(frozen=True, eq=False)
class NameWatchList:
    """Names analysed once, and an inverted index from blocking key to entries."""

    name: str
    path: Path
    threshold: float
    entries: tuple[PreparedName, ...]
    index: dict[str, tuple[int, ...]]

    def hits(self, names: Iterable[str], floor: float) -> list[tuple[float, str, str]]:
        """``(score, packet name, listed name)`` at or above ``floor``, best first."""
        found: list[tuple[float, str, str]] = []
        for name in names:
            query = prepare(name)
            candidates: set[int] = set()
            for key in query_keys(name):
                posting = self.index.get(key, ())
                if key_kind(key) != "skeleton" or len(posting) <= MAX_SKELETON_POSTINGS:
                    candidates.update(posting)
            for i in sorted(candidates)[:MAX_CANDIDATES_PER_NAME]:
                value = score(query, self.entries[i], explain=False).score
                if value >= floor:
                    found.append((value, name, self.entries[i].original))
        found.sort(key=lambda h: (-h[0], h[1], h[2]))
        return found


class _Facts:
    """What rules look at in one packet, each computed at most once and only if asked."""

    def __init__(self, header: Header, content: dict[str, Any], floors: dict[str, float]) -> None:
        self.header = header
        self.floors = floors
        self.kind: str = content.get("type", "")
        # An amendment is judged by its new version; withdrawals and receipts carry no entities.
        self.inner: dict[str, Any] | None = (
            content.get("content") if self.kind == "amend" else content if self.kind in ("alert", "freeze")
            else None)
        self.types = {self.kind} | ({self.inner["type"]} if self.kind == "amend" and self.inner else set())
        self.name_hits: dict[str, list[tuple[float, str, str]]] = {}

    @cached_property
    def entities(self) -> list[dict[str, Any]]:
        return entities_of(self.inner) if self.inner else []

    @cached_property
    def schemas(self) -> set[str]:
        return {e["schema"] for e in self.entities}

    @cached_property
    def identifiers(self) -> list[tuple[str, str]]:
        return [(i["type"], i["value"]) for i in identifiers_of(self.inner)] if self.inner else []

    @cached_property
    def nationality(self) -> set[str]:
        return {c for e in self.entities for c in e.get("nationality", ())}

    @cached_property
    def countries(self) -> set[str]:
        out = set(self.nationality)
        for e in self.entities:
            out.update(e.get("countries", ()))
            out.update(e[k] for k in ("jurisdiction", "flag") if k in e)
        for ident in identifiers_of(self.inner) if self.inner else ():
            if "country" in ident:
                out.add(ident["country"])
            if ident["type"] == "iban":
                out.add(ident["value"][:2])  # an IBAN names its account's country
        return out

    @cached_property
    def names(self) -> list[str]:
        found = [n for e in self.entities for n in (*e.get("names", ()), *e.get("aliases", ()))]
        found += [a["holder"] for a in (self.inner or {}).get("assets", ()) if "holder" in a]
        return list(dict.fromkeys(found))

    def handling(self, key: str) -> str | None:
        return self.inner["handling"][key] if self.inner else None


@dataclass(frozen=True, eq=False)
class Rule:
    """One ``[[filters]]`` entry, checked. ``None`` means "no condition on this"."""

    name: str
    packet_types: frozenset[str] | None = None
    topics: tuple[str, ...] | None = None
    senders: frozenset[str] | None = None
    categories: frozenset[str] | None = None
    severities: frozenset[str] | None = None
    min_severity: int | None = None
    tlps: frozenset[str] | None = None
    max_tlp: int | None = None
    schemas: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    nationality: frozenset[str] | None = None
    id_lists: tuple[IdentifierWatchList, ...] = ()
    name_lists: tuple[NameWatchList, ...] = ()
    threshold: float | None = None
    action: Action = "store"
    notify: tuple[str, ...] = ()
    processed: bool = False

    def check(self, f: _Facts) -> list[str] | None:
        """None if the rule does not match; else the explanations of its watch list hits."""
        h = f.header
        if self.packet_types is not None and not self.packet_types & f.types:
            return None
        if self.topics is not None and not any(matches(p, h.topic) for p in self.topics):
            return None
        if self.senders is not None and h.sender not in self.senders:
            return None
        inner = f.inner
        if inner is None:
            # Withdrawals and receipts: only type, topic and sender conditions can hold.
            return None if self._needs_content else []
        if self.categories is not None and inner.get("category") not in self.categories:
            return None
        severity = inner.get("severity")
        if self.severities is not None and severity not in self.severities:
            return None
        if self.min_severity is not None and (severity is None or SEVERITIES.index(severity) < self.min_severity):
            return None
        tlp = f.handling("tlp")
        if self.tlps is not None and tlp not in self.tlps:
            return None
        if self.max_tlp is not None and TLP_LEVELS.index(tlp) > self.max_tlp:  # type: ignore[arg-type]
            return None
        for wanted, have in ((self.schemas, "schemas"), (self.countries, "countries"),
                             (self.nationality, "nationality")):
            if wanted is not None and wanted.isdisjoint(getattr(f, have)):
                return None
        if not (self.id_lists or self.name_lists):
            return []
        why = self._watch(f)
        return why or None

    @cached_property
    def _needs_content(self) -> bool:
        return any(v is not None for v in (self.categories, self.severities, self.min_severity, self.tlps,
                                           self.max_tlp, self.schemas, self.countries, self.nationality)) \
            or bool(self.id_lists or self.name_lists)

    def _watch(self, f: _Facts) -> list[str]:
        """Watch list conditions are any-of across the lists the rule names."""
        why: list[str] = []
        for wl in self.id_lists:
            keys = [k for k in dict.fromkeys(f.identifiers) if k in wl.keys]
            why += [wl.explain(k) for k in keys[:MAX_EXPLAINED]]
            why += [f"watch list '{wl.name}': and {len(keys) - MAX_EXPLAINED} more"] * (len(keys) > MAX_EXPLAINED)
        for nl in self.name_lists:
            threshold = nl.threshold if self.threshold is None else self.threshold
            if nl.name not in f.name_hits:  # shared by every rule naming the list
                f.name_hits[nl.name] = nl.hits(f.names, f.floors[nl.name])
            hits = [hit for hit in f.name_hits[nl.name] if hit[0] >= threshold]
            why += [f"watch list '{nl.name}': name '{q}' ~ '{c}' {s:.2f}" for s, q, c in hits[:MAX_EXPLAINED]]
            why += [f"watch list '{nl.name}': and {len(hits) - MAX_EXPLAINED} more"] * (len(hits) > MAX_EXPLAINED)
        return why


class FilterSet:
    """Rules in order, with the watch lists they use. See docs/node.md for the semantics."""

    def __init__(self, rules: Sequence[Rule], watchlists: dict[str, IdentifierWatchList | NameWatchList]) -> None:
        self.rules = tuple(rules)
        self.watchlists = dict(watchlists)
        # Each name list is scored once per packet, at the lowest threshold any rule asks of it.
        self._floors = {name: min([wl.threshold] + [r.threshold for r in self.rules if r.threshold is not None
                                                    and any(x.name == name for x in r.name_lists)])
                        for name, wl in self.watchlists.items() if isinstance(wl, NameWatchList)}

    def __len__(self) -> int:
        return len(self.rules)

    def decide(self, header: Header, content: dict[str, Any]) -> Decision:
        """Apply the rules to one opened packet (``content`` as validated)."""
        if not self.rules:
            return STORE_ALL
        facts = _Facts(header, content, self._floors)
        decided: Rule | None = None
        sinks: dict[str, None] = {}
        processed = False
        why: list[str] = []
        names: list[str] = []
        for rule in self.rules:
            if decided is not None and rule.action == "drop":
                continue  # once stored, a packet is kept: later drop rules don't apply
            hit = rule.check(facts)
            if hit is None:
                continue
            names.append(rule.name)
            why += hit
            if rule.action == "drop":
                return Decision("drop", (), False, rule.name, tuple(dict.fromkeys(why)), tuple(names))
            decided = decided or rule
            sinks.update(dict.fromkeys(rule.notify))
            processed = processed or rule.processed
        return Decision("store", tuple(sinks), processed, decided.name if decided else None,
                        tuple(dict.fromkeys(why)), tuple(names))

    @classmethod
    def from_config(cls, doc: dict[str, Any], base: Path) -> FilterSet:
        """Read ``[watchlists.NAME]`` and ``[[filters]]`` of a parsed node config.

        Relative watch list paths are relative to ``base`` (the config file's directory).
        ``[sinks.NAME]`` tables are only looked up, to check that ``notify`` names exist.
        """
        watchlists = {name: _load_watchlist(name, table, base)
                      for name, table in _tables(doc, "watchlists").items()}
        sinks = set(_tables(doc, "sinks", check=False))
        raw = doc.get("filters", [])
        if not isinstance(raw, list):
            raise ConfigError("filters: write each rule as a [[filters]] table (an array of tables)")
        rules: list[Rule] = []
        for i, table in enumerate(raw):
            rule = _parse_rule(table, f"filters[{i}]", watchlists, sinks)
            if any(r.name == rule.name for r in rules):
                raise ConfigError(f'filters[{i}] ("{rule.name}"): name: another rule already has this name')
            rules.append(rule)
        return cls(rules, watchlists)


def _tables(doc: dict[str, Any], key: str, check: bool = True) -> dict[str, Any]:
    section = doc.get(key, {})
    if not isinstance(section, dict) or (check and not all(isinstance(t, dict) for t in section.values())):
        raise ConfigError(f"{key}: expected [{key}.NAME] tables")
    if check:
        for name in section:
            if not _NAME_RE.fullmatch(name):
                raise ConfigError(f'{key}.{name}: a name is 1-64 letters, digits, "_", "-" or "."')
    return section


class _Reader:
    """Reads one config table; every error starts with ``where`` (the rule or list)."""

    def __init__(self, data: object, where: str, allowed: Iterable[str], what: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table")
        self.data, self.where = data, where
        for key in data:
            if key not in allowed:
                close = [_ALIASES[key]] if key in _ALIASES else difflib.get_close_matches(key, sorted(allowed), n=1)
                self.fail(f'unknown {what} "{key}"' + (f' (did you mean "{close[0]}"?)' if close else ""))

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.where}: {message}")

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(f"{key}: must be a non-empty string, not {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        """A string or a list of them (any-of); an empty list would never match."""
        value = self.data.get(key)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
            self.fail(f"{key}: must be a string or a non-empty list of strings, not {value!r}")
        return tuple(items)

    def choice(self, key: str, raw: str, vocab: Sequence[str], label: str, canon: Callable[[str], str]) -> str:
        value = canon(raw.strip())
        if value not in vocab:
            close = difflib.get_close_matches(value, vocab, n=1)
            hint = f'did you mean "{close[0]}"?' if close else "one of: " + ", ".join(vocab)
            self.fail(f'{key}: "{raw}" is not {label} ({hint})')
        return value

    def choices(self, key: str, vocab: Sequence[str], label: str,
                canon: Callable[[str], str] = str.lower) -> frozenset[str] | None:
        values = self.strings(key)
        return None if values is None else frozenset(self.choice(key, v, vocab, label, canon) for v in values)

    def rank(self, key: str, scale: Sequence[str], label: str, canon: Callable[[str], str] = str.lower) -> int | None:
        """The position of a one-value threshold on an ordered scale (severity, TLP)."""
        raw = self.string(key)
        return None if raw is None else scale.index(self.choice(key, raw, scale, label, canon))

    def countries(self, key: str) -> frozenset[str] | None:
        values = self.strings(key)
        try:
            return None if values is None else frozenset(country_code(v) for v in values)
        except ValidationError as exc:
            self.fail(f"{key}: {exc.reason}")

    def topics(self, key: str) -> tuple[str, ...] | None:
        values = self.strings(key)
        try:
            return None if values is None else tuple(check_pattern(p, key) for p in values)
        except ValidationError as exc:
            self.fail(str(exc))

    def defined(self, key: str, known: Iterable[str], section: str) -> tuple[str, ...]:
        """Names that must have a ``[section.NAME]`` table."""
        names = self.strings(key) or ()
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                self.fail(f'{key}: "{name}" is not defined' + (f' (did you mean "{close[0]}"?)' if close else
                                                               f" (add a [{section}.{name}] table)"))
        return tuple(dict.fromkeys(names))

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= 1):
            self.fail(f"{key}: must be a number above 0 and at most 1 (a name score), not {value!r}")
        return None if value is None else float(value)


def _tlp(raw: str) -> str:
    return raw.upper().removeprefix("TLP:")


def _schema(raw: str) -> str:
    return {s.lower(): s for s in SCHEMAS}.get(raw.lower(), raw)


def _parse_rule(table: object, where: str, watchlists: dict[str, Any], sinks: set[str]) -> Rule:
    name = table.get("name") if isinstance(table, dict) else None
    r = _Reader(table, f'{where} ("{name}")' if isinstance(name, str) else where, _RULE_KEYS, "condition")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        r.fail('name: every rule needs a name of 1-64 letters, digits, "_", "-" or "." (used in logs)')
    r.string("description")
    lists = [watchlists[w] for w in r.defined("watchlist", watchlists, "watchlists")]
    name_lists = tuple(w for w in lists if isinstance(w, NameWatchList))
    threshold = r.number("threshold")
    if threshold is not None and not name_lists:
        r.fail("threshold: applies to name watch lists, and this rule names none in watchlist")
    if r.data.get("action") == "notify":
        r.fail('action: "notify" is not an action: write notify = ["SINK"] (notify implies store)')
    action = r.choice("action", r.string("action", "store") or "", ("store", "drop"), "an action", str.lower)
    notify = r.defined("notify", sinks, "sinks")
    processed = r.data.get("processed", False)
    if not isinstance(processed, bool):
        r.fail(f"processed: must be true or false, not {processed!r}")
    if action == "drop" and (notify or processed):
        r.fail("a drop rule cannot notify or mark processed: a dropped packet is not kept")
    return Rule(
        name=name, packet_types=r.choices("packet_type", PACKET_TYPES, "a packet type"),
        topics=r.topics("topic"), senders=r.countries("sender"),
        categories=r.choices("category", CATEGORIES, "a category"),
        severities=r.choices("severity", SEVERITIES, "a severity"),
        min_severity=r.rank("min_severity", SEVERITIES, "a severity"),
        tlps=r.choices("tlp", TLP_LEVELS, "a TLP level", _tlp),
        max_tlp=r.rank("max_tlp", TLP_LEVELS, "a TLP level", _tlp),
        schemas=r.choices("schema", SCHEMAS, "an entity schema", _schema),
        countries=r.countries("countries"), nationality=r.countries("nationality"),
        id_lists=tuple(w for w in lists if isinstance(w, IdentifierWatchList)), name_lists=name_lists,
        threshold=threshold, action="drop" if action == "drop" else "store", notify=notify, processed=processed)


def _load_watchlist(name: str, table: dict[str, Any], base: Path) -> IdentifierWatchList | NameWatchList:
    where = f"watchlists.{name}"
    r = _Reader(table, where, ("type", "path", "threshold", "description"), "field")
    r.string("description")
    kind = r.string("type")
    if kind not in ("identifiers", "names"):
        r.fail(f'type: must be "identifiers" (kind:value lines) or "names" (one name a line), not {kind!r}')
    raw_path = r.string("path")
    if raw_path is None:
        r.fail("path: missing (the watch list file, relative to the configuration file)")
    threshold = r.number("threshold")
    if threshold is not None and kind != "names":
        r.fail("threshold: only name watch lists have a threshold")
    path = config_path(base, str(raw_path), f"{where}: path")
    lines = _read_lines(path, where)
    if kind == "identifiers":
        return IdentifierWatchList(name, path, _identifier_keys(lines, path, where))
    entries: dict[str, PreparedName] = {}
    for number, line in lines:
        if len(line) > MAX_NAME_CHARS:
            raise ConfigError(f"{where}: {path}:{number}: a name is at most {MAX_NAME_CHARS} characters")
        prepared = prepare(line)
        if not prepared.tokens:
            raise ConfigError(f"{where}: {path}:{number}: {line!r} has no letters or digits to match")
        entries.setdefault(line, prepared)
        if len(entries) > MAX_WATCHLIST_NAMES:
            raise ConfigError(f"{where}: {path}: more than {MAX_WATCHLIST_NAMES} names")
    index: dict[str, list[int]] = {}
    for i, prepared in enumerate(entries.values()):
        for key in query_keys(prepared.original):
            index.setdefault(key, []).append(i)
    return NameWatchList(name, path, MATCH_THRESHOLD if threshold is None else threshold,
                         tuple(entries.values()), {k: tuple(v) for k, v in index.items()})


def _read_lines(path: Path, where: str) -> list[tuple[int, str]]:
    """Numbered non-blank lines that are not ``#`` comments, as UTF-8 (a BOM is allowed)."""
    try:
        if path.stat().st_size > MAX_WATCHLIST_BYTES:
            raise ConfigError(f"{where}: {path} is larger than {MAX_WATCHLIST_BYTES >> 20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: path: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: path: cannot read {path} ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}: {path}:{line}: not UTF-8 text") from None
    return [(n, s) for n, line in enumerate(text.splitlines(), 1) if (s := line.strip()) and not s.startswith("#")]


def _identifier_keys(lines: list[tuple[int, str]], path: Path, where: str) -> frozenset[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for number, line in lines:
        kind, sep, value = line.partition(":")
        if not sep or not value.strip():
            raise ConfigError(f'{where}: {path}:{number}: expected kind:value (e.g. "iban:FR76 3000 6000 ..."), '
                              f"got {line!r}")
        try:
            canonical = resolve_kind(kind)
            keys.add((canonical, normalize_identifier(canonical, value.strip())))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {path}:{number}: {exc.reason}") from None
        if len(keys) > MAX_WATCHLIST_IDENTIFIERS:
            raise ConfigError(f"{where}: {path}: more than {MAX_WATCHLIST_IDENTIFIERS} identifiers")
    return frozenset(keys)
