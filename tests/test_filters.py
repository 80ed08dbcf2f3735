"""Subscription filters: every condition on real sealed headers and validated content, the
evaluation order, watch lists, every configuration error, and the examples in docs/node.md."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from clients.node.filters import STORE_ALL, Decision, FilterSet
from clients.node.names import score
from clients.node.sinks import sinks_from_config
from hub.protocol.content import validate_content
from hub.protocol.envelope import Header, parse_packet, seal
from hub.protocol.errors import ConfigError
from hub.protocol.federation import Federation

from .conftest import NOW, sample_alert

ROOT = Path(__file__).resolve().parent.parent
REF = "0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f"
SMUGGLING = "alerts.entity.migrant_smuggling"
IBAN_SPACED = "FR76 3000 6000 0112 3456 7890 189"
IBAN = "FR7630006000011234567890189"


def packet(fed: Federation, content: dict[str, Any], *, sender: str = "IT", topic: str = SMUGGLING,
           ) -> tuple[Header, dict[str, Any]]:
    """A really sealed packet's parsed header, and the content validated as a node opens it."""
    m = fed.members[sender]
    to = "FR" if sender != "FR" else "DE"
    raw = seal(content, signer=m.officer, signer_cert=m.officer_cert, recipients=[fed.members[to].node_cert],
               topic=topic, now=NOW)
    return parse_packet(raw).header, validate_content(content)


def alert(**changes: Any) -> dict[str, Any]:
    content = sample_alert()
    handling = changes.pop("handling", {})
    content.update(changes)
    content["handling"].update(handling)
    return content


def freeze(nationality: str = "FR", iban: str = IBAN_SPACED) -> dict[str, Any]:
    return {
        "type": "freeze",
        "authority": {"name": "Tribunal judiciaire de Paris", "country": "FR"},
        "legal_basis": "Criminal seizure order.",
        "reference": "JIRS-2026-0117",
        "status": "issued",
        "subject": {"id": "s1", "schema": "Person", "names": ["Karim HADDAD", "كريم حداد"],
                    "nationality": [nationality]},
        "assets": [
            {"id": "a1", "kind": "bank_account", "identifier": {"type": "iban", "value": iban},
             "amount": "48250.00", "currency": "EUR", "holder": "Ivan Petrov", "status": "frozen"},
        ],
        "effective": "2026-03-02",
        "requested_action": "Freeze any account of the subject.",
        "handling": {"tlp": "AMBER+STRICT", "codes": ["H2"], "source": "A", "information": "1"},
    }


def amend(content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "amend", "ref": REF, "reason": "Extended.", "content": content}


WITHDRAW = {"type": "withdraw", "ref": REF, "reason": "Wrong vessel."}
RECEIPT = {"type": "receipt", "ref": REF, "status": "delivered", "at": "2026-03-02T09:15:00Z"}


def filters(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> FilterSet:
    for name, body in (files or {}).items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    return FilterSet.from_config(tomllib.loads(text), tmp_path)


def rule(conditions: str, tmp_path: Path, files: dict[str, str] | None = None, extra: str = "") -> FilterSet:
    """One rule that notifies sink "s" when ``conditions`` hold."""
    return filters(tmp_path, f'{extra}\n[sinks.s]\ntype = "jsonl"\npath = "s.jsonl"\n'
                             f'[[filters]]\nname = "r"\n{conditions}\nnotify = "s"\n', files)


def hit(fs: FilterSet, fed: Federation, content: dict[str, Any], **kw: Any) -> bool:
    return fs.decide(*packet(fed, content, **kw)).rule == "r"


# -- conditions ----------------------------------------------------------------


def test_no_rules_store_everything(fed: Federation, tmp_path: Path) -> None:
    fs = filters(tmp_path, "")
    assert len(fs) == 0 and fs.decide(*packet(fed, sample_alert())) is STORE_ALL


def test_packet_type_and_amendments_count_as_their_content(fed: Federation, tmp_path: Path) -> None:
    fs = rule('packet_type = "freeze"', tmp_path)
    assert hit(fs, fed, freeze(), topic="notices.freeze")
    assert hit(fs, fed, amend(freeze()), topic="notices.freeze")
    assert not hit(fs, fed, sample_alert()) and not hit(fs, fed, amend(sample_alert()))
    only_amend = rule('packet_type = ["amend"]', tmp_path)
    assert hit(only_amend, fed, amend(sample_alert())) and not hit(only_amend, fed, sample_alert())


def test_topic_patterns(fed: Federation, tmp_path: Path) -> None:
    fs = rule('topic = ["alerts.entity.*", "notices.>"]', tmp_path)
    assert hit(fs, fed, sample_alert()) and hit(fs, fed, freeze(), topic="notices.freeze")
    assert not hit(fs, fed, sample_alert(), topic="alerts.other")
    assert not hit(rule('topic = "alerts.*"', tmp_path), fed, sample_alert())


def test_sender_nation(fed: Federation, tmp_path: Path) -> None:
    fs = rule('sender = ["it", "DE"]', tmp_path)  # codes are case-insensitive
    assert hit(fs, fed, sample_alert(), sender="IT") and hit(fs, fed, sample_alert(), sender="DE")
    assert not hit(fs, fed, sample_alert(), sender="GB")


def test_category_severity_and_minimum(fed: Federation, tmp_path: Path) -> None:
    assert hit(rule('category = ["human_trafficking", "migrant_smuggling"]', tmp_path), fed, sample_alert())
    assert not hit(rule('category = "money_laundering"', tmp_path), fed, sample_alert())
    assert not hit(rule('category = "migrant_smuggling"', tmp_path), fed, freeze())  # freezes have none
    assert hit(rule('severity = ["High"]', tmp_path), fed, sample_alert())
    assert not hit(rule('severity = "critical"', tmp_path), fed, sample_alert())
    minimum = rule('min_severity = "high"', tmp_path)
    assert hit(minimum, fed, alert(severity="critical")) and hit(minimum, fed, alert(severity="high"))
    assert not hit(minimum, fed, alert(severity="medium")) and not hit(minimum, fed, freeze())


def test_tlp_and_maximum(fed: Federation, tmp_path: Path) -> None:
    assert hit(rule('tlp = ["tlp:amber", "RED"]', tmp_path), fed, sample_alert())
    assert not hit(rule('tlp = "GREEN"', tmp_path), fed, sample_alert())
    at_most_amber = rule('max_tlp = "AMBER"', tmp_path)
    assert hit(at_most_amber, fed, alert(handling={"tlp": "GREEN"}))
    assert hit(at_most_amber, fed, sample_alert())
    assert not hit(at_most_amber, fed, alert(handling={"tlp": "RED"}))
    assert not hit(at_most_amber, fed, freeze())  # AMBER+STRICT


def test_schema_countries_and_nationality(fed: Federation, tmp_path: Path) -> None:
    assert hit(rule('schema = ["cryptowallet", "Vessel"]', tmp_path), fed, sample_alert())
    assert not hit(rule('schema = "Company"', tmp_path), fed, sample_alert())
    assert hit(rule('countries = "LY"', tmp_path), fed, sample_alert())  # a nationality
    assert hit(rule('countries = "FR"', tmp_path), fed, freeze(nationality="DE"))  # the IBAN's country
    assert hit(rule('nationality = "FR"', tmp_path), fed, freeze())
    assert not hit(rule('nationality = "FR"', tmp_path), fed, freeze(nationality="DE"))


def test_conditions_and_together_lists_are_any_of(fed: Federation, tmp_path: Path) -> None:
    fs = rule('sender = "IT"\ncategory = ["document_fraud", "migrant_smuggling"]\nmin_severity = "high"', tmp_path)
    assert hit(fs, fed, sample_alert())
    assert not hit(fs, fed, sample_alert(), sender="DE")
    assert not hit(fs, fed, alert(severity="low"))
    assert not hit(fs, fed, alert(category="other"))


def test_withdrawals_and_receipts_match_only_routing_conditions(fed: Federation, tmp_path: Path) -> None:
    routing = rule('packet_type = ["withdraw", "receipt"]\ntopic = "notices.freeze"\nsender = "IT"', tmp_path)
    assert hit(routing, fed, WITHDRAW, topic="notices.freeze")
    assert hit(routing, fed, RECEIPT, topic="notices.freeze")
    assert not hit(routing, fed, WITHDRAW, topic="notices.freeze", sender="GB")
    for content_condition in ('nationality = "FR"', 'min_severity = "low"', 'max_tlp = "RED"', 'schema = "Person"'):
        fs = rule(content_condition, tmp_path)
        assert not hit(fs, fed, WITHDRAW, topic="notices.freeze"), content_condition
    assert hit(rule("", tmp_path), fed, WITHDRAW)  # a rule without conditions matches all


def test_amendment_judged_by_its_new_content(fed: Federation, tmp_path: Path) -> None:
    fs = rule('min_severity = "critical"', tmp_path)
    assert not hit(fs, fed, amend(sample_alert()))
    assert hit(fs, fed, amend(alert(severity="critical")))


# -- evaluation order and actions ----------------------------------------------


EVAL = """
[sinks.fiu]
type = "jsonl"
path = "fiu.jsonl"
[sinks.log]
type = "jsonl"
path = "log.jsonl"

[[filters]]
name = "keep-it"
sender = "IT"
action = "store"
[[filters]]
name = "drop-low"
severity = "low"
action = "drop"
[[filters]]
name = "smuggling"
category = "migrant_smuggling"
notify = ["fiu", "log"]
[[filters]]
name = "libya"
countries = "LY"
notify = ["log"]
processed = true
"""


def test_first_match_decides_and_sinks_accumulate(fed: Federation, tmp_path: Path) -> None:
    fs = filters(tmp_path, EVAL)
    d = fs.decide(*packet(fed, sample_alert(), sender="DE"))
    assert d == Decision("store", ("fiu", "log"), True, "smuggling", (), ("smuggling", "libya"))
    assert d.stored


def test_drop_ends_evaluation(fed: Federation, tmp_path: Path) -> None:
    d = filters(tmp_path, EVAL).decide(*packet(fed, alert(severity="low"), sender="DE"))
    assert d == Decision("drop", (), False, "drop-low", (), ("drop-low",)) and not d.stored


def test_a_store_rule_before_a_drop_is_an_exception(fed: Federation, tmp_path: Path) -> None:
    d = filters(tmp_path, EVAL).decide(*packet(fed, alert(severity="low"), sender="IT"))
    assert d.action == "store" and d.rule == "keep-it" and d.rules == ("keep-it", "smuggling", "libya")
    assert d.sinks == ("fiu", "log") and d.processed


def test_nothing_matches_stores_without_sinks(fed: Federation, tmp_path: Path) -> None:
    d = filters(tmp_path, EVAL).decide(*packet(fed, freeze(nationality="DE"), sender="GB", topic="notices.freeze"))
    assert d == Decision("store", (), False, None, (), ())


# -- watch lists ---------------------------------------------------------------


WATCH = """
[watchlists.eu-sanctions]
type = "identifiers"
path = "ids.txt"
[watchlists.wanted]
type = "names"
path = "names.txt"
"""
IDS = f"""# EU list, 2026-03
iban:{IBAN}
wallet:TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE

IMO:9876543
"""
NAMES = "# wanted persons\nMuhammad al Rashid\nИван Петров\n"


def named(packet_name: str, listed: str) -> str:
    """The explanation of a name hit, with the score clients/node/names.py gives the pair."""
    return f"watch list 'wanted': name '{packet_name}' ~ '{listed}' {score(packet_name, listed).score:.2f}"


def test_identifier_list_matches_normalised_forms(fed: Federation, tmp_path: Path) -> None:
    fs = rule('watchlist = "eu-sanctions"', tmp_path, {"ids.txt": IDS, "names.txt": NAMES}, WATCH)
    d = fs.decide(*packet(fed, freeze(iban=IBAN_SPACED), topic="notices.freeze"))  # spaces in the packet
    assert d.sinks == ("s",) and d.matches == (f"watch list 'eu-sanctions': IBAN {IBAN}",)
    spaced = rule('watchlist = "eu-sanctions"', tmp_path, {"ids.txt": f"IBAN: {IBAN_SPACED}\n"}, WATCH)
    assert hit(spaced, fed, freeze(iban=IBAN), topic="notices.freeze")  # spaces in the list
    assert hit(fs, fed, sample_alert())  # the wallet
    assert not hit(fs, fed, freeze(iban="DE89 3704 0044 0532 0130 00"), topic="notices.freeze")


def test_name_list_matches_across_scripts_with_threshold(fed: Federation, tmp_path: Path) -> None:
    files = {"ids.txt": IDS, "names.txt": NAMES}
    fs = rule('watchlist = "wanted"', tmp_path, files, WATCH)
    d = fs.decide(*packet(fed, sample_alert()))
    assert d.rule == "r"
    assert d.matches == (named("Mohammed Al-Rashid", "Muhammad al Rashid"),  # best first
                         named("محمد الراشد", "Muhammad al Rashid"))
    # The freeze's asset holder "Ivan Petrov" matches the Cyrillic entry.
    d = fs.decide(*packet(fed, freeze(), topic="notices.freeze"))
    assert d.matches == (named("Ivan Petrov", "Иван Петров"),)
    strict = rule('watchlist = "wanted"\nthreshold = 0.99', tmp_path, files, WATCH)
    assert not hit(strict, fed, sample_alert())
    stranger = alert(entities=[{"id": "e1", "schema": "Person", "names": ["Mahmoud Rashid"]}], links=[])
    assert not hit(fs, fed, stranger)  # same consonants, other vowels: not a match


def test_watchlists_are_any_of_and_rules_share_scores(fed: Federation, tmp_path: Path) -> None:
    files = {"ids.txt": "iban:DE89370400440532013000\n", "names.txt": NAMES}
    text = WATCH + """
[[filters]]
name = "strong"
watchlist = ["eu-sanctions", "wanted"]
threshold = 0.95
processed = true
[[filters]]
name = "weak"
watchlist = "wanted"
"""
    d = filters(tmp_path, text, files).decide(*packet(fed, sample_alert()))
    assert d.rules == ("strong", "weak") and d.processed
    assert d.matches == (named("Mohammed Al-Rashid", "Muhammad al Rashid"),
                         named("محمد الراشد", "Muhammad al Rashid"))


# -- configuration errors --------------------------------------------------------


def bad(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        filters(tmp_path, text + '\n[sinks.fiu]\ntype = "jsonl"\npath = "f.jsonl"\n', files)
    return str(info.value)


R = '[[filters]]\nname = "freeze-gb"\n'


@pytest.mark.parametrize("body, message", [
    ('sevrity = "high"', 'filters[0] ("freeze-gb"): unknown condition "sevrity" (did you mean "severity"?)'),
    ('entity_type = "Person"', 'filters[0] ("freeze-gb"): unknown condition "entity_type" (did you mean "schema"?)'),
    ('severity = 3', 'filters[0] ("freeze-gb"): severity: must be a string or a non-empty list of strings, not 3'),
    ('severity = []', "severity: must be a string or a non-empty list"),
    ('severity = "hgh"', 'severity: "hgh" is not a severity (did you mean "high"?)'),
    ('severity = "urgent"', 'severity: "urgent" is not a severity (one of: low, medium, high, critical)'),
    ('min_severity = ["high"]', "min_severity: must be a non-empty string"),
    ('packet_type = "freez"', 'packet_type: "freez" is not a packet type (did you mean "freeze"?'),
    ('category = "smuggling"', 'category: "smuggling" is not a category'),
    ('tlp = "WHITE"', 'tlp: "WHITE" is not a TLP level'),
    ('max_tlp = "amber strict"', 'max_tlp: "amber strict" is not a TLP level (did you mean "AMBER+STRICT"?'),
    ('schema = "OnlineAccount"', 'schema: "OnlineAccount" is not an entity schema'),
    ('nationality = "FRA"', 'filters[0] ("freeze-gb"): nationality: "FRA" is not an ISO 3166-1 alpha-2 country code '
                            '(did you mean "FR"?)'),
    ('sender = "ZZ"', 'sender: "ZZ" is not an ISO 3166-1 alpha-2 country code'),
    ('topic = "alerts.>.x"', "topic: 'alerts.>.x': '>' may only be the last word"),
    ('topic = "Alerts"', "topic: 'Alerts': word 'Alerts' is not a-z 0-9"),
    ('watchlist = "eu"', 'watchlist: "eu" is not defined (add a [watchlists.eu] table)'),
    ('notify = "fui"', 'filters[0] ("freeze-gb"): notify: "fui" is not defined (did you mean "fiu"?)'),
    ('notify = "other"', 'notify: "other" is not defined (add a [sinks.other] table)'),
    ('action = "notify"', 'action: "notify" is not an action: write notify = ["SINK"] (notify implies store)'),
    ('action = "keep"', 'action: "keep" is not an action (one of: store, drop)'),
    ('action = "drop"\nnotify = "fiu"', "a drop rule cannot notify or mark processed"),
    ('action = "drop"\nprocessed = true', "a drop rule cannot notify or mark processed"),
    ('processed = "yes"', "processed: must be true or false, not 'yes'"),
    ('threshold = 0.9', "threshold: applies to name watch lists, and this rule names none"),
    ('description = 7', "description: must be a non-empty string"),
])
def test_bad_rule_names_the_rule_and_field(tmp_path: Path, body: str, message: str) -> None:
    assert message in bad(tmp_path, R + body + "\n")


def test_bad_threshold_and_rule_shapes(tmp_path: Path) -> None:
    lists = '[watchlists.w]\ntype = "names"\npath = "n.txt"\n'
    files = {"n.txt": "Ivan Petrov\n"}
    for value in ("1.5", "0", "true", '"high"'):
        assert 'filters[0] ("freeze-gb"): threshold: must be a number above 0 and at most 1' in \
            bad(tmp_path, lists + R + f'watchlist = "w"\nthreshold = {value}\n', files)
    assert "filters[0]: name: every rule needs a name" in bad(tmp_path, '[[filters]]\nseverity = "high"\n')
    assert 'filters[0] ("a b"): name: every rule needs a name' in bad(tmp_path, '[[filters]]\nname = "a b"\n')
    assert 'filters[1] ("x"): name: another rule already has this name' in \
        bad(tmp_path, '[[filters]]\nname = "x"\n[[filters]]\nname = "x"\n')
    assert "filters: write each rule as a [[filters]] table" in bad(tmp_path, '[filters]\nname = "x"\n')
    assert "filters[0]: expected a table" in bad(tmp_path, 'filters = ["x"]\n')


@pytest.mark.parametrize("table, files, message", [
    ('type = "identifiers"\npath = "missing.txt"', {}, "watchlists.eu: path: "),
    ('type = "identifier"\npath = "a.txt"', {}, 'watchlists.eu: type: must be "identifiers"'),
    ('type = "names"', {}, "watchlists.eu: path: missing"),
    ('type = "names"\npath = "a.txt"\nfile = "x"', {"a.txt": "A\n"}, 'watchlists.eu: unknown field "file"'),
    ('type = "identifiers"\npath = "a.txt"\nthreshold = 0.9', {"a.txt": ""}, "threshold: only name watch lists"),
    ('type = "names"\npath = "a.txt"\nthreshold = 2', {"a.txt": "A\n"}, "watchlists.eu: threshold: must be a number"),
    ('type = "identifiers"\npath = "a.txt"', {"a.txt": "# ok\niban:DE89370400440532013000\nFR76300060000112\n"},
     "a.txt:3: expected kind:value"),
    ('type = "identifiers"\npath = "a.txt"', {"a.txt": "iban:FR7630006000011234567890180\n"}, "a.txt:1: "),
    ('type = "identifiers"\npath = "a.txt"', {"a.txt": "\n\nsocial:abc\n"},
     'a.txt:3: unknown identifier type "social"'),
    ('type = "names"\npath = "a.txt"', {"a.txt": "Ivan\n---\n"}, "a.txt:2: '---' has no letters or digits"),
])
def test_bad_watchlist_names_file_and_line(tmp_path: Path, table: str, files: dict[str, str], message: str) -> None:
    assert message in bad(tmp_path, "[watchlists.eu]\n" + table + "\n", files)


def test_watchlist_must_be_utf8_and_names_well_formed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes("Иван\n".encode() + b"\xff\xfe\n")
    assert "a.txt:2: not UTF-8 text" in bad(tmp_path, '[watchlists.eu]\ntype = "names"\npath = "a.txt"\n')
    assert 'watchlists.e u: a name is 1-64 letters' in bad(tmp_path, '[watchlists."e u"]\ntype = "names"\n')
    assert "watchlists: expected [watchlists.NAME] tables" in bad(tmp_path, 'watchlists = 3\n')


# -- docs/node.md ----------------------------------------------------------------


def doc_blocks(kind: str) -> list[tuple[str, str]]:
    """``(info string rest, body)`` of every fenced block of ``kind`` in docs/node.md."""
    text = (ROOT / "docs" / "node.md").read_text(encoding="utf-8")
    return [(m.group(1).strip(), m.group(2)) for m in
            re.finditer(rf"^```{kind}([^\n]*)\n(.*?)^```$", text, flags=re.M | re.S)]


def test_every_toml_example_in_the_docs_parses(fed: Federation, tmp_path: Path) -> None:
    # Watch list files shown in the docs as ```text FILE blocks are the ones the examples use.
    for name, body in doc_blocks("text"):
        if name:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(body, encoding="utf-8")
    blocks = [body for _, body in doc_blocks("toml")]
    assert len(blocks) >= 4
    for body in blocks:
        doc = tomllib.loads(body)
        for table in doc.get("sinks", {}).values():
            if table.get("type") == "jsonl":  # as the operator would, create the sink's directory
                (tmp_path / table["path"]).parent.mkdir(parents=True, exist_ok=True)
        sinks = sinks_from_config(doc, tmp_path)
        fs = FilterSet.from_config(doc, tmp_path)
        assert set(sinks) == set(doc.get("sinks", {}))
        fs.decide(*packet(fed, sample_alert()))  # and they run


def test_docs_example_decisions(fed: Federation, tmp_path: Path) -> None:
    """The worked example in docs/node.md decides as the text says it does."""
    test_every_toml_example_in_the_docs_parses(fed, tmp_path)
    body = next(b for _, b in doc_blocks("toml") if 'name = "watch-strong"' in b)
    fs = FilterSet.from_config(tomllib.loads(body), tmp_path)
    d = fs.decide(*packet(fed, freeze(), topic="notices.freeze"))
    assert d.rules == ("watch-strong", "watch-any") and d.processed and d.sinks == ("cases",)
    weak = copy.deepcopy(freeze(iban="GB29NWBK60161331926819"))
    weak["assets"][0].pop("holder")
    weak["subject"]["names"] = ["كريم حداد"]  # 0.90 against "Karim Haddad"
    d = fs.decide(*packet(fed, weak, topic="notices.freeze"))
    assert d.rules == ("watch-any",) and not d.processed
