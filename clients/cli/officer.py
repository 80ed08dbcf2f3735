"""The liaison officer's commands: alert, freeze, amend, withdraw, status.

Every command validates everything before it asks for a passphrase or sends a
byte: an input error names the field and how to fix it, and nothing is sent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .common import emit_json, json_option, parse_nations, table
from .settings import Settings, resolve, settings_options

ENTITY_TYPES = ("Person", "Organization", "Company", "LegalEntity", "Vessel", "Vehicle", "Airplane",
                "BankAccount", "CryptoWallet", "Phone", "Email", "UserAccount")


def _read_content(path: Path) -> dict[str, Any]:
    from hub.protocol.content import content_from_json

    try:
        text = path.read_text("utf-8") if str(path) != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--file") from None
    return content_from_json(text)


def _handling(s: Settings, tlp: str | None, handling: tuple[str, ...], source: str | None,
              information: str | None) -> dict[str, Any]:
    d = s.defaults
    codes = list(handling) if handling else list(d.get("handling", []))
    return {"tlp": (tlp or d.get("tlp") or "AMBER").upper(), "codes": [c.upper() for c in codes],
            "source": (source or d.get("source") or "B").upper(), "information": str(information or d.get("information") or "2")}


class Publisher:
    """Seal with the officer's key, then show (dry run) or send over HTTP and record it in the node store."""

    def __init__(self, s: Settings) -> None:
        from hub.keyfiles import load_certificate, load_trust_dir

        self.s = s
        self.trust = load_trust_dir(s.need("trust"))
        self.cert = self.trust.add_certificate(load_certificate(s.need("cert")).raw)
        self.members = sorted(self.trust.roster.nations)

    def recipients(self, to: str | None) -> list[str]:
        value = to or self.s.defaults.get("to")
        if not value:
            raise click.UsageError("say who receives it: --to FR,DE or --to all (or set defaults.to in the config)")
        return parse_nations(value, self.members, exclude=self.cert.nation)

    def publish(self, content: dict[str, Any], *, to: list[str], topic: str, dry_run: bool, as_json: bool) -> None:
        from hub.keyfiles import load_private_keys
        from hub.protocol import envelope
        from hub.protocol.errors import KeyFileError
        from hub.protocol.suites import SUITES

        suite = SUITES.get(str(self.s.defaults.get("suite", "IH1-HYBRID")))
        if suite is None:
            raise click.BadParameter(f"unknown suite in defaults.suite ({', '.join(SUITES)})", param_hint="--config")
        now = int(time.time())
        recipients = [self.trust.recipient(n, now) for n in to]
        signing = load_private_keys(self.s.need("key")).signing
        if signing is None or signing.public().key_id != self.cert.signing.key_id:
            raise KeyFileError(f"{self.s.need('key')}: does not hold the signing key of {self.s.need('cert')}")
        raw = envelope.seal(content, signer=signing, signer_cert=self.cert, recipients=recipients, topic=topic,
                            now=now, suite=suite)
        header = envelope.parse_packet(raw).header
        if dry_run:
            view = {"dry_run": True, "size": len(raw), "header (what the hub sees)": header.to_json(),
                    "content (what recipients read)": content}
            if as_json:
                emit_json(view)
            else:
                click.echo("DRY RUN - nothing was sent.\n\nWhat the hub sees (the signed header):")
                click.echo(json.dumps(header.to_json(), indent=2))
                click.echo(f"\nWhat {', '.join(to)} will read ({len(raw)} bytes sealed):")
                click.echo(json.dumps(content, indent=2, ensure_ascii=False))
            return
        import asyncio

        from clients.connection import http_publish  # aiohttp: imported only when something is sent

        result = asyncio.run(http_publish(self.s.need("hub"), raw, self.cert.raw))
        stored = self._record(raw, header, content, result)
        out = {"id": header.packet_id, "index": result["index"], "duplicate": result["duplicate"],
               "to": list(header.nations), "topic": header.topic, "promise": result.get("promise"),
               "recorded_in": stored}
        if as_json:
            emit_json(out)
        else:
            click.echo(f"published {header.packet_id} to {', '.join(header.nations)} on {header.topic}")
            click.echo(f"  log index {result['index']}" + (" (already accepted before)" if result["duplicate"] else ""))
            if result.get("promise"):
                click.echo("  the hub's signed promise of inclusion is stored with it")
            if stored:
                click.echo(f"  follow the receipts: intelhub status {header.packet_id}")

    def _record(self, raw: bytes, header: Any, content: dict[str, Any], result: dict[str, Any]) -> str | None:
        store_path = self.s.get("store")
        if not store_path or not Path(store_path).exists():
            click.echo("warning: no node store configured (--store); receipts for this packet cannot be followed "
                       "with `intelhub status`", err=True)
            return None
        from clients.node.store import NodeStore

        st = NodeStore(store_path)
        try:
            st.record_sent(raw=raw, header=header, content=content, log_index=result["index"],
                           promise=result.get("promise"), sent_at=int(time.time()))
        finally:
            st.close()
        return str(store_path)

    def original(self, ref: str) -> dict[str, Any] | None:
        store_path = self.s.get("store")
        if not store_path or not Path(store_path).exists():
            return None
        from clients.node.store import NodeStore

        st = NodeStore(store_path)
        try:
            return st.show(ref)
        finally:
            st.close()


def publish_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--to", default=None, help="Recipients: FR,DE or all (default: defaults.to in the config)."),
        click.option("--topic", default=None, help="Routing topic (default: derived from the content)."),
        click.option("--dry-run", is_flag=True, help="Show what the hub will see and recipients will read; send nothing."),
    ]):
        f = opt(f)
    return f


def handling_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--tlp", type=click.Choice(["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"], case_sensitive=False),
                     default=None, help="TLP 2.0 level (default AMBER or defaults.tlp)."),
        click.option("--handling", multiple=True, type=click.Choice(["H0", "H1", "H2"], case_sensitive=False),
                     help="SIENA handling code; repeat for several."),
        click.option("--source", type=click.Choice(["A", "B", "C", "X"], case_sensitive=False), default=None,
                     help="Source reliability (default B)."),
        click.option("--information", type=click.Choice(["1", "2", "3", "4"]), default=None,
                     help="Information grading (default 2)."),
    ]):
        f = opt(f)
    return f


# -- alerts -------------------------------------------------------------------------------


@click.group()
def alert() -> None:
    """Entity alerts: publish one, or print a template to start from."""


@alert.command("template")
def alert_template_cmd() -> None:
    """Print a commented alert file to edit and publish with --file."""
    from hub.protocol.content import alert_template

    click.echo(alert_template())


@alert.command("publish")
@click.option("--file", "content_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The alert as JSON (see `intelhub alert template`); other content flags are then ignored.")
@click.option("--name", "names", multiple=True, help="Name of the entity (repeat; any script).")
@click.option("--alias", "aliases", multiple=True, help="Alias (repeat).")
@click.option("--entity-type", type=click.Choice(ENTITY_TYPES), default="Person", show_default=True)
@click.option("--nationality", multiple=True, help="ISO alpha-2 nationality (repeat).")
@click.option("--identifier", "identifiers", multiple=True, metavar="KIND:VALUE",
              help="Identifier, e.g. passport:X123, iban:FR76..., crypto_wallet:TRX:T..., imo:9876543 (repeat).")
@click.option("--title", default=None, help="One-line title (default: built from the name).")
@click.option("--category", default="migrant_smuggling", show_default=True, help="Category (see docs/content.md).")
@click.option("--severity", type=click.Choice(["low", "medium", "high", "critical"]), default="high", show_default=True)
@click.option("--note", default="", help="Free text: what is known and why partners should care.")
@handling_options
@publish_options
@settings_options("hub", "key", "cert", "trust", "store")
@json_option
def alert_publish(content_file: Path | None, names: tuple[str, ...], aliases: tuple[str, ...], entity_type: str,
                  nationality: tuple[str, ...], identifiers: tuple[str, ...], title: str | None, category: str,
                  severity: str, note: str, tlp: str | None, handling: tuple[str, ...], source: str | None,
                  information: str | None, to: str | None, topic: str | None, dry_run: bool, as_json: bool,
                  **kw: Any) -> None:
    """Publish an entity alert, from flags or from --file."""
    from hub.protocol.content import default_topic, validate_content

    s = resolve(kw)
    if content_file is not None:
        content = _read_content(content_file)
    else:
        if not names and not identifiers:
            raise click.UsageError("give at least one --name or --identifier (or --file alert.json)")
        entity: dict[str, Any] = {"id": "e1", "schema": entity_type, "names": list(names)}
        if aliases:
            entity["aliases"] = list(aliases)
        if nationality:
            entity["nationality"] = [n.upper() for n in nationality]
        if identifiers:
            entity["identifiers"] = [_identifier(i) for i in identifiers]
        label = names[0] if names else identifiers[0]
        content = {"type": "alert", "title": title or f"{entity_type}: {label}", "category": category,
                   "severity": severity, "summary": note or f"Alert about {label}.", "entities": [entity],
                   "handling": _handling(s, tlp, handling, source, information)}
    content = validate_content(content)
    pub = Publisher(s)
    pub.publish(content, to=pub.recipients(to), topic=topic or s.defaults.get("topic") or default_topic(content),
                dry_run=dry_run, as_json=as_json)


def _identifier(spec: str) -> dict[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise click.BadParameter(f"{spec!r}: write KIND:VALUE, e.g. passport:X123 or iban:FR76...",
                                 param_hint="--identifier")
    kind = kind.strip().lower()
    if kind in ("crypto_wallet", "wallet"):
        chain, sep2, addr = rest.partition(":")
        return {"type": "crypto_wallet", "value": addr, "chain": chain.upper()} if sep2 else \
            {"type": "crypto_wallet", "value": rest}
    if kind == "handle" and ":" in rest:  # handle:telegram:seaspirit_travel
        platform, _, handle = rest.partition(":")
        return {"type": "handle", "value": handle, "platform": platform}
    return {"type": kind, "value": rest}


# -- freeze notices --------------------------------------------------------------------------


@click.group()
def freeze() -> None:
    """Asset-freeze notices: issue one, or print a template to start from."""


@freeze.command("template")
def freeze_template_cmd() -> None:
    """Print a commented freeze-notice file to edit and issue with --file."""
    from hub.protocol.content import freeze_template

    click.echo(freeze_template())


@freeze.command("issue")
@click.option("--file", "content_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The notice as JSON (see `intelhub freeze template`); other content flags are then ignored.")
@click.option("--authority", default=None, help="Who ordered the freeze (court, ministry, FIU).")
@click.option("--authority-country", default=None, help="Its country (ISO alpha-2; default your nation).")
@click.option("--legal-basis", default=None, help="The legal basis.")
@click.option("--reference", default=None, help="The authority's reference.")
@click.option("--subject", "subject_names", multiple=True, help="Name of the subject (repeat).")
@click.option("--subject-type", type=click.Choice(["Person", "Organization", "Company", "LegalEntity"]),
              default="Person", show_default=True)
@click.option("--asset", "assets", multiple=True, metavar="KIND:ID:AMOUNT:CURRENCY",
              help="An asset, e.g. iban:FR76...:48200.00:EUR or crypto_wallet:T...:31000:USD (repeat).")
@click.option("--effective", default=None, help="Effective date (YYYY-MM-DD; default today).")
@click.option("--expires", default=None, help="Expiry date (YYYY-MM-DD).")
@click.option("--requested-action", default="Freeze any asset you hold under these identifiers and confirm.",
              show_default=True, help="What partners are asked to do.")
@handling_options
@publish_options
@settings_options("hub", "key", "cert", "trust", "store")
@json_option
def freeze_issue(content_file: Path | None, authority: str | None, authority_country: str | None,
                 legal_basis: str | None, reference: str | None, subject_names: tuple[str, ...], subject_type: str,
                 assets: tuple[str, ...], effective: str | None, expires: str | None, requested_action: str,
                 tlp: str | None, handling: tuple[str, ...], source: str | None, information: str | None,
                 to: str | None, topic: str | None, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Issue an asset-freeze notice, from flags or from --file."""
    import datetime

    from hub.protocol.content import default_topic, validate_content

    s = resolve(kw)
    if content_file is not None:
        content = _read_content(content_file)
    else:
        missing = [f for f, v in (("--authority", authority), ("--legal-basis", legal_basis),
                                  ("--reference", reference), ("--subject", subject_names), ("--asset", assets)) if not v]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or give --file notice.json)")
        content = {
            "type": "freeze",
            "authority": {"name": authority, "country": (authority_country or s.get("nation") or "").upper() or "XX"},
            "legal_basis": legal_basis, "reference": reference, "status": "issued",
            "subject": {"id": "s1", "schema": subject_type, "names": list(subject_names)},
            "assets": [_asset(i, a) for i, a in enumerate(assets, 1)],
            "effective": effective or datetime.date.today().isoformat(),
            "requested_action": requested_action, "handling": _handling(s, tlp, handling, source, information),
        }
        if expires:
            content["expires"] = expires
    content = validate_content(content)
    pub = Publisher(s)
    pub.publish(content, to=pub.recipients(to), topic=topic or default_topic(content), dry_run=dry_run,
                as_json=as_json)


def _asset(i: int, spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    if len(parts) < 4:
        raise click.BadParameter(f"{spec!r}: write KIND:ID:AMOUNT:CURRENCY, e.g. iban:FR76...:48200.00:EUR",
                                 param_hint="--asset")
    kind, currency, amount = parts[0].lower(), parts[-1], parts[-2]
    ident = ":".join(parts[1:-2])
    asset_kind = {"iban": "bank_account", "account": "bank_account", "crypto_wallet": "crypto_wallet",
                  "wallet": "crypto_wallet", "imo": "vessel", "mmsi": "vessel"}.get(kind, "other")
    id_type = "crypto_wallet" if asset_kind == "crypto_wallet" else kind
    return {"id": f"a{i}", "kind": asset_kind, "identifier": {"type": id_type, "value": ident},
            "amount": amount, "currency": currency.upper(), "status": "frozen"}


# -- amend, withdraw, status ---------------------------------------------------------------


@click.command("amend")
@click.argument("packet_id")
@click.option("--file", "content_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The complete new version (alert or freeze JSON); it replaces the old one.")
@click.option("--reason", required=True, help="Why it changes (recipients see it in the history).")
@publish_options
@settings_options("hub", "key", "cert", "trust", "store")
@json_option
def amend(packet_id: str, content_file: Path, reason: str, to: str | None, topic: str | None, dry_run: bool,
          as_json: bool, **kw: Any) -> None:
    """Publish a new version of one of your packets; recipients keep the history."""
    from hub.protocol.content import validate_content
    from hub.protocol.envelope import parse_packet_id

    parse_packet_id(packet_id)
    s = resolve(kw)
    content = validate_content({"type": "amend", "ref": packet_id, "reason": reason, "content": _read_content(content_file)})
    _follow_up(s, packet_id, content, to, topic, dry_run, as_json)


@click.command("withdraw")
@click.argument("packet_id")
@click.option("--reason", required=True, help="Why it is withdrawn (recipients see it).")
@publish_options
@settings_options("hub", "key", "cert", "trust", "store")
@json_option
def withdraw(packet_id: str, reason: str, to: str | None, topic: str | None, dry_run: bool, as_json: bool,
             **kw: Any) -> None:
    """Withdraw one of your packets: it leaves every recipient's search, marked withdrawn."""
    from hub.protocol.content import validate_content
    from hub.protocol.envelope import parse_packet_id

    parse_packet_id(packet_id)
    s = resolve(kw)
    _follow_up(s, packet_id, validate_content({"type": "withdraw", "ref": packet_id, "reason": reason}),
               to, topic, dry_run, as_json)


def _follow_up(s: Settings, ref: str, content: dict[str, Any], to: str | None, topic: str | None, dry_run: bool,
               as_json: bool) -> None:
    """Amendments and withdrawals go to the original's recipients unless --to says otherwise."""
    from hub.protocol.content import default_topic

    pub = Publisher(s)
    orig = pub.original(ref)
    if orig is None and not to:
        raise click.UsageError(f"{ref} is not in your node store; give --to (and --topic) for the follow-up")
    if orig is not None and orig.get("direction") != "sent" and orig.get("sender") != pub.cert.nation:
        raise click.UsageError(f"{ref} was sent by {orig.get('sender')}; only the originator may amend or withdraw it")
    nations = pub.recipients(to) if to else [n for n in (orig or {}).get("recipients", []) if n != pub.cert.nation]
    if not nations:
        raise click.UsageError(f"cannot tell who received {ref}; give --to")
    pub.publish(content, to=nations, topic=topic or default_topic(content, orig.get("topic") if orig else None),
                dry_run=dry_run, as_json=as_json)


@click.command("status")
@click.argument("packet_id")
@click.option("--watch", is_flag=True, help="Keep following until every recipient has sent both receipts.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=2.0, show_default=True, help="Seconds between checks.")
@click.option("--timeout", type=click.FloatRange(1, 86400), default=600, show_default=True, help="Give up watching after this.")
@settings_options("store")
@json_option
def status(packet_id: str, watch: bool, interval: float, timeout: float, as_json: bool, **kw: Any) -> None:
    """Per recipient nation: delivered / processed receipts with times, and the log status of your packet."""
    from clients.node.store import NodeStore
    from hub.protocol.envelope import parse_packet_id

    parse_packet_id(packet_id)
    s = resolve(kw)
    if not Path(s.need("store")).exists():
        raise click.BadParameter(f"{s.need('store')} does not exist (is this your national node's store?)",
                                 param_hint="--store")
    st = NodeStore(s.need("store"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            rec = st.show(packet_id)
            if rec is None or rec.get("direction") != "sent":
                raise click.BadParameter(f"{packet_id} is not a packet your nation sent (not in {s.need('store')})",
                                         param_hint="PACKET_ID")
            rows = _status_rows(rec, st.receipts_for(packet_id))
            complete = all(r["delivered"] and r["processed"] for r in rows)
            if not watch or complete or time.monotonic() > deadline:
                break
            time.sleep(interval)
    finally:
        st.close()
    log_state = _log_state(s.need("store"), packet_id)
    if as_json:
        emit_json({"id": packet_id, "log_index": rec.get("log_index"), "log": log_state, "recipients": rows})
        return
    click.echo(f"{packet_id}: log index {rec.get('log_index')}; {log_state}")
    click.echo(table([(r["nation"], r["delivered"] or "-", r["processed"] or "-") for r in rows],
                     ["nation", "delivered", "processed"]))


def _log_state(store: str, packet_id: str) -> str:
    """What the node's log watcher established about the hub's promise to log this packet."""
    import sqlite3

    from clients.audit import logdb

    try:
        conn = logdb.connect(store, readonly=True)
    except (sqlite3.Error, OSError):
        return "log inclusion not yet checked"
    try:
        if not logdb.has_log_tables(conn):
            return "log inclusion not yet checked (is the node running?)"
        row = conn.execute("SELECT status, detail FROM log_promises WHERE packet_id = ?", (packet_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return "log inclusion not yet checked"
    return {"kept": "log inclusion verified (the hub kept its signed promise)",
            "pending": "log inclusion pending (promise not yet due or not yet checked)",
            "broken": f"LOG PROMISE BROKEN: {row[1]}", "invalid": f"INVALID PROMISE: {row[1]}"}.get(row[0], row[0])


def _status_rows(rec: dict[str, Any], receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    nations = list(rec.get("recipients", [])) or sorted({r["nation"] for r in receipts})
    rows = {n: {"nation": n, "delivered": None, "processed": None} for n in nations}
    for r in receipts:
        row = rows.setdefault(r["nation"], {"nation": r["nation"], "delivered": None, "processed": None})
        row[r["status"]] = row[r["status"]] or r["at"]
    return list(rows.values())
