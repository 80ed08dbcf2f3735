"""Identifier normalisation: the one canonical form used for storage and lookup."""

from __future__ import annotations

import pytest
import stdnum.bitcoin
from hypothesis import given
from hypothesis import strategies as st

from hub.protocol.entities import validate_identifier
from hub.protocol.errors import ValidationError
from hub.protocol.identifiers import (
    IDENTIFIER_TYPES, b58decode, guess_identifier_kind, normalize_chain, normalize_identifier, resolve_kind,
    split_wallet,
)
from tests.strategies import identifiers

CANONICAL = [
    ("iban", "fr76 3000 6000 0112 3456 7890 189", "FR7630006000011234567890189"),
    ("IBAN", "DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
    ("bic", "deutdeffxxx", "DEUTDEFF"),
    ("bic", "DEUTDEFF500", "DEUTDEFF500"),
    ("imo", "IMO 9876543", "9876543"),
    ("imo", "９８７６５４３", "9876543"),  # full-width digits from a CJK keyboard
    ("mmsi", "636 012 345", "636012345"),
    ("lei", "529900example0000170", "529900EXAMPLE0000170"),
    ("phone", "+33 6 39 98 12 34", "+33639981234"),
    ("phone", "0044 7700 900123", "+447700900123"),
    ("tel", "(+1) 202-555-0143", "+12025550143"),
    ("email", " Karim.Haddad@Example.ORG ", "karim.haddad@example.org"),
    ("handle", "@SeaSpirit_Travel", "seaspirit_travel"),
    ("passport", "ly 123-4567", "LY1234567"),
    ("passport", "LY1234567<<", "LY1234567"),
    ("national_id", "123.456.789-01", "12345678901"),
    ("company_registration", "HRB 12345 B", "HRB12345B"),
    ("vehicle_registration", "品川 300 あ 12-34", "品川300あ1234"),
    ("account", "0001-234567", "0001234567"),
    ("wallet", "0x52908400098527886E0F7030069857D2E4169EE7", "0x52908400098527886e0f7030069857d2e4169ee7"),
    ("wallet", "usdt-trc20:TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj"),
    ("crypto_wallet", "1A9r3acriBVw5b5T5F16gmZEZWbjDPNSb6", "1A9r3acriBVw5b5T5F16gmZEZWbjDPNSb6"),
    ("crypto_wallet", "BC1QZS23V9CCRYDPK8QARC0JQGFZYVJZ2F38F65PQD", "bc1qzs23v9ccrydpk8qarc0jqgfzyvjz2f38f65pqd"),
    ("crypto_wallet", "bc1pqqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0sg5tmnz",
     "bc1pqqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0sg5tmnz"),
]


@pytest.mark.parametrize(("kind", "value", "expected"), CANONICAL)
def test_canonical_forms(kind: str, value: str, expected: str) -> None:
    assert normalize_identifier(kind, value) == expected
    assert normalize_identifier(kind, expected) == expected  # idempotent


REFUSED = [
    ("iban", "FR76 3000 6000 0112 3456 7890 188",
     'IBAN "FR76 3000 6000 0112 3456 7890 188" has a wrong check digit (check for a typo)'),
    ("iban", "XX76 3000", "does not start with a country that uses IBANs"),
    ("iban", "DE89 3704 0044 0532 0130", "wrong length"),
    ("imo", "IMO 9876542", 'IMO number "IMO 9876542" has a wrong check digit'),
    ("lei", "529900EXAMPLE0000171", "wrong check digit"),
    ("mmsi", "63601234", "exactly 9 digits"),
    ("phone", "06 39 98 12 34", "has no country code"),
    ("phone", "+33 6 39 98", "wrong number of digits for +33"),
    ("phone", "+999 1234 5678", "is not a phone number (its country code is unknown)"),
    ("phone", "+33", "is not a phone number"),
    ("email", "karim.example.org", "not an email address"),
    ("handle", "@two words", "one word without spaces"),
    ("passport", "AB1", "must be 5-20 letters A-Z and digits"),
    ("passport", "AB1234567$", "must be 5-20"),
    ("crypto_wallet", "1A9r3acriBVw5b5T5F16gmZEZWbjDPNSb7", "not a valid BTC address"),
    ("crypto_wallet", "0x1234", "not a valid ETH address (expected 0x and 40 hex digits)"),
    ("crypto_wallet", "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnk", "not a valid TRX address"),
    ("crypto_wallet", "bc1qzs23v9ccrydpk8qarc0jqgfzyvjz2f38f65pqe", "not a valid BTC address"),
    ("crypto_wallet", "abc", 'cannot tell the chain of wallet "abc"'),
    ("passport", "", "the passport is empty"),
    ("passport", "A" * 129, "longer than 128"),
    ("satellite", "x", 'unknown identifier type "satellite"'),
]


@pytest.mark.parametrize(("kind", "value", "message"), REFUSED)
def test_refused_with_actionable_message(kind: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        normalize_identifier(kind, value)
    assert message in str(err.value)
    assert err.value.path == ""


def test_non_string_value() -> None:
    with pytest.raises(ValidationError, match="got a number"):
        normalize_identifier("iban", 42)  # type: ignore[arg-type]


def test_phone_in_national_form_with_country() -> None:
    assert normalize_identifier("phone", "06 39 98 12 34", country="fr") == "+33639981234"
    with pytest.raises(ValidationError, match='"ZZ" is not an ISO 3166-1'):
        normalize_identifier("phone", "06 39 98 12 34", country="ZZ")


def test_wallet_chains() -> None:
    assert split_wallet("eth:0xAB" + "0" * 38) == ("0xab" + "0" * 38, "ETH")
    assert split_wallet("0xab" + "0" * 38, "bep20") == ("0xab" + "0" * 38, "BSC")
    assert split_wallet("TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj") == ("TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "TRX")
    # Unknown chains get a format check only and keep their case.
    assert split_wallet("So1anaAddressExample1234567890", "SOL") == ("So1anaAddressExample1234567890", "SOL")
    with pytest.raises(ValidationError, match="says chain TRX"):
        split_wallet("trx:TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "ETH")
    assert normalize_chain("usdt-trc20") == "TRX"
    with pytest.raises(ValidationError, match="not a chain name"):
        normalize_chain("no spaces allowed")


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@given(st.text(alphabet=_B58, max_size=60))
def test_base58_decodes_as_stdnum_does(text: str) -> None:
    assert b58decode(text) == stdnum.bitcoin.b58decode(text)


@pytest.mark.parametrize("text", ["", "1", "111", "1112", "z", "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj"])
def test_base58_edge_cases(text: str) -> None:
    assert b58decode(text) == stdnum.bitcoin.b58decode(text)


def test_kind_names_people_type() -> None:
    assert resolve_kind("IBAN") == "iban"
    assert resolve_kind("wallet") == "crypto_wallet"
    assert resolve_kind("IMO") == "imo"
    assert set(IDENTIFIER_TYPES) >= {"passport", "iban", "crypto_wallet", "imo", "phone", "handle", "lei"}


@pytest.mark.parametrize(("value", "kind"), [
    ("FR76 3000 6000 0112 3456 7890 189", "iban"),
    ("+33 6 39 98 12 34", "phone"),
    ("IMO 9876543", "imo"),
    ("karim@example.org", "email"),
    ("0x52908400098527886E0F7030069857D2E4169EE7", "crypto_wallet"),
    ("bc1qzs23v9ccrydpk8qarc0jqgfzyvjz2f38f65pqd", "crypto_wallet"),
    ("529900EXAMPLE0000170", "lei"),
    ("LY1234567", None),  # a passport or an id number: ambiguous
    ("", None),
])
def test_guess_identifier_kind(value: str, kind: str | None) -> None:
    assert guess_identifier_kind(value) == kind


IDENTIFIER_OBJECTS = [
    ({"type": "crypto_wallet", "value": "trc20:TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj"},
     {"type": "crypto_wallet", "value": "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "chain": "TRX"}),
    ({"type": "crypto_wallet", "value": "bsc:0xAB" + "0" * 38},
     {"type": "crypto_wallet", "value": "0xab" + "0" * 38, "chain": "BSC"}),
    ({"type": "handle", "value": "@Foo", "platform": "Twitter"}, {"type": "handle", "value": "foo", "platform": "x"}),
    ({"type": "passport", "value": "ly 1234567", "country": "ly"},
     {"type": "passport", "value": "LY1234567", "country": "LY"}),
]


@pytest.mark.parametrize(("raw", "expected"), IDENTIFIER_OBJECTS)
def test_identifier_objects(raw: dict[str, str], expected: dict[str, str]) -> None:
    assert validate_identifier(raw, "x") == expected
    assert validate_identifier(expected, "x") == expected


@pytest.mark.parametrize(("raw", "path", "message"), [
    ({"type": "IBAN", "value": "x"}, "i.type", 'did you mean "iban"?'),
    ({"value": "x"}, "i.type", "is required"),
    ({"type": "handle", "value": "x"}, "i.platform", "is required for a handle"),
    ({"type": "iban", "value": "FR7630006000011234567890189", "country": "FR"}, "i.country",
     "not a field of a iban identifier"),
    ({"type": "passport", "value": "LY1234567", "country": "XX"}, "i.country", '"XX" is not an ISO 3166-1'),
    ({"type": "iban"}, "i.value", "is required"),
    ({"type": "imo", "value": ["9876543"]}, "i.value", "expected a string, got a list"),
])
def test_identifier_object_errors(raw: dict[str, object], path: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_identifier(raw, "i")
    assert err.value.path == path
    assert message in err.value.reason


@given(identifiers())
def test_generated_identifiers_normalise_idempotently(raw: dict[str, str]) -> None:
    once = validate_identifier(raw, "x")
    assert validate_identifier(once, "x") == once
    extra = {k: once[k] for k in ("country", "chain") if k in once}
    assert normalize_identifier(once["type"], raw["value"], **extra) == once["value"]
