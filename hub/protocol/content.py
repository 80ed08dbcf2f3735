"""The content model: what an intelhub packet says, once decrypted. No I/O.

Five content types (:data:`PACKET_TYPES`): entity alerts, asset-freeze notices,
amendments, withdrawals and receipts. docs/content.md is the specification;
this module is its one implementation. :func:`validate_content` turns any
JSON-like value into a NEW normalised dict or raises :class:`ValidationError`
naming the path of the first problem (``entities[0].names[1]``). Normalised
content holds only dicts with str keys, lists and str, so JSON and canonical
msgpack carry it unchanged; optional fields that are absent or empty are left
out, never null.
"""

from __future__ import annotations

import decimal
import difflib
import json
import re
from typing import Any, Final

import pycountry

from . import codec
from .entities import (
    LEGAL_ENTITY_SCHEMAS, MAX_NAME_LEN, MAX_SHORT_LEN, MAX_TEXT_LEN, Obj, country, date_before,
    local_id, packet_ref, parse_date, parse_decimal, utc_timestamp, validate_entity,
    validate_identifier, validate_links,
)
from .errors import ValidationError
from .identifiers import show, type_name
from .lazy import LazyModule

iso4217: Any = LazyModule("iso4217")

PACKET_TYPES: Final[tuple[str, ...]] = ("alert", "freeze", "amend", "withdraw", "receipt")
CATEGORIES: Final[tuple[str, ...]] = (
    "migrant_smuggling", "human_trafficking", "money_laundering", "document_fraud",
    "terrorist_financing", "sanctions_evasion", "other",
)
SEVERITIES: Final[tuple[str, ...]] = ("low", "medium", "high", "critical")
TLP_LEVELS: Final[tuple[str, ...]] = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
HANDLING_CODES: Final[tuple[str, ...]] = ("H0", "H1", "H2")
SOURCE_GRADES: Final[tuple[str, ...]] = ("A", "B", "C", "X")
INFORMATION_GRADES: Final[tuple[str, ...]] = ("1", "2", "3", "4")
FREEZE_STATUSES: Final[tuple[str, ...]] = ("issued", "extended", "lifted")
ASSET_STATUSES: Final[tuple[str, ...]] = ("frozen", "lifted")
RECEIPT_STATUSES: Final[tuple[str, ...]] = ("delivered", "processed")
#: Asset kinds and the identifier types that name one; None: any type; (): none.
ASSET_KINDS: Final[dict[str, tuple[str, ...] | None]] = {
    "bank_account": ("iban", "account"), "crypto_wallet": ("crypto_wallet",),
    "vessel": ("imo", "mmsi"), "vehicle": ("vehicle_registration",),
    "shares": ("company_registration", "lei"), "real_estate": (), "cash": (), "other": None,
}
_NEEDS_IDENTIFIER: Final = ("bank_account", "crypto_wallet")

MAX_ENTITIES: Final[int] = 200
MAX_LINKS: Final[int] = 500
MAX_ASSETS: Final[int] = 100
#: Encoded (canonical msgpack) size of one content; the envelope adds the rest of 1 MiB.
MAX_CONTENT_BYTES: Final[int] = 512 * 1024
#: JSON text accepted by content_from_json (escapes make JSON larger than msgpack).
MAX_JSON_CHARS: Final[int] = 4 * MAX_CONTENT_BYTES
#: ISO 4217 minor units top out at 4 (CLF, UYW); codes without any (XAU, XDR) get this cap.
MAX_PLACES_WITHOUT_MINOR_UNIT: Final[int] = 6
MAX_QUANTITY_PLACES: Final[int] = 18  # Ether has 18 decimals; no chain has more in use
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}")


def validate_content(obj: object) -> dict[str, Any]:
    """A new, normalised copy of ``obj``; ValidationError names the first problem."""
    if type(obj) is not dict:
        raise ValidationError("", f"content must be an object, got {type_name(obj)}")
    # Read only "type" here; its validator checks the rest.
    kind = obj.get("type")
    if type(kind) is not str or kind not in _VALIDATORS:
        kind = Obj(obj, "", {"type"} | set(obj)).choice("type", PACKET_TYPES)  # raises, naming what is wrong
    out = _VALIDATORS[kind](obj, "")
    # The encoded length does not depend on key order: the plain packer gives it without the
    # canonicaliser's copy (the validator above has already checked every type).
    size = len(codec.pack_as_is(out))
    if size > MAX_CONTENT_BYTES:
        raise ValidationError("", f"content is {size} bytes encoded, over the limit of "
                              f"{MAX_CONTENT_BYTES}: split it into several packets")
    return out


def _handling(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"tlp", "codes", "source", "information"}, what="a handling object")
    raw = f.need("tlp", "one of: " + ", ".join(TLP_LEVELS))
    tlp = raw.strip().upper().removeprefix("TLP:") if type(raw) is str else raw
    if tlp not in TLP_LEVELS:
        hint = ' (TLP 2.0 renamed WHITE to "CLEAR")' if tlp == "WHITE" else f" (one of: {', '.join(TLP_LEVELS)})"
        raise ValidationError(f.at("tlp"), f"{show(raw)} "
                              f"is not a TLP level{hint}")
    codes = set()
    f.need("codes", "a list of H0, H1, H2; may be empty")
    for cpath, code in f.items("codes", len(HANDLING_CODES) * 2):
        if code not in HANDLING_CODES:
            raise ValidationError(cpath, f"{show(code)} "
                                  f"is not a handling code (one of: {', '.join(HANDLING_CODES)})")
        codes.add(code)
    if tlp == "CLEAR" and "H2" in codes:
        raise ValidationError(f.at("codes"), "H2 forbids onward dissemination, which contradicts TLP:CLEAR")
    return {"tlp": tlp, "codes": sorted(codes), "source": f.choice("source", SOURCE_GRADES),
            "information": f.choice("information", INFORMATION_GRADES)}


def _alert(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"type", "title", "category", "severity", "summary", "entities", "links",
                        "handling", "case_ref", "valid_until", "requested_action"})
    out: dict[str, Any] = {"type": "alert", "title": f.text("title", MAX_NAME_LEN),
                           "category": f.choice("category", CATEGORIES),
                           "severity": f.choice("severity", SEVERITIES),
                           "summary": f.text("summary", MAX_TEXT_LEN, multiline=True)}
    f.need("entities", "at least one entity")
    entities: list[dict[str, Any]] = []
    for epath, item in f.items("entities", MAX_ENTITIES, min_items=1):
        entity = validate_entity(item, epath)
        if any(e["id"] == entity["id"] for e in entities):
            raise ValidationError(f"{epath}.id", f'"{entity["id"]}" is already the id of another entity')
        entities.append(entity)
    out["entities"] = entities
    if links := validate_links(f, "links", {e["id"] for e in entities}, MAX_LINKS):
        out["links"] = links
    out["handling"] = _handling(f.need("handling"), f.at("handling"))
    f.optional(out, "case_ref", lambda k: f.text(k, MAX_NAME_LEN))
    f.optional(out, "valid_until", lambda k: parse_date(f.data[k], f.at(k), partial=False))
    f.optional(out, "requested_action", lambda k: f.text(k, MAX_TEXT_LEN, multiline=True))
    return out


def _freeze(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"type", "authority", "legal_basis", "reference", "subject", "assets", "effective",
                        "expires", "status", "requested_action", "handling"})
    a = Obj(f.need("authority", "who issued the freeze"), f.at("authority"), {"name", "country", "contact"},
            what="an authority object")
    authority = {"name": a.text("name", MAX_SHORT_LEN), "country": country(a.need("country"), a.at("country"))}
    a.optional(authority, "contact", lambda k: a.text(k, MAX_SHORT_LEN))
    out: dict[str, Any] = {"type": "freeze", "authority": authority,
                           "legal_basis": f.text("legal_basis", MAX_TEXT_LEN, multiline=True),
                           "reference": f.text("reference", MAX_SHORT_LEN),
                           "status": f.choice("status", FREEZE_STATUSES),
                           "subject": validate_entity(f.need("subject"), f.at("subject"),
                                                      schemas=LEGAL_ENTITY_SCHEMAS)}
    ids = {out["subject"]["id"]}
    assets = []
    f.need("assets", "at least one asset")
    for apath, item in f.items("assets", MAX_ASSETS, min_items=1):
        asset = _asset(item, apath)
        if asset["id"] in ids:
            raise ValidationError(f"{apath}.id", f'"{asset["id"]}" is already used in this notice')
        if out["status"] == "lifted" and asset["status"] != "lifted":
            raise ValidationError(f"{apath}.status", 'must be "lifted" when the notice status is "lifted"')
        ids.add(asset["id"])
        assets.append(asset)
    out["assets"] = assets
    out["effective"] = parse_date(f.need("effective", "YYYY-MM-DD"), f.at("effective"), partial=False)
    if f.has("expires"):
        out["expires"] = parse_date(f.data["expires"], f.at("expires"), partial=False)
        if not date_before(out["effective"], out["expires"]):
            raise ValidationError(f.at("expires"), f"{out['expires']} must be after effective {out['effective']}")
    out["requested_action"] = f.text("requested_action", MAX_TEXT_LEN, multiline=True)
    out["handling"] = _handling(f.need("handling"), f.at("handling"))
    return out


def _asset(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"id", "kind", "identifier", "description", "amount", "currency", "quantity", "unit",
                        "holder", "institution", "status"}, what="an asset object")
    out: dict[str, Any] = {"id": local_id(f.need("id"), f.at("id")), "kind": f.choice("kind", ASSET_KINDS)}
    types = ASSET_KINDS[out["kind"]]
    if f.has("identifier"):
        if types == ():
            raise ValidationError(f.at("identifier"), f"a {out['kind']} asset has no identifier type "
                                  "(describe it in description)")
        ident = validate_identifier(f.data["identifier"], f.at("identifier"))
        if types is not None and ident["type"] not in types:
            raise ValidationError(f.at("identifier") + ".type",
                                  f"a {out['kind']} asset is identified by {' or '.join(types)}")
        out["identifier"] = ident
    elif out["kind"] in _NEEDS_IDENTIFIER and types is not None:
        raise ValidationError(f.at("identifier"), f"is required for a {out['kind']} asset "
                              f"({' or '.join(types)})")
    f.optional(out, "description", lambda k: f.text(k, MAX_TEXT_LEN, multiline=True))
    if "identifier" not in out and "description" not in out:
        raise ValidationError(f.at("description"), "is required when the asset has no identifier")
    if f.has("amount") or f.has("currency"):
        currency = _currency(f)
        out["amount"] = _amount(f, currency)
        out["currency"] = currency
    if f.has("quantity") or f.has("unit"):
        unit = f.need("unit", 'what the quantity counts, e.g. "BTC", "USDT", "shares"')
        if type(unit) is not str or not _UNIT.fullmatch(unit.strip()):
            raise ValidationError(f.at("unit"), f"{show(unit)} "
                                  'is not a unit (1-16 letters or digits, e.g. "BTC", "shares")')
        out["quantity"] = parse_decimal(f.need("quantity"), f.at("quantity"), places=None,
                                        max_places=MAX_QUANTITY_PLACES)
        out["unit"] = unit.strip().upper()
    for key in ("holder", "institution"):
        f.optional(out, key, lambda k: f.text(k, MAX_SHORT_LEN))
    out["status"] = f.choice("status", ASSET_STATUSES)
    return out


def _currency(f: Obj) -> str:
    raw = f.need("currency", "ISO 4217 code of the amount, e.g. EUR")
    code = raw.strip().upper() if type(raw) is str else ""
    if pycountry.currencies.get(alpha_3=code) is None:
        codes = sorted(c.alpha_3 for c in pycountry.currencies)
        close = difflib.get_close_matches(code, codes, n=1, cutoff=0.6)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ValidationError(f.at("currency"), f"{show(raw)} is not an ISO 4217 currency code{hint}")
    return code


def _minor_units(currency: str) -> int | None:
    try:
        return iso4217.Currency(currency).exponent  # the official SIX ISO 4217 list
    except ValueError:
        return None


def _amount(f: Obj, currency: str) -> str:
    # Canonical: exactly the currency's minor units ("12.5" EUR -> "12.50").
    places = _minor_units(currency)
    return parse_decimal(f.need("amount", 'an exact decimal string, e.g. "1250.00"'), f.at("amount"),
                         places=places, label=currency if places is not None else "",
                         max_places=MAX_PLACES_WITHOUT_MINOR_UNIT if places is None else places)


def _ref(f: Obj) -> str:
    return packet_ref(f.need("ref", "the packet id (UUID) this refers to"), f.at("ref"))


def _amend(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"type", "ref", "reason", "content"})
    out = {"type": "amend", "ref": _ref(f), "reason": f.text("reason", MAX_TEXT_LEN, multiline=True)}
    inner = f.need("content", "the full new alert or freeze")
    if type(inner) is not dict:
        raise ValidationError(f.at("content"), f"expected the full new alert or freeze, got {type_name(inner)}")
    kind = inner.get("type")
    if kind not in ("alert", "freeze"):
        raise ValidationError(f.at("content") + ".type",
                              'an amendment carries a full "alert" or "freeze" (the new version)')
    out["content"] = _VALIDATORS[kind](inner, f.at("content"))
    return out


def _withdraw(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"type", "ref", "reason"})
    return {"type": "withdraw", "ref": _ref(f), "reason": f.text("reason", MAX_TEXT_LEN, multiline=True)}


def _receipt(obj: object, path: str) -> dict[str, Any]:
    f = Obj(obj, path, {"type", "ref", "status", "at", "note"})
    out = {"type": "receipt", "ref": _ref(f), "status": f.choice("status", RECEIPT_STATUSES),
           "at": utc_timestamp(f.need("at", "UTC time, YYYY-MM-DDTHH:MM:SSZ"), f.at("at"))}
    f.optional(out, "note", lambda k: f.text(k, MAX_TEXT_LEN, multiline=True))
    return out


_VALIDATORS: Final[dict[str, Any]] = {
    "alert": _alert, "freeze": _freeze, "amend": _amend, "withdraw": _withdraw, "receipt": _receipt,
}


def entities_of(content: dict[str, Any]) -> list[dict[str, Any]]:
    """Every entity in validated ``content``: alert entities, a freeze's subject, an amendment's."""
    kind = content.get("type")
    if kind == "amend":
        return entities_of(content["content"])
    if kind == "alert":
        return list(content["entities"])
    if kind == "freeze":
        return [content["subject"]]
    return []


def identifiers_of(content: dict[str, Any]) -> list[dict[str, str]]:
    """Every identifier object in validated ``content`` (entities and freeze assets), once each."""
    found: list[dict[str, str]] = []
    inner = content["content"] if content.get("type") == "amend" else content
    candidates = [i for e in entities_of(inner) for i in e.get("identifiers", ())]
    candidates += [a["identifier"] for a in inner.get("assets", ()) if "identifier" in a]
    for ident in candidates:
        if ident not in found:
            found.append(ident)
    return found


def default_topic(content: dict[str, Any], original_topic: str | None = None) -> str:
    """The topic to publish ``content`` on.

    Amendments, withdrawals and receipts belong on the topic of the packet they
    refer to, so everyone who got the original gets them: pass ``original_topic``.
    Without it an amendment goes where its new version would, and the others to
    ``control.withdraw`` / ``control.receipt``.
    """
    kind = content["type"]
    if kind != "alert" and kind != "freeze" and original_topic is not None:
        return original_topic
    if kind == "alert":
        return f"alerts.entity.{content['category']}"
    if kind == "freeze":
        return "notices.freeze"
    if kind == "amend":
        return default_topic(content["content"])
    return f"control.{kind}"


def content_summary(content: dict[str, Any]) -> str:
    """One line for a person: type, what it is about, and its TLP."""
    kind = content["type"]
    if kind == "alert":
        names = ", ".join(_label(e) for e in content["entities"][:3])
        more = f" +{len(content['entities']) - 3}" if len(content["entities"]) > 3 else ""
        return (f"ALERT {content['severity']} {content['category']}: {_short(content['title'])} "
                f"[{names}{more}] TLP:{content['handling']['tlp']}")
    if kind == "freeze":
        totals: dict[str, decimal.Decimal] = {}
        for asset in content["assets"]:
            if "amount" in asset:
                totals[asset["currency"]] = totals.get(asset["currency"], decimal.Decimal(0)) + \
                    decimal.Decimal(asset["amount"])
        money = "".join(f", {cur} {total}" for cur, total in sorted(totals.items()))
        return (f"FREEZE {content['status']} by {_short(content['authority']['name'])} "
                f"({content['authority']['country']}) ref {_short(content['reference'])}: "
                f"{_label(content['subject'])}, {len(content['assets'])} asset(s){money} "
                f"TLP:{content['handling']['tlp']}")
    if kind == "amend":
        return f"AMEND {content['ref']}: {content_summary(content['content'])}"
    if kind == "withdraw":
        return f"WITHDRAW {content['ref']}: {_short(content['reason'])}"
    return f"RECEIPT {content['status']} {content['ref']} at {content['at']}"


def _label(entity: dict[str, Any]) -> str:
    # Every entity has a name, an Address its "full", the rest an identifier.
    if "names" in entity:
        text = entity["names"][0]
    else:
        text = entity.get("full") or entity["identifiers"][0]["value"]
    return f"{_short(text, 40)} ({entity['schema']})"


def _short(text: str, limit: int = 80) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _Duplicate(dict[str, Any]):
    """A JSON object that had a repeated key (reported with its path after parsing)."""

    key: str = ""


class _Number(str):
    """A JSON number with a fraction or exponent, kept as text to report it."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            dup = _Duplicate(pairs)
            dup.key = key
            return dup
        seen[key] = value
    return seen


def content_from_json(text: str) -> dict[str, Any]:
    """Parse JSON content (see docs/content.md "JSON form") and validate it.

    Whole lines starting with ``//`` are comments (the templates use them); JSON
    strings cannot span lines, so removing such lines never changes data.
    Duplicate keys, and numbers with a fraction or exponent, are refused with
    their path: exact decimals are strings.
    """
    if type(text) is not str:
        raise ValidationError("", f"expected JSON text, got {type_name(text)}")
    if len(text) > MAX_JSON_CHARS:
        raise ValidationError("", f"JSON is {len(text)} characters, over the limit of {MAX_JSON_CHARS}")
    lines = ["" if line.lstrip().startswith("//") else line for line in text.split("\n")]
    try:
        value = json.loads("\n".join(lines), object_pairs_hook=_pairs, parse_float=_Number,
                           parse_constant=_Number)
    except json.JSONDecodeError as exc:
        raise ValidationError("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValidationError("", "JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ValidationError("", f"not valid JSON: {exc}") from None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if type(item) is _Duplicate:
            raise ValidationError(f"{path}.{item.key}" if path else item.key, "appears twice in one object")
        if type(item) is _Number:
            raise ValidationError(path, f"the JSON number {item} is not allowed: use a string for exact "
                                  f'decimals ("{item}")')
        if type(item) is dict:
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in item.items())
        elif type(item) is list:
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return validate_content(value)


def content_to_json(content: dict[str, Any]) -> str:
    """Validated ``content`` as pretty UTF-8 JSON (readable in any script)."""
    return json.dumps(validate_content(content), ensure_ascii=False, indent=2) + "\n"


_HANDLING_HELP = """\
  "handling": {
    // TLP 2.0: CLEAR, GREEN, AMBER, AMBER+STRICT or RED
    "tlp": "AMBER",
    // SIENA codes, may be []: H0 purpose limitation, H1 no judicial use without
    // permission, H2 no onward dissemination without permission
    "codes": ["H0", "H2"],
    // 4x4 grading: source A (reliable), B, C or X (unknown); information 1 (known) .. 4
    "source": "B",
    "information": "2"
  }
}
"""


def alert_template() -> str:
    """A commented starting file for an entity alert (JSON with ``//`` comment lines)."""
    return """\
// intelhub entity alert. Lines starting with // are comments. Every field is in
// docs/content.md. Replace the example values; remove optional fields you don't use.
{
  "type": "alert",
  "title": "Smuggling network operating a fishing vessel on the central Mediterranean",
  // migrant_smuggling, human_trafficking, money_laundering, document_fraud,
  // terrorist_financing, sanctions_evasion or other
  "category": "migrant_smuggling",
  // low, medium, high or critical
  "severity": "high",
  "summary": "What is known, how it was learnt, and why partners should care.",
  // Optional: your case reference, an expiry date, what you ask partners to do.
  "case_ref": "EXAMPLE/2026/001",
  "valid_until": "2027-01-31",
  "requested_action": "Check your holdings for these identifiers and report matches.",
  // Entities: Person, Organization, Company, LegalEntity, Vessel, Vehicle, Airplane,
  // BankAccount, CryptoWallet, Phone, Email, UserAccount, Address. Ids are local refs.
  "entities": [
    {
      "id": "e1",
      "schema": "Person",
      "names": ["Ivan PETROV", "Иван Петров"],
      "aliases": ["The Captain"],
      "nationality": ["RU"],
      "birth_date": "1980-05",
      "identifiers": [{"type": "passport", "value": "AB1234567", "country": "RU"}]
    },
    {
      "id": "e2",
      "schema": "CryptoWallet",
      // chain: BTC, ETH, TRX (also USDT-TRC20), BSC, POLYGON, LTC, or another name
      "identifiers": [{"type": "crypto_wallet", "value": "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "chain": "TRX"}]
    }
  ],
  // "from" is the <type> of "to": owner, beneficiary, director, employee, member, family,
  // associate, representative, controls, holder, operator, uses, address, payment
  "links": [{"from": "e1", "to": "e2", "type": "holder"}],
""" + _HANDLING_HELP


def freeze_template() -> str:
    """A commented starting file for an asset-freeze notice (JSON with ``//`` comment lines)."""
    return """\
// intelhub asset-freeze notice. Lines starting with // are comments. Every field is
// in docs/content.md. Amounts are exact decimal STRINGS in the currency's minor units.
{
  "type": "freeze",
  "authority": {"name": "Example Investigating Court", "country": "FR", "contact": "liaison@example.org"},
  "legal_basis": "The statute or order the freeze rests on.",
  "reference": "EXAMPLE-FREEZE-2026-001",
  // issued, extended or lifted; dates are YYYY-MM-DD, expires is optional
  "status": "issued",
  "effective": "2026-03-01",
  "expires": "2026-09-01",
  // The subject: a Person, Organization, Company or LegalEntity.
  "subject": {"id": "s1", "schema": "Person", "names": ["Ivan PETROV"], "nationality": ["RU"]},
  // kinds: bank_account, crypto_wallet, real_estate, vessel, vehicle, shares, cash, other
  "assets": [
    {
      "id": "a1",
      "kind": "bank_account",
      "identifier": {"type": "iban", "value": "FR76 3000 6000 0112 3456 7890 189"},
      "institution": "Example Bank",
      "amount": "12500.00",
      "currency": "EUR",
      "status": "frozen"
    },
    {
      "id": "a2",
      "kind": "crypto_wallet",
      "identifier": {"type": "crypto_wallet", "value": "bc1qzs23v9ccrydpk8qarc0jqgfzyvjz2f38f65pqd"},
      // quantity/unit: holdings in the asset's own unit; amount/currency: their value
      "quantity": "0.25",
      "unit": "BTC",
      "status": "frozen"
    }
  ],
  "requested_action": "Freeze any further assets of the subject and report them.",
""" + _HANDLING_HELP
