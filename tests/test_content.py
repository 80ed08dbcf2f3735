"""The content model (docs/content.md): examples, normalisation, errors, properties."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hub.protocol import codec
from hub.protocol.content import (
    MAX_CONTENT_BYTES, MAX_ENTITIES, PACKET_TYPES, alert_template, content_from_json, content_summary,
    content_to_json, default_topic, entities_of, freeze_template, identifiers_of, validate_content,
)
from hub.protocol.errors import ValidationError
from tests.strategies import alerts, contents, freezes

DOC = Path(__file__).resolve().parent.parent / "docs" / "content.md"
DOC_EXAMPLES = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]
EXAMPLES = {example["type"]: example for example in DOC_EXAMPLES}
ALERT, FREEZE = EXAMPLES["alert"], EXAMPLES["freeze"]


def test_docs_have_one_example_of_each_type() -> None:
    assert sorted(EXAMPLES) == sorted(PACKET_TYPES)
    assert len(DOC_EXAMPLES) == len(PACKET_TYPES)


@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=[e["type"] for e in DOC_EXAMPLES])
def test_doc_examples_validate_and_are_canonical(example: dict[str, Any]) -> None:
    assert validate_content(example) == example


@pytest.mark.parametrize("template", [alert_template, freeze_template])
def test_templates_parse_with_comments(template: Callable[[], str]) -> None:
    text = template()
    assert "\n// " in "\n" + text
    content = content_from_json(text)
    assert content["type"] in ("alert", "freeze")


def _round_trip(content: dict[str, Any]) -> None:
    """JSON -> validate -> canonical msgpack -> decode gives the same value, idempotently."""
    once = content_from_json(content_to_json(content))
    assert codec.decode(codec.encode(once)) == once
    assert validate_content(once) == once
    assert json.loads(json.dumps(once)) == once


@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=[e["type"] for e in DOC_EXAMPLES])
def test_examples_round_trip(example: dict[str, Any]) -> None:
    _round_trip(example)


def test_normalisation() -> None:
    raw = copy.deepcopy(ALERT)
    person = raw["entities"][0]
    person["names"] = ["  Karim   HADDAD ", "Karim HADDAD", "Ka\u0301rim"]  # spacing, repeat, NFD
    person["aliases"] = ["Karim HADDAD", "Abu Sami"]
    person["nationality"] = ["ly", "LY", "fr"]
    person["identifiers"] = [{"type": "iban", "value": "fr76 3000 6000 0112 3456 7890 189"}] * 2
    raw["handling"] = {"tlp": "tlp:amber", "codes": ["H2", "H0", "H2"], "source": "B", "information": "2"}
    raw["links"] = raw["links"] + raw["links"][:1]
    out = validate_content(raw)
    entity = out["entities"][0]
    assert entity["names"] == ["Karim HADDAD", "Kárim"]
    assert entity["aliases"] == ["Abu Sami"]
    assert entity["nationality"] == ["FR", "LY"]
    assert entity["identifiers"] == [{"type": "iban", "value": "FR7630006000011234567890189"}]
    assert out["handling"] == {"tlp": "AMBER", "codes": ["H0", "H2"], "source": "B", "information": "2"}
    assert out["links"] == ALERT["links"]


@pytest.mark.parametrize(("currency", "amount", "canonical"), [
    ("EUR", "12.5", "12.50"), ("eur", "0012", "12.00"), ("JPY", "100.00", "100"), ("BHD", "1.5", "1.500"),
    ("XAU", "1.250000", "1.25"), ("CLF", "3.1234", "3.1234"),
])
def test_amounts_take_minor_units(currency: str, amount: str, canonical: str) -> None:
    raw = copy.deepcopy(FREEZE)
    raw["assets"][0].update(amount=amount, currency=currency)
    asset = validate_content(raw)["assets"][0]
    assert (asset["amount"], asset["currency"]) == (canonical, currency.upper())


def test_receipt_normalises_ref_and_time() -> None:
    out = validate_content({"type": "receipt", "ref": "0190A6E4-5B7C-7D1E-8F00-1A2B3C4D5E6F",
                            "status": "delivered", "at": "2026-03-02T09:15:00.5+00:00"})
    assert out["ref"] == "0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f"
    assert out["at"] == "2026-03-02T09:15:00.500000Z"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``path`` ("assets[2].amount") to ``value``; ``...`` deletes it."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]

    def mutate(content: dict[str, Any]) -> None:
        target: Any = content
        for key in keys[:-1]:
            target = target[key]
        if value is ...:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return mutate


BAD = [
    ("bad IBAN", FREEZE, _set("assets[0].identifier.value", "FR76 3000 6000 0112 3456 7890 188"),
     "assets[0].identifier.value",
     'IBAN "FR76 3000 6000 0112 3456 7890 188" has a wrong check digit (check for a typo)'),
    ("decimal comma", FREEZE, _set("assets[3].amount", "12,5"), "assets[3].amount",
     '"12,5" is not a decimal (use "12.50")'),
    ("too many places", FREEZE, _set("assets[0].amount", "1.255"), "assets[0].amount",
     '"1.255" has too many decimal places (EUR has 2)'),
    ("negative", FREEZE, _set("assets[0].amount", "-1.00"), "assets[0].amount", "never negative"),
    ("number amount", FREEZE, _set("assets[0].amount", 12), "assets[0].amount",
     "use a string for exact decimals"),
    ("currency without amount", FREEZE, _set("assets[2].currency", "EUR"), "assets[2].amount", "is required"),
    ("unknown currency", FREEZE, _set("assets[0].currency", "EUO"), "assets[0].currency",
     '"EUO" is not an ISO 4217 currency code (did you mean "EUR"?)'),
    ("unknown country", ALERT, _set("entities[0].nationality", ["XX"]), "entities[0].nationality[0]",
     '"XX" is not an ISO 3166-1 alpha-2 country code'),
    ("alpha-3 country", FREEZE, _set("authority.country", "FRA"), "authority.country", 'did you mean "FR"?'),
    ("bad date", FREEZE, _set("effective", "2026-13-01"), "effective",
     '"2026-13-01" is not a date: month must be in 1..12'),
    ("partial date where full needed", FREEZE, _set("effective", "2026-03"), "effective",
     "use YYYY-MM-DD"),
    ("expires before effective", FREEZE, _set("expires", "2026-01-01"), "expires",
     "2026-01-01 must be after effective 2026-03-02"),
    ("death before birth", ALERT, _set("entities[0].death_date", "1970"), "entities[0].death_date",
     "is before birth_date"),
    ("dangling link", ALERT, _set("links[1].to", "e9"), "links[1].to", '"e9" is not an entity in this packet'),
    ("self link", ALERT, _set("links[0].to", "e1"), "links[0].to", "two different entities"),
    ("unknown link type", ALERT, _set("links[0].type", "owns"), "links[0].type", 'did you mean "owner"?'),
    ("unknown field", ALERT, _set("entities[0].nme", ["x"]), "entities[0].nme",
     'unknown field (did you mean "names"?)'),
    ("field of another schema", FREEZE, _set("subject.incorporation_date", "2001"),
     "subject.incorporation_date", "not a field of a Person (only Organization, Company, LegalEntity have it)"),
    ("int for name", ALERT, _set("entities[0].names", [42]), "entities[0].names[0]",
     "expected a string, got a number"),
    ("null", ALERT, _set("case_ref", None), "case_ref", "omit an optional field instead of null"),
    ("empty names", ALERT, _set("entities[0].names", []), "entities[0].names",
     "a Person needs at least one name"),
    ("blank name", ALERT, _set("entities[0].names", ["   "]), "entities[0].names[0]", "must not be empty"),
    ("account without identifier", ALERT, _set("entities[5].identifiers", []), "entities[5].names",
     "a BankAccount needs a name or an identifier of type iban or account"),
    ("duplicate entity id", ALERT, _set("entities[1].id", "e1"), "entities[1].id",
     '"e1" is already the id of another entity'),
    ("duplicate asset id", FREEZE, _set("assets[1].id", "s1"), "assets[1].id", "already used"),
    ("too many entities", ALERT,
     lambda c: c.update(links=[], entities=[{"id": f"e{i}", "schema": "Person", "names": ["X"]}
                                            for i in range(MAX_ENTITIES + 1)]),
     "entities", f"has {MAX_ENTITIES + 1} items, over the limit of {MAX_ENTITIES}"),
    ("no entities", ALERT, _set("entities", []), "entities", "needs at least 1 item"),
    ("missing handling", ALERT, _set("handling", ...), "handling", "is required"),
    ("TLP 1.0 name", ALERT, _set("handling.tlp", "WHITE"), "handling.tlp", 'renamed WHITE to "CLEAR"'),
    ("H2 with CLEAR", ALERT, _set("handling", {"tlp": "CLEAR", "codes": ["H2"], "source": "A", "information": "1"}),
     "handling.codes", "contradicts TLP:CLEAR"),
    ("bad handling code", ALERT, _set("handling.codes", ["H3"]), "handling.codes[0]", "not a handling code"),
    ("wrong subject schema", FREEZE, _set("subject.schema", "Vessel"), "subject.schema", "is not allowed here"),
    ("OnlineAccount", ALERT, _set("entities[7].schema", "OnlineAccount"), "entities[7].schema",
     'FtM calls online accounts "UserAccount"'),
    ("wrong identifier for asset", FREEZE, _set("assets[2].identifier", {"type": "mmsi", "value": "1"}),
     "assets[2].identifier.value", "exactly 9 digits"),
    ("asset kind mismatch", FREEZE, _set("assets[0].identifier", {"type": "imo", "value": "9876543"}),
     "assets[0].identifier.type", "a bank_account asset is identified by iban or account"),
    ("lifted notice, frozen asset", FREEZE, _set("status", "lifted"), "assets[0].status", 'must be "lifted"'),
    ("bad ref", EXAMPLES["withdraw"], _set("ref", "not-a-uuid"), "ref", "is not a packet id"),
    ("amend of a receipt", EXAMPLES["amend"], _set("content", EXAMPLES["receipt"]), "content.type",
     'a full "alert" or "freeze"'),
    ("amend inner path", EXAMPLES["amend"], _set("content.assets[0].currency", "EUO"),
     "content.assets[0].currency", "not an ISO 4217 currency code"),
    ("bad timestamp", EXAMPLES["receipt"], _set("at", "2026-03-02 09:15"), "at", "is not a UTC timestamp"),
    ("non-UTC timestamp", EXAMPLES["receipt"], _set("at", "2026-03-02T09:15:00+01:00"), "at",
     "is not a UTC timestamp"),
    ("bidi override", ALERT, _set("title", "Invoice \u202egpj.exe"), "title", "bidirectional control U+202E"),
    ("control character", ALERT, _set("title", "a\x00b"), "title", "control character U+0000"),
    ("control in multiline text", ALERT, _set("summary", "line one\nline\x1btwo"), "summary",
     "control character U+001B"),
    ("C1 control in a name", ALERT, _set("entities[0].names", ["Ahmed\x9bSaleh"]), "entities[0].names[0]",
     "control character U+009B"),
    ("bidi isolate in Arabic", ALERT, _set("entities[0].names", ["\u0623\u062d\u0645\u062f \u2067x"]),
     "entities[0].names[0]", "bidirectional control U+2067"),
    ("unpaired surrogate", ALERT, _set("title", "\ud800"), "title", "unpaired surrogate"),
    ("unknown type", ALERT, _set("type", "alerts"), "type", 'did you mean "alert"?'),
    ("too long title", ALERT, _set("title", "x" * 201), "title", "over the limit of 200"),
]


@pytest.mark.parametrize(("base", "mutate", "path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_content(base: dict[str, Any], mutate: Callable[[dict[str, Any]], None], path: str,
                     message: str) -> None:
    content = copy.deepcopy(base)
    mutate(content)
    with pytest.raises(ValidationError) as err:
        validate_content(content)
    assert err.value.path == path, str(err.value)
    assert message in err.value.reason
    assert str(err.value) == f"{path}: {err.value.reason}"


def _reference_clean_text(value: str, multiline: bool) -> str:
    """clean_text as first written, every regex run on every text: the fast paths must agree."""
    import unicodedata

    from hub.protocol.entities import _BIDI, _CONTROL, _SPACES

    text = unicodedata.normalize("NFC", value)
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip() if multiline else _SPACES.sub(" ", text).strip()
    if (c := _CONTROL.search(text)) is not None:
        raise ValidationError("x", f"contains the control character U+{ord(c[0]):04X}")
    if (m := _BIDI.search(text)) is not None:
        raise ValidationError("x", f"contains the invisible bidirectional control U+{ord(m[0]):04X}")
    if not text:
        raise ValidationError("x", "must not be empty")
    return text


# Text built from pieces that each path treats differently: controls allowed in multiline text
# or not, spaces of other kinds, a bidi override, non-ASCII letters, and a run long enough for
# the bytes path (over 64 ASCII characters).
_PRINTABLE_PIECES = [" ", "  ", "Al-Rashid", "x" * 70, "\u0645\u062d\u0645\u062f", "e\u0301"]
_ASCII_PIECES = ["\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", " ", "  ", "Al-Rashid", "x" * 70]
_OTHER_PIECES = ["\x85", "\x9b", "\xa0", "\u2003", "\u202e", "\u2067", "\u0645\u062d\u0645\u062f", "e\u0301"]
_TEXTS = st.one_of(*(st.lists(st.sampled_from(pieces), max_size=8).map("".join)
                     for pieces in (_PRINTABLE_PIECES, _ASCII_PIECES, _ASCII_PIECES + _OTHER_PIECES)),
                   st.text(st.characters(codec="utf-8"), max_size=100))


@settings(max_examples=1000)
@given(_TEXTS, st.booleans())
@example("Al-Rashid  Al-Rashid", False)
@example("x" * 70 + "a\x0bb", True)
@example("x" * 70 + "\tAl-Rashid\r\n", True)
@example("x" * 70 + "\x1fb", False)
def test_clean_text_agrees_with_the_plain_regex_version(text: str, multiline: bool) -> None:
    from hub.protocol.entities import clean_text

    try:
        expected: object = _reference_clean_text(text, multiline)
    except ValidationError as exc:
        expected = exc.reason
    try:
        got: object = clean_text(text, "x", 10_000, multiline=multiline)
    except ValidationError as exc:
        got = exc.reason
    assert got == expected


def test_printable_text_is_left_to_one_check() -> None:
    # clean_text skips its control, bidi and spacing regexes for text str.isprintable() accepts:
    # sound only if no printable character is one they look for, and none but U+0020 is a space.
    from hub.protocol.entities import _BIDI, _CONTROL, _SPACES

    printable = "".join(c for c in map(chr, range(0x110000)) if c.isprintable())
    assert _CONTROL.search(printable) is None and _BIDI.search(printable) is None
    assert _SPACES.findall(printable) == [" "]
    assert [c for c in printable if c.isspace()] == [" "]


@pytest.mark.parametrize(("name", "expected"), [
    ("  Ahmed   Saleh ", "Ahmed Saleh"),  # printable, but runs of spaces
    ("Ahmed\tSaleh", "Ahmed Saleh"),
    ("Ahmed\u00a0\u2003Saleh", "Ahmed Saleh"),  # no-break and em spaces: not printable
    ("\u0623\u062d\u0645\u062f  \u0635\u0627\u0644\u062d", "\u0623\u062d\u0645\u062f \u0635\u0627\u0644\u062d"),
])
def test_names_spaced_any_way_are_one_name(name: str, expected: str) -> None:
    content = copy.deepcopy(ALERT)
    content["entities"][0]["names"] = [name]
    assert validate_content(content)["entities"][0]["names"] == [expected]


def test_multiline_text_keeps_its_lines() -> None:
    content = copy.deepcopy(ALERT)
    content["summary"] = "  one\r\ntwo\rthree\n\tfour  "
    assert validate_content(content)["summary"] == "one\ntwo\nthree\n\tfour"


def test_not_an_object() -> None:
    with pytest.raises(ValidationError, match="content must be an object, got a list"):
        validate_content([])


def test_encoded_size_limit() -> None:
    content = copy.deepcopy(ALERT)
    content["entities"] = [{"id": f"e{i}", "schema": "Person", "names": ["X"], "notes": "n" * 9000}
                           for i in range(MAX_ENTITIES)]
    content.pop("links")
    with pytest.raises(ValidationError, match=f"over the limit of {MAX_CONTENT_BYTES}"):
        validate_content(content)


@pytest.mark.parametrize(("text", "path", "message"), [
    ('{"type": "freeze", "assets": [{"amount": 12.5}]}', "assets[0].amount",
     'the JSON number 12.5 is not allowed: use a string for exact decimals ("12.5")'),
    ('{"type": "freeze", "assets": [{"amount": 1e3}]}', "assets[0].amount", "use a string for exact decimals"),
    ('{"type": "alert", "type": "freeze"}', "type", "appears twice in one object"),
    ('{"type": "withdraw", "x": {"y": 1, "y": 2}}', "x.y", "appears twice"),
    ('{"type": "alert",', "", "not valid JSON"),
    ('{"a": NaN}', "a", "not allowed"),
    ("[" * 100_000, "", "JSON is nested too deeply"),
    ("// only a comment\n", "", "not valid JSON"),
    ("1" * 5000, "", "not valid JSON"),
])
def test_json_errors(text: str, path: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        content_from_json(text)
    assert err.value.path == path
    assert message in str(err.value)


def test_json_comments_are_whole_lines_only() -> None:
    text = '// a comment\n{"type": "withdraw",\n   // another\n "ref": "0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f",' \
           ' "reason": "see http://example.org // not a comment"}'
    assert content_from_json(text)["reason"] == "see http://example.org // not a comment"


def test_json_is_readable_utf8() -> None:
    text = content_to_json(ALERT)
    assert "كريم حداد" in text and "Иван Петров" in text and "陈明" in text
    assert text.endswith("}\n")


def test_helpers() -> None:
    assert [e["id"] for e in entities_of(ALERT)] == [f"e{i}" for i in range(1, 9)]
    assert [e["id"] for e in entities_of(EXAMPLES["amend"])] == ["s1"]
    assert entities_of(EXAMPLES["receipt"]) == []
    values = [i["value"] for i in identifiers_of(FREEZE)]
    assert values == ["LY1234567", "FR7630006000011234567890189", "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj", "9876543"]
    assert default_topic(ALERT) == "alerts.entity.migrant_smuggling"
    assert default_topic(FREEZE) == "notices.freeze"
    assert default_topic(EXAMPLES["amend"]) == "notices.freeze"
    assert default_topic(EXAMPLES["withdraw"]) == "control.withdraw"
    assert default_topic(EXAMPLES["withdraw"], "alerts.entity.other") == "alerts.entity.other"
    for doc in DOC_EXAMPLES:
        summary = content_summary(doc)
        assert "\n" not in summary and summary.split()[0] == doc["type"].upper()
    assert "EUR 358250.00" in content_summary(FREEZE)


@given(contents())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_generated_content_round_trips(content: dict[str, Any]) -> None:
    _round_trip(content)
    assert default_topic(content)
    assert "\n" not in content_summary(content)


@given(st.one_of(alerts(), freezes()))
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_generated_alerts_and_freezes(content: dict[str, Any]) -> None:
    assert content["type"] in ("alert", "freeze")
    assert validate_content(content) == content


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(PACKET_TYPES + ("Person", "e1", "EUR", "12.50", "2026-01-01", "iban")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "names", "id", "schema", "entities", "assets", "value", "x"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=30,
)


@given(_json_values)
def test_junk_raises_only_validation_error(junk: Any) -> None:
    try:
        validate_content(junk)
    except ValidationError:
        pass


@given(contents(), st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_content_raises_only_validation_error(content: dict[str, Any], data: st.DataObject) -> None:
    # Replace or delete one value anywhere in valid content.
    slots: list[tuple[Any, Any]] = []
    stack: list[Any] = [content]
    while stack:
        node = stack.pop()
        keys = list(node) if type(node) is dict else range(len(node))
        for key in keys:
            slots.append((node, key))
            if type(node[key]) in (dict, list):
                stack.append(node[key])
    node, key = data.draw(st.sampled_from(slots))
    if type(node) is dict and data.draw(st.booleans()):
        del node[key]
    else:
        node[key] = data.draw(_json_values)
    try:
        validate_content(content)
    except ValidationError:
        pass


@given(st.text(max_size=200))
def test_random_json_text_raises_only_validation_error(text: str) -> None:
    try:
        content_from_json(text)
    except ValidationError:
        pass


@given(st.uuids())
def test_packet_refs_are_canonical_lowercase_uuids(u: Any) -> None:
    # Written in capitals and with spaces around, a ref reads as the one canonical UUID text.
    for written in (str(u), f"  {str(u).upper()} "):
        out = validate_content({"type": "withdraw", "ref": written, "reason": "duplicate"})
        assert out["ref"] == str(u)
    with pytest.raises(ValidationError, match="is not a packet id"):
        validate_content({"type": "withdraw", "ref": str(u).replace("-", ""), "reason": "duplicate"})
