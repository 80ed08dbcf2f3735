"""``intelhub node`` (node operators) and the analysts' read commands: search, lookup, show, freezes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import emit_json, json_option, table
from .settings import resolve, settings_options


@click.group("node")
def node() -> None:
    """Run a national node and look after its store (node operator)."""


@node.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_NODE_CONFIG", show_envvar=True, help="Node configuration (TOML); see examples/node.toml.")
@click.option("--check", is_flag=True, help="Validate the configuration, keys, filters and sinks, then exit.")
def run(config_path: Path, check: bool) -> None:
    """Connect to the hub, subscribe, and verify, decrypt, filter and store every packet until SIGTERM."""
    import asyncio
    import signal

    from hub.aio import defer_stop_signals, stop_requested

    if not check:
        defer_stop_signals()  # a SIGTERM while the store opens: the node starts, then stops at once
    from clients.node.config import load_node_config
    from clients.node.service import NodeService
    from hub.logs import setup_logging

    config = load_node_config(config_path)
    service = NodeService(config)
    if check:
        click.echo(f"{config_path}: OK; {config.nation} node, {len(service.filters)} filter rule(s), "
                   f"{len(service.sinks)} sink(s), store {config.store}")
        service.st.close()
        return
    setup_logging(config.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if stop_requested() is not None:
            stop.set()
        await service.run(stop)

    asyncio.run(main())


def _store(kw: dict[str, Any]) -> Any:
    from clients.node.store import NodeStore

    s = resolve(kw)
    path = Path(s.need("store"))
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist (is the node running, and is this its store?)",
                                 param_hint="--store")
    return NodeStore(path)


@node.command("stats")
@settings_options("store")
@json_option
def stats(as_json: bool, **kw: Any) -> None:
    """Counts in the store: packets by type, records, entities, quarantined, receipts."""
    st = _store(kw)
    data = st.stats()
    st.close()
    if as_json:
        emit_json(data)
    else:
        for k, v in data.items():
            click.echo(f"{k}: {v}")


@node.command("mark-processed")
@click.argument("packet_id")
@settings_options("hub", "key", "cert", "trust", "store")
@json_option
def mark_processed(packet_id: str, as_json: bool, **kw: Any) -> None:
    """Mark a received packet processed and send the originator a signed *processed* receipt."""
    import asyncio
    import time

    from clients.connection import http_publish
    from clients.node.service import iso_now
    from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir
    from hub.protocol import envelope
    from hub.protocol.content import default_topic, validate_content
    from hub.protocol.envelope import parse_packet_id

    s = resolve(dict(kw))
    parse_packet_id(packet_id)
    st = _store(kw)
    record = st.show(packet_id)
    if record is None:
        st.close()
        raise click.BadParameter(f"no packet {packet_id} in the store", param_hint="PACKET_ID")
    trust = load_trust_dir(s.need("trust"))
    cert = trust.add_certificate(load_certificate(s.need("cert")).raw)
    signing = load_private_keys(s.need("key")).signing
    now = int(time.time())
    content = validate_content({"type": "receipt", "ref": packet_id, "status": "processed", "at": iso_now(now)})
    originator = record["sender"]
    raw = envelope.seal(content, signer=signing, signer_cert=cert,  # type: ignore[arg-type]
                        recipients=[trust.recipient(originator, now)], topic=default_topic(content), now=now)
    r = asyncio.run(http_publish(s.need("hub"), raw, cert.raw))
    st.mark_processed(packet_id)
    st.record_sent(raw=raw, header=envelope.parse_packet(raw).header, content=content, log_index=r["index"],
                   promise=r.get("promise"), sent_at=now)
    st.close()
    if as_json:
        emit_json({"packet": packet_id, "receipt": r["id"], "index": r["index"], "to": originator})
    else:
        click.echo(f"marked {packet_id} processed; receipt {r['id']} sent to {originator} (log index {r['index']})")


# -- analysts -------------------------------------------------------------------------------


@click.command("search")
@click.argument("query")
@click.option("--type", "schema", default=None, help="Entity type (FtM schema), e.g. Person, Company, Vessel.")
@click.option("--country", default=None, help="Nationality or country (ISO alpha-2).")
@click.option("--since", default=None, help="Records issued on or after this date (YYYY-MM-DD).")
@click.option("--until", default=None, help="Records issued on or before this date (YYYY-MM-DD).")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--withdrawn", is_flag=True, help="Include withdrawn records.")
@settings_options("store")
@json_option
def search(query: str, schema: str | None, country: str | None, since: str | None, until: str | None,
           limit: int, withdrawn: bool, as_json: bool, **kw: Any) -> None:
    """Find entities by name across scripts and spellings, ranked, with why each matched."""
    st = _store(kw)
    hits = st.search(query, schema=schema, country=country.upper() if country else None, since=since, until=until,
                     limit=limit, include_withdrawn=withdrawn)
    st.close()
    if as_json:
        emit_json([h.as_dict() for h in hits])
        return
    if not hits:
        click.echo(f"no match for {query!r}")
        return
    click.echo(table([(f"{h.score:.2f}", h.name, h.schema, ",".join(h.countries), h.sender, h.status,
                       h.packet_id, "; ".join(h.why[:3])) for h in hits],
                     ["score", "name", "type", "countries", "from", "status", "record", "why"]))


@click.command("lookup")
@click.argument("kind_or_value")
@click.argument("value", required=False)
@click.option("--country", default=None, help="Country for a phone number written in national form.")
@click.option("--withdrawn", is_flag=True, help="Include withdrawn records.")
@settings_options("store")
@json_option
def lookup(kind_or_value: str, value: str | None, country: str | None, withdrawn: bool, as_json: bool,
           **kw: Any) -> None:
    """Exact identifier match after normalisation: `lookup IBAN "FR76 3000 ..."`, `lookup wallet T...`,
    `lookup IMO 9876543`, `lookup passport X123`, `lookup phone +44...`; or just the value."""
    kind, val = (kind_or_value, value) if value is not None else (None, kind_or_value)
    st = _store(kw)
    try:
        rows = st.lookup(kind, val, country=country, include_withdrawn=withdrawn)
    finally:
        st.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no record holds {val!r}")
        return
    def held_by(r: dict[str, Any]) -> str:
        if r.get("entity"):
            e = r["entity"]
            return f"{e.get('caption') or ''} ({e.get('schema')})"
        if r.get("asset"):
            a = r["asset"]
            return f"frozen asset {a.get('id')}: {a.get('amount') or ''} {a.get('currency') or ''} ({a.get('status')})"
        return ""

    click.echo(table([(r.get("kind"), r.get("value"), r.get("type"), held_by(r), r.get("sender"), r.get("status"),
                       r.get("packet_id")) for r in rows],
                     ["kind", "value", "in", "held by", "from", "record status", "record"]))


@click.command("show")
@click.argument("packet_id")
@settings_options("store")
@json_option
def show(packet_id: str, as_json: bool, **kw: Any) -> None:
    """A record: its current content, every amendment, its status, and the receipts."""
    st = _store(kw)
    rec = st.show(packet_id)
    st.close()
    if rec is None:
        raise click.BadParameter(f"no packet {packet_id} in the store", param_hint="PACKET_ID")
    if as_json:
        emit_json(rec)
        return
    click.echo(json.dumps(rec, indent=2, ensure_ascii=False, default=str))


@click.command("freezes")
@click.option("--active", "active_only", is_flag=True, help="Only notices in force with an asset still frozen.")
@click.option("--withdrawn", is_flag=True, help="Include withdrawn notices.")
@settings_options("store")
@json_option
def freezes(active_only: bool, withdrawn: bool, as_json: bool, **kw: Any) -> None:
    """Asset-freeze notices with their assets and current status."""
    st = _store(kw)
    rows = st.freezes(active_only=active_only, include_withdrawn=withdrawn)
    st.close()
    if as_json:
        emit_json(rows)
        return
    out = []
    for f in rows:
        for a in f.get("assets", []):
            out.append((f.get("reference"), f.get("status"), f.get("subject") or "", a.get("kind"),
                        a.get("id_value") or a.get("description") or "",
                        f"{a.get('amount') or ''} {a.get('currency') or ''}".strip(), a.get("status"), f.get("packet_id")))
    click.echo(table(out, ["reference", "notice", "subject", "asset", "identifier", "amount", "asset status", "record"])
               if out else "no freeze notices")
