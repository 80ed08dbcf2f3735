"""The node store on real SQLite files, fed with packets sealed and opened by the real envelope."""

from __future__ import annotations

import copy
import datetime
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.node import names
from clients.node.store import NodeStore
from hub.protocol.content import default_topic, validate_content
from hub.protocol.envelope import Opened, open_packet, seal
from hub.protocol.errors import StoreError, ValidationError
from hub.protocol.federation import Federation
from hub.protocol.suites import CLASSIC
from hub.protocol.trust import Trust

from .conftest import NOW, sample_alert

IBAN = "FR7630006000011234567890189"
WALLET = "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE"


class Node:
    """A node's store plus the federation that seals packets for it (FR receives)."""

    def __init__(self, fed: Federation, trust: Trust, store: NodeStore) -> None:
        self.fed, self.trust, self.store = fed, trust, store
        self.clock = NOW
        self.log_index = 0

    def seal(self, content: dict[str, Any], sender: str = "IT") -> tuple[bytes, Opened]:
        self.clock += 60  # every packet a minute after the previous: versions order by signed time
        m = self.fed.members[sender]
        raw = seal(content, signer=m.officer, signer_cert=m.officer_cert,
                   recipients=[self.fed.members["FR"].node_cert, self.fed.members["DE"].node_cert],
                   topic=default_topic(content, "alerts.entity.migrant_smuggling"), now=self.clock,
                   suite=CLASSIC)
        opened = open_packet(raw, nation="FR", kem=self.fed.members["FR"].node_kem, trust=self.trust,
                             now=self.clock)
        return raw, opened

    def ingest(self, raw: bytes, o: Opened, **kw: Any) -> str:
        self.log_index += 1
        return self.store.ingest(raw=raw, header=o.header, signer=o.signer, content=o.content, salt=o.salt,
                                 content_bytes=o.content_bytes, log_index=self.log_index,
                                 received_at=self.clock + 5, **kw)

    def send(self, content: dict[str, Any], sender: str = "IT", **kw: Any) -> str:
        raw, o = self.seal(content, sender)
        self.ingest(raw, o, **kw)
        return o.header.packet_id


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[NodeStore]:
    s = NodeStore(tmp_path / "node.db")
    yield s
    s.close()


@pytest.fixture()
def node(fed: Federation, trust: Trust, store: NodeStore) -> Node:
    return Node(fed, trust, store)


def person(eid: str, name: str, *, countries: list[str] | None = None, schema: str = "Person",
           **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"id": eid, "schema": schema, "names": [name], **extra}
    if countries:
        e["countries"] = countries
    return e


def alert(*entities: dict[str, Any], title: str = "Network on the central Mediterranean route") -> dict[str, Any]:
    a = sample_alert()
    a["title"], a["entities"] = title, list(entities)
    del a["links"]
    return a


def freeze(*, status: str = "issued", lifted: tuple[str, ...] = (), expires: str = "2026-09-02") -> dict[str, Any]:
    def asset(aid: str, ident: dict[str, str], kind: str, amount: str) -> dict[str, Any]:
        return {"id": aid, "kind": kind, "identifier": ident, "amount": amount, "currency": "EUR",
                "status": "lifted" if aid in lifted or status == "lifted" else "frozen"}

    return {
        "type": "freeze", "authority": {"name": "Tribunal judiciaire de Paris", "country": "FR"},
        "legal_basis": "Criminal seizure order.", "reference": "JIRS-2026-0117", "status": status,
        "subject": {"id": "s1", "schema": "Person", "names": ["Karim HADDAD", "كريم حداد"], "nationality": ["LY"]},
        "assets": [asset("a1", {"type": "iban", "value": IBAN}, "bank_account", "48250.5"),
                   asset("a2", {"type": "crypto_wallet", "value": WALLET}, "crypto_wallet", "15180")],
        "effective": "2026-03-02", "expires": expires, "requested_action": "Freeze any account of the subject.",
        "handling": {"tlp": "AMBER", "codes": ["H2"], "source": "A", "information": "1"},
    }


def amend(ref: str, content: dict[str, Any], reason: str = "Corrected names.") -> dict[str, Any]:
    return {"type": "amend", "ref": ref, "reason": reason, "content": content}


def withdraw(ref: str, reason: str = "Wrong identification.") -> dict[str, Any]:
    return {"type": "withdraw", "ref": ref, "reason": reason}


def day(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).date().isoformat()


def table_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    # Every table, FTS5 shadow tables included; the virtual tables themselves cannot all be scanned.
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                         "sql NOT LIKE 'CREATE VIRTUAL%'")]
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    conn.close()
    return counts


# -- ingest ---------------------------------------------------------------------------


def test_alert_is_stored_with_entities_names_identifiers_and_links(node: Node) -> None:
    raw, o = node.seal(sample_alert())
    assert node.ingest(raw, o, rule="all", proof={"leaf": 1}) == "stored"
    pid = o.header.packet_id
    assert node.store.has_packet(pid)
    shown = node.store.show(pid)
    assert shown is not None
    assert shown["content"] == sample_alert() and shown["status"] == "active" and shown["sender"] == "IT"
    assert shown["log_index"] == 1 and shown["signer"] == o.signer.name
    assert [v["kind"] for v in shown["versions"]] == ["original"]
    stats = node.store.stats()
    assert stats["packets"] == {"alert": 1} and stats["entities"] == 2 and stats["names"] == 3
    assert stats["identifiers"] == 2
    [hit] = node.store.lookup("passport", "x-1234567")
    assert hit["entity"] == {"id": "e1", "schema": "Person", "caption": "Mohammed Al-Rashid"}
    assert hit["packet_id"] == pid and hit["extra"] == {"country": "LY"}
    assert list(node.store.raw_packets()) == [(1, raw)]


def test_freeze_is_stored_with_notice_and_assets(node: Node) -> None:
    pid = node.send(freeze())
    [f] = node.store.freezes(today="2026-04-01")
    assert f["packet_id"] == pid and f["reference"] == "JIRS-2026-0117" and f["status"] == "issued"
    assert f["authority"] == "Tribunal judiciaire de Paris" and f["expires"] == "2026-09-02"
    assert f["subject"] == "Karim HADDAD" and f["active"]
    assert [(a["id"], a["amount"], a["currency"], a["status"]) for a in f["assets"]] == [
        ("a1", "48250.50", "EUR", "frozen"), ("a2", "15180.00", "EUR", "frozen")]
    [hit] = node.store.lookup("iban", "fr76 3000 6000 0112 3456 7890 189")
    assert hit["asset"] == {"id": "a1", "kind": "bank_account", "status": "frozen", "amount": "48250.50",
                            "currency": "EUR"}
    assert node.store.search("Karim Haddad")[0].packet_id == pid


def test_duplicate_changes_nothing(node: Node, tmp_path: Path) -> None:
    raw, o = node.seal(sample_alert())
    assert node.ingest(raw, o, sinks=("misp",)) == "stored"
    before = table_counts(tmp_path / "node.db")
    assert node.ingest(raw, o, sinks=("misp",)) == "duplicate"
    assert table_counts(tmp_path / "node.db") == before
    assert node.store.ingest_many([]) == []


def test_dropped_packet_keeps_only_the_raw_bytes(node: Node) -> None:
    raw, o = node.seal(sample_alert())
    assert node.ingest(raw, o, action="drop", rule="not-ours") == "stored"
    assert node.store.search("Mohammed Al-Rashid") == [] and node.store.lookup("passport", "X1234567") == []
    stats = node.store.stats()
    assert stats["dropped"] == 1 and stats["packets"] == {} and stats["entities"] == 0
    shown = node.store.show(o.header.packet_id)
    assert shown is not None and shown["status"] == "dropped" and shown["content"] is None
    assert list(node.store.raw_packets()) == [(1, raw)]
    assert node.ingest(raw, o) == "duplicate"


def test_unknown_action_is_refused(node: Node) -> None:
    raw, o = node.seal(sample_alert())
    with pytest.raises(ValidationError, match="action"):
        node.ingest(raw, o, action="archive")
    assert not node.store.has_packet(o.header.packet_id)


# -- amendments and withdrawals ------------------------------------------------------------


def test_amendment_replaces_the_view_and_keeps_history(node: Node) -> None:
    pid = node.send(alert(person("e1", "Mohammed Al-Rashid")))
    new = alert(person("e1", "Karim Haddad", countries=["LY"]))
    amend_id = node.send(amend(pid, new, "The name was wrong."))
    assert node.store.search("Mohammed Al-Rashid") == []
    [hit] = node.store.search("Karim Haddad")
    assert hit.packet_id == pid and hit.status == "amended" and hit.countries == ("LY",)
    shown = node.store.show(pid)
    assert shown is not None and shown["status"] == "amended" and shown["version"] == 2
    assert shown["content"] == new
    assert [(v["version"], v["kind"], v["packet_id"], v["reason"]) for v in shown["versions"]] == [
        (1, "original", pid, None), (2, "amend", amend_id, "The name was wrong.")]
    assert shown["versions"][0]["content"]["entities"][0]["names"] == ["Mohammed Al-Rashid"]
    assert node.store.show(amend_id) == shown  # any version's id shows the record
    assert node.store.stats()["entities"] == 1 and node.store.stats()["names"] == 1


@pytest.mark.parametrize("change", [lambda ref: amend(ref, alert(person("e1", "Someone Else"))), withdraw])
def test_only_the_originator_may_amend_or_withdraw(node: Node, change: Any) -> None:
    pid = node.send(alert(person("e1", "Mohammed Al-Rashid")))
    raw, o = node.seal(change(pid), sender="DE")
    with pytest.raises(ValidationError, match="published by IT; only IT may") as exc:
        node.ingest(raw, o)
    assert exc.value.path == "ref"
    assert not node.store.has_packet(o.header.packet_id)
    shown = node.store.show(pid)
    assert shown is not None and shown["status"] == "active" and len(shown["versions"]) == 1
    assert node.store.search("Mohammed Al-Rashid")[0].status == "active"


def test_amendment_must_keep_the_type(node: Node) -> None:
    pid = node.send(alert(person("e1", "Mohammed Al-Rashid")))
    raw, o = node.seal(amend(pid, freeze()))
    with pytest.raises(ValidationError, match="an amendment of an alert must be an alert, not a freeze"):
        node.ingest(raw, o)


def test_receipts_and_withdrawals_of_receipts_are_refused(node: Node) -> None:
    rid = node.send({"type": "receipt", "ref": "0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f", "status": "delivered",
                     "at": "2026-03-02T09:15:00Z"})
    raw, o = node.seal(withdraw(rid))
    with pytest.raises(ValidationError, match="is a receipt"):
        node.ingest(raw, o)


def test_withdrawal_hides_the_record_but_show_marks_it(node: Node) -> None:
    pid = node.send(freeze())
    alert_id = node.send(alert(person("e1", "Mohammed Al-Rashid", identifiers=[
        {"type": "passport", "value": "LY1234567", "country": "LY"}])))
    wid = node.send(withdraw(pid, "Order annulled."))
    wid2 = node.send(withdraw(alert_id))
    assert node.store.freezes(today="2026-04-01") == []
    assert node.store.freezes(active_only=False, today="2026-04-01") == []
    assert node.store.lookup("iban", IBAN) == [] and node.store.lookup("passport", "LY1234567") == []
    assert node.store.search("Karim Haddad") == [] and node.store.search("Mohammed Al-Rashid") == []
    [hit] = node.store.search("Karim Haddad", include_withdrawn=True)
    assert hit.status == "withdrawn"
    assert node.store.lookup("iban", IBAN, include_withdrawn=True)[0]["status"] == "withdrawn"
    shown = node.store.show(pid)
    assert shown is not None and shown["status"] == "withdrawn" and shown["content"] == validate_content(freeze())
    assert shown["withdrawn"] == {"packet_id": wid, "at": node.clock - 55, "reason": "Order annulled."}
    assert [v["kind"] for v in shown["versions"]] == ["original", "withdraw"]
    assert node.store.show(wid2)["status"] == "withdrawn"  # type: ignore[index]
    assert node.store.stats()["records"] == {"withdrawn": 2}


def test_amendment_before_its_original_keeps_history_consistent(node: Node) -> None:
    original = alert(person("e1", "Mohammed Al-Rashid"))
    raw1, o1 = node.seal(original)
    pid = o1.header.packet_id
    raw2, o2 = node.seal(amend(pid, alert(person("e1", "Karim Haddad"))))
    assert node.ingest(raw2, o2) == "stored"  # addressed differently: arrives first
    assert node.store.search("Karim Haddad")[0].packet_id == pid
    shown = node.store.show(pid)
    assert shown is not None and not shown["original_seen"] and shown["status"] == "amended"
    assert node.ingest(raw1, o1) == "stored"
    shown = node.store.show(pid)
    assert shown is not None and shown["original_seen"] and shown["status"] == "amended"
    assert [(v["version"], v["kind"]) for v in shown["versions"]] == [(1, "original"), (2, "amend")]
    assert shown["content"]["entities"][0]["names"] == ["Karim Haddad"]  # the newer version wins
    assert node.store.search("Mohammed Al-Rashid") == []


def test_late_original_overrules_a_forged_early_amendment(node: Node) -> None:
    raw1, o1 = node.seal(alert(person("e1", "Mohammed Al-Rashid")), sender="IT")
    pid = o1.header.packet_id
    node.send(amend(pid, alert(person("e1", "Karim Haddad"))), sender="DE")
    node.ingest(raw1, o1)
    shown = node.store.show(pid)
    assert shown is not None and shown["sender"] == "IT" and shown["status"] == "active"
    assert shown["versions"][1]["rejected"] == "not from the originator IT"
    assert node.store.search("Karim Haddad") == [] and node.store.search("Mohammed Al-Rashid")


def test_withdrawal_before_its_original(node: Node) -> None:
    raw1, o1 = node.seal(freeze())
    pid = o1.header.packet_id
    node.send(withdraw(pid))
    shown = node.store.show(pid)
    assert shown is not None and shown["status"] == "withdrawn" and shown["content"] is None
    node.ingest(raw1, o1)
    shown = node.store.show(pid)
    assert shown is not None and shown["status"] == "withdrawn" and shown["content"] == validate_content(freeze())
    assert node.store.freezes(active_only=False, today="2026-04-01") == []


def test_freeze_lifting_by_amendment(node: Node) -> None:
    pid = node.send(freeze())
    node.send(amend(pid, freeze(status="extended", lifted=("a1",), expires="2027-03-02"), "a1 released"))
    [f] = node.store.freezes(today="2026-12-01")
    assert f["status"] == "extended" and f["expires"] == "2027-03-02" and f["record_status"] == "amended"
    assert {a["id"]: a["status"] for a in f["assets"]} == {"a1": "lifted", "a2": "frozen"}
    assert node.store.lookup("iban", IBAN)[0]["asset"]["status"] == "lifted"
    node.send(amend(pid, freeze(status="lifted", expires="2027-03-02"), "Order lifted."))
    assert node.store.freezes(today="2026-12-01") == []
    [f] = node.store.freezes(active_only=False, today="2026-12-01")
    assert f["status"] == "lifted" and not f["active"] and {a["status"] for a in f["assets"]} == {"lifted"}
    assert len(node.store.show(pid)["versions"]) == 3  # type: ignore[index]


def test_freeze_expiry_ends_active(node: Node) -> None:
    node.send(freeze(expires="2026-09-02"))
    assert len(node.store.freezes(today="2026-09-02")) == 1
    assert node.store.freezes(today="2026-09-03") == []


# -- receipts, sent packets, outbox -------------------------------------------------------------


def test_receipts_for_a_packet_we_sent(node: Node, fed: Federation) -> None:
    m = fed.members["FR"]
    raw = seal(sample_alert(), signer=m.officer, signer_cert=m.officer_cert,
               recipients=[fed.members["IT"].node_cert], topic="alerts.entity.migrant_smuggling", now=NOW,
               suite=CLASSIC)
    o = open_packet(raw, nation="IT", kem=fed.members["IT"].node_kem, trust=node.trust, now=NOW)
    mine = o.header.packet_id
    node.store.record_sent(raw=raw, header=o.header, content=o.content, log_index=None, promise=None, sent_at=NOW)
    node.store.record_sent(raw=raw, header=o.header, content=o.content, log_index=7, promise="p", sent_at=NOW)
    for sender, status in (("IT", "delivered"), ("DE", "delivered"), ("IT", "processed")):
        node.send({"type": "receipt", "ref": mine, "status": status, "at": "2026-03-02T09:15:00Z"}, sender=sender)
    got = [(r["nation"], r["status"]) for r in node.store.receipts_for(mine)]
    assert got == [("IT", "delivered"), ("DE", "delivered"), ("IT", "processed")]
    shown = node.store.show(mine)
    assert shown is not None and shown["direction"] == "sent" and shown["log_index"] == 7
    assert shown["promise"] == "p" and shown["recipients"] == ["IT"] and len(shown["receipts"]) == 3
    assert node.store.stats()["receipts"] == 3 and node.store.stats()["sent"] == 1


def test_outbox_rows_are_written_with_the_packet(node: Node) -> None:
    raw, o = node.seal(sample_alert())
    node.ingest(raw, o, sinks=("misp", "webhook"), rule="smuggling")
    [item] = node.store.outbox_pending("misp", now=node.clock + 10)
    assert item.packet_id == o.header.packet_id and item.attempts == 0
    assert item.payload == {"packet_id": o.header.packet_id, "type": "alert", "sender": "IT",
                            "topic": o.header.topic, "log_index": 1, "received_at": node.clock + 5,
                            "rule": "smuggling", "content": sample_alert()}
    node.store.outbox_failed(item.id, "timeout", retry_at=node.clock + 100)
    assert node.store.outbox_pending("misp", now=node.clock + 10) == []
    [again] = node.store.outbox_pending("misp", now=node.clock + 100)
    assert again.attempts == 1
    node.store.outbox_done([again.id])
    assert node.store.outbox_pending("misp", now=node.clock + 1000) == []
    assert len(node.store.outbox_pending("webhook", now=node.clock + 1000)) == 1


def test_mark_processed(node: Node) -> None:
    pid = node.send(sample_alert())
    assert node.store.mark_processed(pid) is True
    assert node.store.mark_processed(pid) is False
    assert node.store.mark_processed("0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f") is False


def test_quarantine_counts_and_is_idempotent(node: Node) -> None:
    node.store.quarantine(raw=b"garbage", reason="malformed", log_index=3, received_at=NOW)
    node.store.quarantine(raw=b"garbage", reason="malformed", log_index=3, received_at=NOW)
    node.store.quarantine(raw=b"other", reason="invalid_packet", log_index=4, received_at=NOW,
                          packet_id="0190a6e4-5b7c-7d1e-8f00-1a2b3c4d5e6f")
    assert node.store.stats()["quarantined"] == 2
    assert list(node.store.raw_packets()) == []


# -- search ----------------------------------------------------------------------------------------

SPELLINGS = ["Muhammad al Rashid", "Mohamed Alrachid", "محمد الراشد", "Мухаммед Аль-Рашид"]


def test_search_finds_every_spelling_and_script_ranked_and_explained(node: Node) -> None:
    for i, name in enumerate(SPELLINGS):
        node.send(alert(person(f"e{i}", name)))
    node.send(alert(person("d1", "Mahmoud Rashidov"), person("d2", "Ahmed Al-Masri"),
                    person("d3", "Rashid Holdings Ltd", schema="Company")))
    hits = node.store.search("Mohammed Al-Rashid")
    assert {h.name for h in hits} == set(SPELLINGS)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score >= names.MATCH_THRESHOLD and h.why for h in hits)
    by_name = {h.name: h for h in hits}
    assert "transliterated from Arabic" in by_name["محمد الراشد"].why
    assert "transliterated from Cyrillic" in by_name["Мухаммед Аль-Рашид"].why
    assert any("phonetic" in w for w in by_name["Mohamed Alrachid"].why)
    assert by_name["Muhammad al Rashid"].sender == "IT" and by_name["Muhammad al Rashid"].schema == "Person"
    assert hits[0].as_dict()["why"] == list(hits[0].why)


def test_search_filters_by_schema_country_and_date(node: Node) -> None:
    node.send(alert(person("e1", "Mohammed Al-Rashid", countries=["LY"]),
                    person("e2", "Mohammed Al Rashid", schema="Vessel", flag="AE")))
    first_day = node.clock
    node.clock += 3 * 86400
    node.send(alert(person("e1", "Muhammad Rashid", countries=["TR"])))
    [vessel] = node.store.search("Mohammed Al-Rashid", schema="Vessel")
    assert vessel.schema == "Vessel" and vessel.countries == ("AE",)
    assert {h.name for h in node.store.search("Mohammed Al-Rashid", country="ly")} == {"Mohammed Al-Rashid"}
    assert {h.name for h in node.store.search("Mohammed Al-Rashid", since=day(node.clock))} == {"Muhammad Rashid"}
    assert "Muhammad Rashid" not in {h.name for h in node.store.search("Mohammed Al-Rashid", until=day(first_day))}
    with pytest.raises(ValidationError, match="since"):
        node.store.search("Mohammed", since="last week")


def test_prefix_search_uses_full_text(node: Node) -> None:
    node.send(alert(person("e1", "Mohammed Al-Rashid", aliases=["محمد الراشد"]), person("e2", "Ivan Petrov"),
                    person("e3", "Мухаммед Аль-Рашид")))
    hits = node.store.search("Rash*")  # the normalised column finds the Cyrillic spelling too
    assert {h.name for h in hits} == {"Mohammed Al-Rashid", "Мухаммед Аль-Рашид"}
    assert all(h.why[0] == 'full-text match for "Rash"*' for h in hits)
    assert [h.name for h in node.store.search("الراش*")] == ["محمد الراشد"]  # the alias, as written
    with pytest.raises(ValidationError, match="too short"):
        node.store.search("R*")
    with pytest.raises(ValidationError, match="nothing to search"):
        node.store.search("  ")


# -- lookup ---------------------------------------------------------------------------------------


def test_lookup_normalises_every_kind(node: Node) -> None:
    pid = node.send(alert(
        person("e1", "Mohammed Al-Rashid", identifiers=[
            {"type": "passport", "value": "LY 123-4567", "country": "LY"},
            {"type": "phone", "value": "06 39 98 12 34", "country": "FR"}]),
        {"id": "e2", "schema": "BankAccount", "identifiers": [{"type": "iban", "value": "DE89370400440532013000"}]},
        {"id": "e3", "schema": "CryptoWallet", "identifiers": [{"type": "crypto_wallet", "value": WALLET}]},
        {"id": "e4", "schema": "Vessel", "names": ["SEA SPIRIT"], "identifiers": [{"type": "imo", "value": "9876543"}]},
    ))
    cases = [("IBAN", "de89 3704 0044 0532 0130 00", "e2"), ("wallet", f"trx:{WALLET}", "e3"),
             ("imo", "IMO 9876543", "e4"), ("IMO", "9876543", "e4"), ("passport", "ly1234567", "e1"),
             ("phone", "+33 6 39 98 12 34", "e1"), ("phone", "0033639981234", "e1"),
             (None, "DE89370400440532013000", "e2"), (None, WALLET, "e3"), (None, "+33639981234", "e1"),
             (None, "LY1234567", "e1")]
    for kind, value, entity in cases:
        found = node.store.lookup(kind, value)
        assert [(h["packet_id"], h["entity"]["id"]) for h in found] == [(pid, entity)], (kind, value)
    assert node.store.lookup("phone", "06 39 98 12 34", country="FR")[0]["entity"]["id"] == "e1"
    assert node.store.lookup("iban", "GB82WEST12345698765432") == []


def test_lookup_explains_a_bad_value(store: NodeStore) -> None:
    with pytest.raises(ValidationError, match="wrong check digit") as exc:
        store.lookup("iban", "DE88370400440532013000")
    assert exc.value.path == "value"
    with pytest.raises(ValidationError, match="unknown identifier type"):
        store.lookup("shoe size", "42")
    with pytest.raises(ValidationError, match="no country code"):
        store.lookup("phone", "06 39 98 12 34")
    with pytest.raises(ValidationError, match="not a valid identifier of any kind"):
        store.lookup(None, "? ?")


# -- durability and failure ----------------------------------------------------------------------


def test_reopened_store_keeps_everything(node: Node, tmp_path: Path) -> None:
    pid = node.send(freeze())
    node.send(amend(pid, freeze(status="extended")))
    node.store.quarantine(raw=b"x", reason="malformed", log_index=None, received_at=NOW)
    before = (node.store.stats(), node.store.show(pid), node.store.freezes(today="2026-04-01"))
    node.store.close()
    again = NodeStore(tmp_path / "node.db")
    try:
        assert (again.stats(), again.show(pid), again.freezes(today="2026-04-01")) == before
        assert again.search("Karim Haddad")[0].packet_id == pid
        node.store = again
        later = node.send(alert(person("e1", "Ivan Petrov")))  # ids continue after the stored ones
        assert again.search("Ivan Petrov")[0].packet_id == later
    finally:
        again.close()
    conn = sqlite3.connect(tmp_path / "node.db")
    assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,), (2,)]  # each once
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    NodeStore(tmp_path / "node.db").close()


def test_corrupt_file_gives_an_actionable_error(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(StoreError, match="not a database.*restore it from a backup, or move it aside"):
        NodeStore(path)


def test_unusable_paths_give_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory for the node store does not exist"):
        NodeStore(tmp_path / "missing" / "node.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="does not exist"):
        NodeStore(tmp_path / "file" / "node.db")
    with pytest.raises(StoreError, match="is a directory"):
        NodeStore(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    NodeStore(tmp_path / "node.db").close()
    conn = sqlite3.connect(tmp_path / "node.db")
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this intelhub"):
        NodeStore(tmp_path / "node.db")


def test_failure_mid_ingest_leaves_nothing(node: Node, tmp_path: Path) -> None:
    node.send(sample_alert())
    before = table_counts(tmp_path / "node.db")
    raw, o = node.seal(alert(person("e1", "Ivan Petrov"), person("e2", "Olga Petrova")))
    broken = copy.deepcopy(o.content)
    broken["entities"][1]["names"] = [42]  # fails after the packet row and the first entity
    with pytest.raises(TypeError):
        node.store.ingest(raw=raw, header=o.header, signer=o.signer, content=broken, salt=o.salt,
                          content_bytes=o.content_bytes, log_index=9, received_at=NOW, sinks=("misp",))
    assert table_counts(tmp_path / "node.db") == before
    assert not node.store.has_packet(o.header.packet_id) and node.store.search("Ivan Petrov") == []
    assert node.ingest(raw, o) == "stored"  # and the same packet goes in cleanly afterwards
    assert node.store.search("Ivan Petrov")[0].name == "Ivan Petrov"


def test_bulk_ingest_is_all_or_nothing(node: Node, tmp_path: Path) -> None:
    from clients.node.store import Incoming

    sealed = [node.seal(alert(person("e1", n))) for n in ("Ivan Petrov", "Olga Petrova")]
    items = [Incoming(raw, o.header, o.signer, o.content, o.salt, o.content_bytes, i, NOW)
             for i, (raw, o) in enumerate(sealed)]
    bad = node.seal(withdraw(sealed[0][1].header.packet_id), sender="DE")
    with pytest.raises(ValidationError):
        node.store.ingest_many([*items, Incoming(bad[0], bad[1].header, bad[1].signer, bad[1].content,
                                                 bad[1].salt, bad[1].content_bytes, 3, NOW)])
    assert node.store.stats()["entities"] == 0
    assert node.store.ingest_many([*items, items[0]]) == ["stored", "stored", "duplicate"]
    assert node.store.stats()["entities"] == 2


def test_bulk_stream_analyses_names_in_a_helper_process(node: Node, tmp_path: Path) -> None:
    from clients.node.store import Incoming

    names_ = ["Ivan Petrov", "Мухаммед Аль-Рашид", "Karim Haddad", "Olga Petrova"]
    sealed = [node.seal(alert(person("e1", n))) for n in names_]
    items = [Incoming(raw, o.header, o.signer, o.content, o.salt, o.content_bytes, i, NOW)
             for i, (raw, o) in enumerate(sealed)]
    out = list(node.store.ingest_stream([items[:2], items[2:], items[:1]], workers=1))
    assert out == [["stored", "stored"], ["stored", "stored"], ["duplicate"]]
    assert [node.store.search(n)[0].name for n in names_] == names_
    assert node.store.search("Mohammed Al-Rashid")[0].name == "Мухаммед Аль-Рашид"


def test_one_batch_stores_what_the_same_packets_one_at_a_time_store(node: Node, tmp_path: Path) -> None:
    """ingest_many looks the batch's ids up in two queries, not two per packet: amendments and
    withdrawals that come before their originals in the same batch, a packet stored earlier, a
    duplicate within the batch and a late original must end exactly as one packet at a time."""
    from clients.node.store import Incoming

    early = node.seal(alert(person("e0", "Ivan Petrov")))
    a, b, c = (node.seal(alert(person("e1", n))) for n in ("Mohammed Al-Rashid", "Olga Petrova", "Karim Haddad"))
    f = node.seal(freeze())
    stream = [
        node.seal(amend(a[1].header.packet_id, alert(person("e1", "Muhammad al Rashid")))),
        node.seal(withdraw(f[1].header.packet_id)),
        b, a, early, f, b, c,
        node.seal(amend(c[1].header.packet_id, alert(person("e1", "Karim Hadad")))),
    ]
    items = [Incoming(raw, o.header, o.signer, o.content, o.salt, o.content_bytes, i, NOW + i)
             for i, (raw, o) in enumerate(stream)]

    def state(store: NodeStore) -> list[Any]:
        return [store.show(o.header.packet_id) for _, o in (early, a, b, c, f)] + [
            [h.packet_id for h in store.search(n)] for n in ("Muhammad al Rashid", "Olga Petrova", "Karim Hadad")]

    other = NodeStore(tmp_path / "one-by-one.db")
    try:
        for store in (node.store, other):
            store.ingest_many([Incoming(early[0], early[1].header, early[1].signer, early[1].content,
                                        early[1].salt, early[1].content_bytes, 99, NOW)])
        together = node.store.ingest_many(items)
        one_by_one = [other.ingest_many([item])[0] for item in items]
        assert together == one_by_one == ["stored"] * 4 + ["duplicate", "stored", "duplicate", "stored", "stored"]
        assert state(node.store) == state(other)
        shown = node.store.show(a[1].header.packet_id)
        assert shown is not None and shown["original_seen"] and shown["status"] == "amended"
        shown = node.store.show(f[1].header.packet_id)
        assert shown is not None and shown["status"] == "withdrawn"
    finally:
        other.close()
