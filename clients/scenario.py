"""The demo scenario's content: an Italian alert, a French freeze, and their follow-ups.

Fictional people and organisations; identifiers are the standard published test
values (valid check digits, assigned to no one).
"""

from __future__ import annotations

from typing import Any

ORGANISER = "Mohammed Al-Rashid"
WALLET = "TA4Y62o6YC2Zsck9rZVGTvqW1AQ7X9zTnj"
IBAN_FR = "FR1420041010050500013M02606"
IBAN_DE = "DE89370400440532013000"


def italian_alert() -> dict[str, Any]:
    return {
        "type": "alert",
        "title": "Organiser of the Zuwara - Lampedusa crossings",
        "category": "migrant_smuggling",
        "severity": "high",
        "summary": "Organises night departures from Zuwara; collects fees in USDT on TRON.",
        "entities": [
            {"id": "e1", "schema": "Person", "names": [ORGANISER], "aliases": ["محمد الراشد", "Abu Khalil"],
             "nationality": ["LY"], "birth_date": "1981",
             "identifiers": [{"type": "passport", "value": "LY4471203", "country": "LY"}]},
            {"id": "e2", "schema": "CryptoWallet", "names": ["Fee collection wallet"],
             "identifiers": [{"type": "crypto_wallet", "value": WALLET, "chain": "TRX"}]},
        ],
        "links": [{"from": "e1", "to": "e2", "type": "holder"}],
        "handling": {"tlp": "AMBER", "codes": ["H2"], "source": "B", "information": "2"},
        "case_ref": "IT-SCO-2026-0117",
    }


def italian_amendment(ref: str) -> dict[str, Any]:
    alert = italian_alert()
    alert["severity"] = "critical"
    alert["entities"][0]["aliases"].append("Mohamed Alrachid")
    alert["summary"] += " Now also operating from Sabratha (amended)."
    return {"type": "amend", "ref": ref, "reason": "New alias and a second departure point", "content": alert}


def french_freeze(lifted: tuple[str, ...] = ()) -> dict[str, Any]:
    def asset(aid: str, kind: str, ident: dict[str, str], amount: str, currency: str, inst: str) -> dict[str, Any]:
        return {"id": aid, "kind": kind, "identifier": ident, "amount": amount, "currency": currency,
                "institution": inst, "status": "lifted" if aid in lifted else "frozen"}

    return {
        "type": "freeze",
        "authority": {"name": "Tribunal judiciaire de Paris, JIRS", "country": "FR"},
        "legal_basis": "Code de procédure pénale, art. 706-153 (saisie pénale de créances)",
        "reference": "JIRS-2026-5521",
        "status": "extended" if lifted else "issued",
        "subject": {"id": "s1", "schema": "Person", "names": [ORGANISER], "nationality": ["LY"]},
        "assets": [
            asset("a1", "bank_account", {"type": "iban", "value": IBAN_FR}, "48200.00", "EUR", "Banque Exemple Paris"),
            asset("a2", "bank_account", {"type": "iban", "value": IBAN_DE}, "12500.50", "EUR", "Beispielbank Frankfurt"),
            asset("a3", "crypto_wallet", {"type": "crypto_wallet", "value": WALLET, "chain": "TRX"}, "31000.00", "USD", "TRON"),
        ],
        "effective": "2026-11-29",
        "expires": "2027-05-29",
        "requested_action": "Freeze any account or wallet you hold under these identifiers and confirm by receipt.",
        "handling": {"tlp": "AMBER+STRICT", "codes": ["H1", "H2"], "source": "A", "information": "1"},
    }


def french_lift(ref: str) -> dict[str, Any]:
    return {"type": "amend", "ref": ref, "reason": "Account a2 released by court order of 2026-11-29",
            "content": french_freeze(lifted=("a2",))}
