"""Hypothesis strategies that generate VALID, already-normalised content.

``alerts()``, ``freezes()`` and ``contents()`` (any content type) draw raw
content and pass it through :func:`validate_content`, so every value they
produce satisfies ``validate_content(x) == x``. Names are drawn from Latin,
Arabic, Cyrillic and CJK scripts. Identifiers are synthetic but pass every
checksum (IBAN, IMO, LEI, base58check, bech32).
"""

from __future__ import annotations

import datetime
import hashlib
import string
from typing import Any

import stdnum.imo
from hypothesis import strategies as st
from schwifty import IBAN
from stdnum.iso7064 import mod_97_10

from hub.protocol.content import (
    ASSET_KINDS, CATEGORIES, FREEZE_STATUSES, HANDLING_CODES, INFORMATION_GRADES,
    RECEIPT_STATUSES, SEVERITIES, SOURCE_GRADES, TLP_LEVELS, validate_content,
)
from hub.protocol.entities import GENDERS, LEGAL_ENTITY_SCHEMAS, LINK_TYPES, SCHEMAS

Draw = Any  # hypothesis' DrawFn

_SCRIPTS = {
    "latin": st.sampled_from(string.ascii_letters + "ÀÉÎÕÜßçñøł"),
    "arabic": st.characters(min_codepoint=0x0621, max_codepoint=0x063A),
    "cyrillic": st.characters(min_codepoint=0x0410, max_codepoint=0x044F),
    "cjk": st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5),
}


@st.composite
def names(draw: Draw) -> str:
    """A name of one to three words, all in one script."""
    letters = _SCRIPTS[draw(st.sampled_from(sorted(_SCRIPTS)))]
    words = draw(st.lists(st.text(letters, min_size=1, max_size=10), min_size=1, max_size=3))
    return " ".join(words)


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _base58check(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n, out = int.from_bytes(raw, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def _segwit(program: bytes, version: int) -> str:
    """A bech32 (v0) or bech32m (v1+) mainnet address, per BIP 173/350."""
    data, acc, bits = [version], 0, 0
    for byte in program:
        acc, bits = (acc << 8) | byte, bits + 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    chk = 1
    for value in [3, 3, 0, 2, 3] + data + [0] * 6:  # [3, 3, 0, 2, 3] is "bc" expanded
        top, chk = chk >> 25, (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= gen if (top >> i) & 1 else 0
    chk ^= 1 if version == 0 else 0x2BC830A3
    return "bc1" + "".join(_B32[d] for d in data + [(chk >> 5 * (5 - i)) & 31 for i in range(6)])


@st.composite
def wallets(draw: Draw) -> dict[str, str]:
    body = draw(st.binary(min_size=20, max_size=20))
    choice = draw(st.sampled_from(["eth", "trx", "btc-legacy", "btc-bech32", "btc-taproot", "prefixed"]))
    if choice == "eth":
        return {"type": "crypto_wallet", "value": "0x" + body.hex().upper(), "chain": "ETH"}
    if choice == "trx":
        return {"type": "crypto_wallet", "value": _base58check(b"\x41" + body)}
    if choice == "btc-legacy":
        return {"type": "crypto_wallet", "value": _base58check(b"\x00" + body), "chain": "bitcoin"}
    if choice == "btc-bech32":
        return {"type": "crypto_wallet", "value": _segwit(body, 0)}
    if choice == "btc-taproot":
        return {"type": "crypto_wallet", "value": _segwit(body + body[:12], 1)}
    return {"type": "crypto_wallet", "value": "usdt-trc20:" + _base58check(b"\x41" + body)}


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


@st.composite
def identifiers(draw: Draw, kinds: tuple[str, ...] | None = None) -> dict[str, str]:
    """A raw identifier object (not yet normalised) of one of ``kinds``."""
    kind = draw(st.sampled_from(kinds or (
        "passport", "national_id", "tax_id", "iban", "bic", "account", "crypto_wallet", "imo", "mmsi",
        "phone", "email", "handle", "vehicle_registration", "company_registration", "lei")))
    if kind == "crypto_wallet":
        return draw(wallets())
    if kind == "iban":
        value = str(IBAN.generate("DE", bank_code="37040044", account_code=draw(_digits(10))))
        return {"type": "iban", "value": " ".join(value[i:i + 4] for i in range(0, len(value), 4))}
    if kind == "imo":
        six = draw(_digits(6))
        return {"type": "imo", "value": "IMO " + six + stdnum.imo.calc_check_digit(six)}
    if kind == "lei":
        base = "5299" + draw(st.text(string.ascii_uppercase + string.digits, min_size=14, max_size=14))
        return {"type": "lei", "value": base + mod_97_10.calc_check_digits(base)}
    if kind == "phone":  # ranges Ofcom and ARCEP reserve for fiction
        return {"type": "phone", "value": draw(st.sampled_from(["+44 7700 900", "+33 6 39 98 1"])) + draw(_digits(3))}
    if kind == "handle":
        return {"type": "handle", "value": "@" + draw(st.text(string.ascii_letters + "_", min_size=3, max_size=15)),
                "platform": draw(st.sampled_from(["telegram", "TikTok", "twitter", "facebook"]))}
    simple = {
        "passport": st.from_regex(r"[A-Z]{2}[0-9]{7}", fullmatch=True),
        "national_id": st.from_regex(r"[0-9]{3}-[0-9]{3}-[0-9]{4}", fullmatch=True),
        "tax_id": st.from_regex(r"[A-Z]{2}[0-9]{9}", fullmatch=True),
        "bic": st.sampled_from(["DEUTDEFF", "BNPAFRPPXXX", "BARCGB22", "CHASUS33", "BOTKJPJT"]),
        "account": st.from_regex(r"[0-9]{4,12}", fullmatch=True),
        "mmsi": _digits(9),
        "email": st.from_regex(r"[a-z]{1,8}\.[A-Z]{1,8}@example\.(org|net)", fullmatch=True),
        "vehicle_registration": st.from_regex(r"[A-Z]{2}-[0-9]{3}-[A-Z]{2}", fullmatch=True),
        "company_registration": st.from_regex(r"HRB [0-9]{4,6}", fullmatch=True),
    }
    out = {"type": kind, "value": draw(simple[kind])}
    if kind in ("passport", "national_id", "tax_id", "vehicle_registration", "company_registration"):
        if draw(st.booleans()):
            out["country"] = draw(_countries).lower()
    return out


_countries = st.sampled_from(["CA", "FR", "DE", "IT", "JP", "GB", "US", "LY", "TR", "AF", "SY", "XK"])
_dates = st.dates(datetime.date(1940, 1, 1), datetime.date(2040, 12, 31))
_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60).filter(
    lambda s: s.strip() and not any("\u202a" <= c <= "\u202e" or "\u2066" <= c <= "\u2069" for c in s))


@st.composite
def entities(draw: Draw, entity_id: str, schemas: tuple[str, ...] = SCHEMAS) -> dict[str, Any]:
    schema = draw(st.sampled_from(schemas))
    out: dict[str, Any] = {"id": entity_id, "schema": schema}
    required = {"BankAccount": ("iban", "account"), "CryptoWallet": ("crypto_wallet",), "Phone": ("phone",),
                "Email": ("email",), "UserAccount": ("handle",)}.get(schema)
    if required is None or draw(st.booleans()):
        out["names"] = draw(st.lists(names(), min_size=1, max_size=3))
    idents = draw(st.lists(identifiers(), max_size=2))
    if required is not None:
        idents.append(draw(identifiers(required)))
    if idents:
        out["identifiers"] = idents
    if draw(st.booleans()):
        out["aliases"] = draw(st.lists(names(), max_size=2))
    if draw(st.booleans()):
        out["countries"] = draw(st.lists(_countries, max_size=3))
    if schema == "Person":
        out["nationality"] = draw(st.lists(_countries, min_size=1, max_size=2))
        birth = draw(_dates).isoformat()[: draw(st.sampled_from([4, 7, 10]))]
        out["birth_date"] = birth
        out["gender"] = draw(st.sampled_from(GENDERS))
    elif schema in LEGAL_ENTITY_SCHEMAS:
        out["incorporation_date"] = draw(_dates).isoformat()
        out["jurisdiction"] = draw(_countries)
    elif schema == "Vessel":
        out["flag"] = draw(_countries)
    elif schema == "Address":
        out["full"] = draw(_texts)
    if draw(st.booleans()):
        out["notes"] = draw(_texts)
    return out


@st.composite
def _handling(draw: Draw) -> dict[str, Any]:
    tlp = draw(st.sampled_from(TLP_LEVELS))
    codes = draw(st.lists(st.sampled_from(HANDLING_CODES), unique=True))
    if tlp == "CLEAR":
        codes = [c for c in codes if c != "H2"]
    return {"tlp": tlp, "codes": codes, "source": draw(st.sampled_from(SOURCE_GRADES)),
            "information": draw(st.sampled_from(INFORMATION_GRADES))}


@st.composite
def _raw_alert(draw: Draw) -> dict[str, Any]:
    count = draw(st.integers(1, 5))
    ents = [draw(entities(f"e{i + 1}")) for i in range(count)]
    out: dict[str, Any] = {"type": "alert", "title": draw(names()), "category": draw(st.sampled_from(CATEGORIES)),
                           "severity": draw(st.sampled_from(SEVERITIES)), "summary": draw(_texts),
                           "entities": ents, "handling": draw(_handling())}
    if count > 1:
        pairs = st.tuples(st.integers(1, count), st.integers(1, count)).filter(lambda p: p[0] != p[1])
        out["links"] = [{"from": f"e{a}", "to": f"e{b}", "type": draw(st.sampled_from(LINK_TYPES))}
                        for a, b in draw(st.lists(pairs, max_size=4))]
    if draw(st.booleans()):
        out["valid_until"] = draw(_dates).isoformat()
        out["case_ref"] = draw(names())
    return out


@st.composite
def _raw_asset(draw: Draw, asset_id: str, lifted: bool) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(ASSET_KINDS)))
    types = ASSET_KINDS[kind]
    out: dict[str, Any] = {"id": asset_id, "kind": kind, "status": "lifted" if lifted else
                           draw(st.sampled_from(["frozen", "lifted"]))}
    if types and (kind in ("bank_account", "crypto_wallet") or draw(st.booleans())):
        out["identifier"] = draw(identifiers(types))
    else:
        out["description"] = draw(_texts)
    if draw(st.booleans()):
        currency = draw(st.sampled_from(["EUR", "usd", "JPY", "GBP", "CAD", "BHD", "XAU"]))
        whole = draw(st.integers(0, 10**12))
        out["amount"] = f"{whole}" if currency in ("JPY", "XAU") else f"{whole}.{draw(_digits(2))}"
        out["currency"] = currency
    if kind == "crypto_wallet" and draw(st.booleans()):
        out["quantity"], out["unit"] = f"{draw(st.integers(0, 10**6))}.{draw(_digits(8))}", "btc"
    return out


@st.composite
def _raw_freeze(draw: Draw) -> dict[str, Any]:
    status = draw(st.sampled_from(FREEZE_STATUSES))
    effective = draw(_dates)
    out: dict[str, Any] = {
        "type": "freeze", "authority": {"name": draw(names()), "country": draw(_countries)},
        "legal_basis": draw(_texts), "reference": draw(names()), "status": status,
        "subject": draw(entities("s1", LEGAL_ENTITY_SCHEMAS)),
        "assets": [draw(_raw_asset(f"a{i}", status == "lifted")) for i in range(draw(st.integers(1, 4)))],
        "effective": effective.isoformat(), "requested_action": draw(_texts), "handling": draw(_handling()),
    }
    if draw(st.booleans()):
        out["expires"] = (effective + datetime.timedelta(days=draw(st.integers(1, 3650)))).isoformat()
    return out


def alerts() -> st.SearchStrategy[dict[str, Any]]:
    """Valid, normalised entity alerts."""
    return _raw_alert().map(validate_content)


def freezes() -> st.SearchStrategy[dict[str, Any]]:
    """Valid, normalised asset-freeze notices."""
    return _raw_freeze().map(validate_content)


_refs = st.uuids().map(str)


@st.composite
def _raw_other(draw: Draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(["amend", "withdraw", "receipt"]))
    if kind == "amend":
        inner = draw(st.one_of(_raw_alert(), _raw_freeze()))
        return {"type": "amend", "ref": draw(_refs), "reason": draw(_texts), "content": inner}
    if kind == "withdraw":
        return {"type": "withdraw", "ref": draw(_refs), "reason": draw(_texts)}
    moment = draw(st.datetimes(datetime.datetime(2020, 1, 1), datetime.datetime(2040, 1, 1)))
    out = {"type": "receipt", "ref": draw(_refs), "status": draw(st.sampled_from(RECEIPT_STATUSES)),
           "at": moment.isoformat() + "Z"}
    if draw(st.booleans()):
        out["note"] = draw(_texts)
    return out


def contents() -> st.SearchStrategy[dict[str, Any]]:
    """Any valid, normalised content: alert, freeze, amend, withdraw or receipt."""
    return st.one_of(alerts(), freezes(), _raw_other().map(validate_content))
