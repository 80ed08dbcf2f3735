"""Entities and links of the content model (FollowTheMoney vocabulary), and the
field readers every content validator shares. No I/O.

The rules are in docs/content.md ("Entities", "Links"); this module is their one
implementation. Validators return NEW normalised values and raise
:class:`ValidationError` naming the path of the first problem.
"""

from __future__ import annotations

import datetime
import decimal
import difflib
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping, Set
from typing import Any, Final

from .errors import ValidationError
from .identifiers import (
    EXTRA_FIELDS, IDENTIFIER_TYPES, country_code, normalize_chain, normalize_identifier,
    normalize_platform, resolve_kind, show, split_wallet, type_name,
)

MAX_ID_LEN: Final[int] = 64
MAX_NAME_LEN: Final[int] = 200
MAX_SHORT_LEN: Final[int] = 300
MAX_TEXT_LEN: Final[int] = 10_000
MAX_NAMES: Final[int] = 20
MAX_ALIASES: Final[int] = 50
MAX_IDENTIFIERS: Final[int] = 50
MAX_COUNTRIES: Final[int] = 20
MAX_AMOUNT_DIGITS: Final[int] = 15  # integer digits of a decimal: 10^15 exceeds any asset

#: FtM schema names. FtM calls an online account "UserAccount"; Phone and Email are
#: intelhub additions (FtM keeps them as properties) so they can be linked to.
SCHEMAS: Final[tuple[str, ...]] = (
    "Person", "Organization", "Company", "LegalEntity", "Vessel", "Vehicle", "Airplane",
    "BankAccount", "CryptoWallet", "Phone", "Email", "UserAccount", "Address",
)
LEGAL_ENTITY_SCHEMAS: Final = ("Person", "Organization", "Company", "LegalEntity")
_COMMON: Final = frozenset({"id", "schema", "names", "aliases", "identifiers", "countries", "notes"})
_ORG: Final = frozenset({"addresses", "incorporation_date", "dissolution_date", "jurisdiction"})
#: Fields each schema has besides the common ones.
SCHEMA_FIELDS: Final[dict[str, frozenset[str]]] = {
    "Person": frozenset({"addresses", "nationality", "birth_date", "death_date", "birth_place", "gender"}),
    "Organization": _ORG, "Company": _ORG, "LegalEntity": _ORG,
    "Vessel": frozenset({"flag"}), "Vehicle": frozenset({"model"}), "Airplane": frozenset({"model"}),
    "BankAccount": frozenset({"institution"}), "Address": frozenset({"full", "city", "postal_code"}),
    "CryptoWallet": frozenset(), "Phone": frozenset(), "Email": frozenset(), "UserAccount": frozenset(),
}
#: Schemas an identifier of these kinds can stand for instead of a name.
IDENTIFIED_BY: Final[dict[str, tuple[str, ...]]] = {
    "BankAccount": ("iban", "account"), "CryptoWallet": ("crypto_wallet",), "Phone": ("phone",),
    "Email": ("email",), "UserAccount": ("handle",), "Vessel": ("imo", "mmsi"),
    "Vehicle": ("vehicle_registration",), "Airplane": ("vehicle_registration",),
}
GENDERS: Final[tuple[str, ...]] = ("male", "female", "other")  # FtM's gender values
#: ``from`` is the <type> of ``to`` (docs/content.md has each one's FtM mapping).
LINK_TYPES: Final[tuple[str, ...]] = (
    "owner", "beneficiary", "director", "employee", "member", "family", "associate",
    "representative", "controls", "holder", "operator", "uses", "address", "payment",
)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_SPACES = re.compile(r"\s+")
#: Unicode category Cc (C0 and C1 controls) except newline and tab: one regex, not a loop per character.
_CONTROL: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_DECIMAL = re.compile(r"\d+(\.\d+)?")
_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]00:00)")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Bidi overrides/isolates can make text read differently from what it is ("Trojan Source").
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_PRINTABLE_ASCII: Final = bytes(range(0x20, 0x7F))


def join(path: str, key: object) -> str:
    """``path.key`` (or ``key`` at the root), the form every error path takes."""
    return f"{path}.{key}" if path else str(key)


def clean_text(value: object, path: str, max_len: int, *, multiline: bool = False) -> str:
    """NFC-normalised, trimmed, non-empty text; one line unless ``multiline``."""
    if type(value) is not str:
        hint = " (omit an optional field instead of null)" if value is None else ""
        raise ValidationError(path, f"expected a string, got {type_name(value)}{hint}")
    ascii_only = value.isascii()  # most fields: then no surrogates, already NFC, no bidi controls
    if not ascii_only:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(path, "contains an unpaired surrogate (not valid Unicode)") from None
    text = value if ascii_only else unicodedata.normalize("NFC", value)
    # One C loop settles most text: printable means no control character, no line break, no
    # bidi control and no space but U+0020, so the regexes below have nothing to find.
    if ascii_only and len(text) > 64:
        # Long ASCII text: a table lookup per byte is four times faster than isprintable(), and
        # tells line breaks and tabs (allowed in multiline text) from other controls.
        odd = text.encode("ascii").translate(None, _PRINTABLE_ASCII)
        printable = not odd
        no_control = printable or (multiline and not odd.translate(None, b"\t\n\r"))
    else:
        printable = no_control = text.isprintable()
    if multiline:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = text.strip()
    elif not printable or "  " in text:
        text = _SPACES.sub(" ", text).strip()  # names compare equal however they were spaced
    else:
        text = text.strip()
    if not no_control and (c := _CONTROL.search(text)) is not None:
        raise ValidationError(path, f"contains the control character U+{ord(c[0]):04X}")
    if not printable and not ascii_only and (m := _BIDI.search(text)) is not None:
        raise ValidationError(path, f"contains the invisible bidirectional control U+{ord(m[0]):04X}")
    if not text:
        raise ValidationError(path, "must not be empty")
    if len(text) > max_len:
        raise ValidationError(path, f"is {len(text)} characters long, over the limit of {max_len}")
    return text


def parse_date(value: object, path: str, *, partial: bool) -> str:
    """An ISO 8601 date; ``partial`` also allows "1980" and "1980-05" as FtM does."""
    if type(value) is not str:
        raise ValidationError(path, f"expected a date string, got {type_name(value)}")
    text = value.strip()
    form = "YYYY, YYYY-MM or YYYY-MM-DD" if partial else "YYYY-MM-DD"
    m = _DATE.fullmatch(text)
    if m is None or (not partial and m[3] is None):
        raise ValidationError(path, f'"{value}" is not a date (use {form})')
    try:
        datetime.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError as exc:
        raise ValidationError(path, f'"{value}" is not a date: {exc}') from None
    return text


def date_before(a: str, b: str) -> bool:
    """Whether date ``a`` is surely before ``b``, comparing at the coarser precision."""
    n = min(len(a), len(b))
    return a[:n] < b[:n]


def parse_decimal(value: object, path: str, *, places: int | None, max_places: int, label: str = "") -> str:
    """A non-negative exact decimal string, canonical: exactly ``places`` decimal
    places when given (money in minor units), else without trailing zeros."""
    if type(value) is not str:
        raise ValidationError(path, f"expected a decimal string, got {type_name(value)} "
                              '(use a string for exact decimals, e.g. "1250.00")')
    text = value.strip()
    if text.startswith("-"):
        raise ValidationError(path, f'"{value}" is negative; amounts are never negative')
    if not _DECIMAL.fullmatch(text):
        raise ValidationError(path, f'"{value}" is not a decimal{_suggest(text, places)}')
    whole, _, frac = text.partition(".")
    if len(whole.lstrip("0")) > MAX_AMOUNT_DIGITS:
        raise ValidationError(path, f'"{value}" has more than {MAX_AMOUNT_DIGITS} integer digits')
    if len(frac.rstrip("0")) > max_places:
        limit = f"{label} has {max_places}" if label else f"at most {max_places}"
        raise ValidationError(path, f'"{value}" has too many decimal places ({limit})')
    number = decimal.Decimal(text)
    return f"{number:.{places}f}" if places is not None else _plain(number)


def _plain(number: decimal.Decimal) -> str:
    return f"{number.normalize():f}"  # ":f" so 100 stays "100", never "1E+2"


def _suggest(text: str, places: int | None) -> str:
    """A corrected spelling of a decimal written with commas or spaces, if there is one."""
    generic = ' (write digits with "." before the fraction, e.g. "1250.00")'
    digits = re.sub(r"[\s'_]", "", text)
    if not re.fullmatch(r"\d[\d.,]*", digits):
        return generic
    point = max(digits.rfind("."), digits.rfind(","))
    if digits[point] in digits[:point]:
        point = -1  # "1,250,000": every separator groups thousands
    whole = re.sub(r"[.,]", "", digits[:point] if point >= 0 else digits)
    frac = digits[point + 1 :] if point >= 0 else ""
    if not whole or not frac.isdigit() and frac:
        return generic
    number = decimal.Decimal(f"{whole}.{frac or '0'}")
    fixed = f"{number:.{places}f}" if places is not None and len(frac) <= places else _plain(number)
    return f' (use "{fixed}")'


def utc_timestamp(value: object, path: str = "") -> str:
    """A UTC ISO 8601 timestamp, canonically ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    text = value.strip() if type(value) is str else ""
    if not _UTC.fullmatch(text):
        raise ValidationError(path, f"{show(value)} is not a UTC timestamp (use YYYY-MM-DDTHH:MM:SSZ)")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(path, f"{show(value)} is not a valid time: {exc}") from None
    frac = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def packet_ref(value: object, path: str) -> str:
    """A packet id: a UUID, canonically lowercase 8-4-4-4-12."""
    text = value.strip() if type(value) is str else ""
    if not _UUID.fullmatch(text):
        raise ValidationError(
            path, f'{show(value)} is not a packet id (a UUID like "0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f")'
        )
    return text.lower()  # the form str(uuid.UUID(text)) gives, without building one


class Obj:
    """One JSON object under validation: unknown keys are refused up front.

    ``foreign`` maps fields that exist elsewhere (e.g. on another schema) to the
    explanation given instead of "unknown field".
    """

    def __init__(self, value: object, path: str, allowed: Set[str], *,
                 what: str = "an object", foreign: Mapping[str, str] | None = None) -> None:
        if type(value) is not dict:
            raise ValidationError(path, f"expected {what}, got {type_name(value)}")
        if not value.keys() <= allowed:  # one C-level test; the loop only names the first stranger
            for key in value:
                if key not in allowed:
                    raise ValidationError(join(path, key), _unknown(key, allowed, foreign or {}))
        self.data: dict[str, Any] = value
        self.path = path

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def need(self, key: str, hint: str = "") -> Any:
        if key not in self.data:
            raise ValidationError(self.at(key), "is required" + (f" ({hint})" if hint else ""))
        return self.data[key]

    def text(self, key: str, max_len: int = MAX_SHORT_LEN, *, multiline: bool = False) -> str:
        return clean_text(self.need(key), self.at(key), max_len, multiline=multiline)

    def choice(self, key: str, choices: Collection[str]) -> str:
        value = self.data.get(key)
        if type(value) is str and value in choices:
            return value
        value = self.need(key, "one of: " + ", ".join(choices))  # the hint only when it is missing
        close = difflib.get_close_matches(str(value).lower(), list(choices), n=1, cutoff=0.6)
        hint = f'did you mean "{close[0]}"?' if close else "one of: " + ", ".join(choices)
        raise ValidationError(self.at(key), f"{show(value)} is not allowed ({hint})")

    def items(self, key: str, max_items: int, min_items: int = 0) -> list[tuple[str, Any]]:
        """``(path, item)`` for each element of the list at ``key`` (absent = empty)."""
        value = self.data.get(key)
        if value is None and key not in self.data:
            return []  # absent: most optional lists are
        if type(value) is not list:
            raise ValidationError(self.at(key), f"expected a list, got {type_name(value)}")
        if len(value) > max_items:
            raise ValidationError(self.at(key), f"has {len(value)} items, over the limit of {max_items}")
        if len(value) < min_items:
            raise ValidationError(self.at(key), f"needs at least {min_items} item{'s' * (min_items > 1)}")
        base = self.at(key)
        return [(f"{base}[{i}]", item) for i, item in enumerate(value)]

    def texts(self, key: str, max_items: int, max_len: int = MAX_NAME_LEN) -> list[str]:
        """Strings in the order given, without repeats."""
        seen: dict[str, None] = {}
        for path, item in self.items(key, max_items):
            seen.setdefault(clean_text(item, path, max_len), None)
        return list(seen)

    def countries(self, key: str) -> list[str]:
        """Country codes, sorted and without repeats (their order carries no meaning)."""
        codes = set()
        for path, item in self.items(key, MAX_COUNTRIES):
            codes.add(country(item, path))
        return sorted(codes)

    def optional(self, out: dict[str, Any], key: str, read: Callable[[str], Any]) -> None:
        """Copy ``read(key)`` into ``out`` when present (absent optional fields stay absent)."""
        if key in self.data:
            out[key] = read(key)


def country(value: object, path: str) -> str:
    try:
        return country_code(value)
    except ValidationError as exc:
        raise ValidationError(path, exc.reason) from None


def _unknown(key: object, allowed: Collection[str], foreign: Mapping[str, str]) -> str:
    if type(key) is not str:
        return "field names must be strings"
    if key in foreign:
        return foreign[key]
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    return "unknown field" + (f' (did you mean "{close[0]}"?)' if close else "")


_IDENT_ALLOWED: Final = {k: frozenset({"type", "value"}) | EXTRA_FIELDS.get(k, frozenset()) for k in IDENTIFIER_TYPES}
_IDENT_FOREIGN: Final = {k: {f: f"not a field of a {k} identifier" for f in ("country", "chain", "platform")}
                         for k in IDENTIFIER_TYPES}


def validate_identifier(obj: object, path: str) -> dict[str, str]:
    """A normalised identifier object ``{"type", "value", ...}`` (docs/content.md)."""
    if type(obj) is not dict:
        raise ValidationError(path, f"expected an identifier object, got {type_name(obj)}")
    kind_raw = obj.get("type")
    if type(kind_raw) is not str or kind_raw not in IDENTIFIER_TYPES:
        try:
            hint = f'did you mean "{resolve_kind(kind_raw)}"?'  # type: ignore[arg-type]
        except ValidationError:
            hint = "one of: " + ", ".join(IDENTIFIER_TYPES)
        shown = "is required" if kind_raw is None else f'"{kind_raw}" is not an identifier type'
        raise ValidationError(join(path, "type"), f"{shown} ({hint})")
    kind: str = kind_raw
    fields = Obj(obj, path, _IDENT_ALLOWED[kind], foreign=_IDENT_FOREIGN[kind])
    out: dict[str, str] = {"type": kind, "value": ""}
    if fields.has("country"):
        out["country"] = country(obj["country"], fields.at("country"))
    for key, norm in (("chain", normalize_chain), ("platform", normalize_platform)):
        if fields.has(key):
            try:
                out[key] = norm(clean_text(obj[key], fields.at(key), 40))
            except ValidationError as exc:
                raise ValidationError(exc.path or fields.at(key), exc.reason) from None
    if kind == "handle" and "platform" not in out:
        raise ValidationError(fields.at("platform"), 'is required for a handle (e.g. "telegram")')
    value = clean_text(fields.need("value"), fields.at("value"), 200)
    try:
        if kind == "crypto_wallet":
            out["value"], out["chain"] = split_wallet(value, out.get("chain"))
        else:
            out["value"] = normalize_identifier(kind, value, **{k: out[k] for k in ("country",) if k in out})
    except ValidationError as exc:
        raise ValidationError(fields.at("value"), exc.reason) from None
    return out


def validate_entity(obj: object, path: str, *, schemas: Collection[str] = SCHEMAS) -> dict[str, Any]:
    """A normalised entity: common fields, then the fields of its schema."""
    if type(obj) is not dict:
        raise ValidationError(path, f"expected an entity object, got {type_name(obj)}")
    schema = obj.get("schema")
    if type(schema) is not str or schema not in schemas:
        hint = ' (FtM calls online accounts "UserAccount")' if schema == "OnlineAccount" else ""
        close = difflib.get_close_matches(str(schema), list(schemas), n=1, cutoff=0.6)
        hint = hint or (f' (did you mean "{close[0]}"?)' if close else " (one of: " + ", ".join(schemas) + ")")
        what = "is required" if schema is None else f'"{schema}" is not allowed here'
        raise ValidationError(join(path, "schema"), what + hint)
    allowed = _ALLOWED[schema]
    f = Obj(obj, path, allowed, foreign=_FOREIGN[schema])
    out: dict[str, Any] = {"id": local_id(f.need("id"), f.at("id")), "schema": schema}
    names = f.texts("names", MAX_NAMES)
    if names:
        out["names"] = names
    aliases = [a for a in f.texts("aliases", MAX_ALIASES) if a not in names]
    if aliases:
        out["aliases"] = aliases
    idents: list[dict[str, str]] = []
    for ipath, item in f.items("identifiers", MAX_IDENTIFIERS):
        ident = validate_identifier(item, ipath)
        if ident not in idents:
            idents.append(ident)
    if idents:
        out["identifiers"] = idents
    for key in ("countries", "nationality"):
        if key in allowed and (codes := f.countries(key)):
            out[key] = codes
    # Optional fields, in a fixed order (the order of ``out``), each read only when present:
    # most are absent, and this runs for every entity of every packet a node receives.
    for key in ("jurisdiction", "flag"):
        if key in obj:
            out[key] = country(obj[key], f.at(key))
    for key in ("birth_date", "death_date", "incorporation_date", "dissolution_date"):
        if key in obj:
            out[key] = parse_date(obj[key], f.at(key), partial=True)
    for start, end in (("birth_date", "death_date"), ("incorporation_date", "dissolution_date")):
        if start in out and end in out and date_before(out[end], out[start]):
            raise ValidationError(f.at(end), f"{out[end]} is before {start} {out[start]}")
    if "gender" in obj:
        out["gender"] = f.choice("gender", GENDERS)
    if "addresses" in obj and (addresses := f.texts("addresses", MAX_NAMES, MAX_SHORT_LEN)):
        out["addresses"] = addresses
    for key in ("birth_place", "model", "institution", "full", "city", "postal_code"):
        if key in obj:
            out[key] = f.text(key, MAX_SHORT_LEN)
    if "notes" in obj:
        out["notes"] = f.text("notes", MAX_TEXT_LEN, multiline=True)
    _check_identified(out, f)
    return out


def _foreign(schema: str) -> dict[str, str]:
    """What to say of a field another schema has (rather than "unknown field")."""
    out = {}
    for key in sorted(set().union(*SCHEMA_FIELDS.values()) - SCHEMA_FIELDS[schema]):
        having = [s for s in SCHEMAS if key in SCHEMA_FIELDS[s]]
        out[key] = f"not a field of a {schema} (only {', '.join(having)} ha{'ve' if len(having) > 1 else 's'} it)"
    return out


# Per schema, computed once: validate_entity runs for every entity of every packet received.
_ALLOWED: Final = {s: _COMMON | SCHEMA_FIELDS[s] for s in SCHEMAS}
_FOREIGN: Final = {s: _foreign(s) for s in SCHEMAS}


def _check_identified(out: dict[str, Any], f: Obj) -> None:
    schema = out["schema"]
    if schema == "Address":
        if "full" not in out:
            raise ValidationError(f.at("full"), "is required (the address as one line)")
        return
    if "names" in out:
        return
    kinds = IDENTIFIED_BY.get(schema, ())
    if any(i["type"] in kinds for i in out.get("identifiers", ())):
        return
    if not kinds:
        raise ValidationError(f.at("names"), f"a {schema} needs at least one name")
    wanted = " or ".join(kinds)
    raise ValidationError(f.at("names"), f"a {schema} needs a name or an identifier of type {wanted}")


def local_id(value: object, path: str) -> str:
    """A packet-local reference ("e1", "acct-2"): letters, digits and _ . : -"""
    if type(value) is not str:
        raise ValidationError(path, f"expected an id string, got {type_name(value)}")
    if not _ID.fullmatch(value) or len(value) > MAX_ID_LEN:
        raise ValidationError(
            path, f'"{value}" is not a local id (1-{MAX_ID_LEN} letters, digits, "_", ".", ":" or "-")'
        )
    return value


def validate_links(f: Obj, key: str, entity_ids: Collection[str], max_links: int) -> list[dict[str, Any]]:
    """The links at ``key``; each ``from``/``to`` must name an entity of this packet."""
    links: list[dict[str, Any]] = []
    for path, item in f.items(key, max_links):
        g = Obj(item, path, {"from", "to", "type", "role", "start_date", "end_date", "notes"}, what="a link object")
        link: dict[str, Any] = {}
        for end in ("from", "to"):
            ref = local_id(g.need(end), g.at(end))
            if ref not in entity_ids:
                raise ValidationError(g.at(end), f'"{ref}" is not an entity in this packet')
            link[end] = ref
        if link["from"] == link["to"]:
            raise ValidationError(g.at("to"), "a link must join two different entities")
        link["type"] = g.choice("type", LINK_TYPES)
        g.optional(link, "role", lambda k: g.text(k, MAX_NAME_LEN))
        for k in ("start_date", "end_date"):
            g.optional(link, k, lambda k: parse_date(item[k], g.at(k), partial=True))
        if "start_date" in link and "end_date" in link and date_before(link["end_date"], link["start_date"]):
            raise ValidationError(g.at("end_date"), f"{link['end_date']} is before start_date {link['start_date']}")
        g.optional(link, "notes", lambda k: g.text(k, MAX_TEXT_LEN, multiline=True))
        if link not in links:
            links.append(link)
    return links
