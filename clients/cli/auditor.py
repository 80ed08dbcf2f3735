"""``intelhub audit``: verify packets, stores and evidence bundles; prove completeness; export evidence.

Thin commands over :mod:`clients.audit` (docs/audit.md). Checks that do not pass exit 1;
bad input exits 2, as everywhere in the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .common import emit_json, json_option, table

F = TypeVar("F", bound=Callable[..., Any])


def _opt_trust(required: bool) -> Callable[[F], F]:
    return click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path),
                        envvar="INTELHUB_TRUST", show_envvar=True, required=required,
                        help="Federation directory: roster.txt (pinned), certificates, revocation lists.")


def _opt_hub(f: F) -> F:
    return click.option("--hub", "hub_url", envvar="INTELHUB_HUB", show_envvar=True, default=None,
                        help="Hub URL, to fetch proofs the inputs lack (e.g. https://hub.example:8443).")(f)


def _opt_store(required: bool) -> Callable[[F], F]:
    return click.option("--store", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        envvar="INTELHUB_STORE", show_envvar=True, required=required, help="A node store file.")


def _progress(done: int, total: int) -> None:
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    click.echo(f"  {done:,}/{total:,}", err=True, nl=False)
    click.echo(end, err=True, nl=False)


def _trust(trust_dir: Path | None) -> Any:
    if trust_dir is None:
        return None
    from hub.keyfiles import load_trust_dir

    return load_trust_dir(trust_dir)


@click.group("audit")
def audit() -> None:
    """Verify packets, node stores and evidence bundles from public keys; prove completeness (auditors)."""


@audit.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_opt_trust(required=False)
@_opt_hub
@click.option("--require-log", is_flag=True, help="Fail packets whose log inclusion is not proven.")
@json_option
def verify_cmd(paths: tuple[Path, ...], trust_dir: Path | None, hub_url: str | None, require_log: bool,
               as_json: bool) -> None:
    """Check packet files, node stores (STORE.db) and evidence bundles, offline.

    For each packet: both signature halves, the certificate chain to its nation's root, that
    the certificate was valid, not revoked and not superseded when it signed, and its inclusion
    in the hub's log under a hub-signed checkpoint. Checkpoints must be consistent with each
    other across all inputs; evidence saved against the hub is re-confirmed. Bundles carry their
    own keys: --trust pins the roster they must have.
    """
    import asyncio

    from clients.audit.completeness import utc
    from clients.audit.inputs import verify_inputs

    report = asyncio.run(verify_inputs(list(paths), _trust(trust_dir), hub_url=hub_url,
                                       progress=None if as_json else _progress))
    if require_log:
        for p in report.packets:
            if not p.log.startswith(("included", "FAIL")):
                p.failures.append(f"log inclusion not proven ({p.log})")
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(table([(p.source, p.packet_id or "?", p.signer or "?", p.ed25519, p.mldsa65,
                           "ok" if p.certificate.startswith("ok") else "FAIL" if p.certificate.startswith("FAIL") else "-",
                           _short_log(p.log), (p.disclosure or "-").split(":")[0], "OK" if p.ok else "FAIL")
                          for p in report.packets],
                         ["source", "packet", "signer", "ed25519", "ml-dsa-65", "cert", "log", "content", "result"]))
        for p in report.packets:
            for f in p.failures:
                click.echo(f"FAIL {p.source}: {f}")
        for c in report.checkpoints:
            click.echo(f"checkpoint {c['source']}: size {c['size']} at {utc(c['time'])}, root {c['root'][:16]}…, "
                       "signed by the hub")
        for e in report.evidence:
            click.echo(f"evidence {e['source']} ({e['kind']}): {'CONFIRMED' if e['confirmed'] else 'not confirmed'}: {e['why']}")
        for n in report.notes:
            click.echo(f"note: {n}")
        for prob in report.problems:
            click.echo(f"FAIL {prob}")
        bad = sum(1 for p in report.packets if not p.ok)
        click.echo(f"{len(report.packets)} packet(s), {bad} failed; {len(report.problems)} other problem(s): "
                   + ("OK" if report.ok else "FAILED"))
    if not report.ok:
        raise SystemExit(1)


def _short_log(text: str) -> str:
    if text.startswith("included: leaf "):
        return "leaf " + text.split("leaf ", 1)[1].split(" (", 1)[0]
    return "FAIL" if text.startswith("FAIL") else "not proven" if text.startswith("not proven") else text


@audit.command("completeness")
@click.option("--node-config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              envvar="INTELHUB_NODE_CONFIG", show_envvar=True, default=None,
              help="The node's configuration: gives store, trust, hub, nation and subscriptions.")
@_opt_store(required=False)
@_opt_trust(required=False)
@_opt_hub
@click.option("--nation", default=None, help="The node's nation (e.g. FR).")
@click.option("--subscribe", "patterns", multiple=True,
              help="A subscription pattern of the node (repeat); packets no pattern matches are 'not subscribed'.")
@click.option("--grace", type=click.IntRange(0, 86400), default=60, show_default=True,
              help="Seconds before the checkpoint within which a packet may still be on its way.")
@json_option
def completeness_cmd(node_config: Path | None, store: Path | None, trust_dir: Path | None, hub_url: str | None,
                     nation: str | None, patterns: tuple[str, ...], grace: int, as_json: bool) -> None:
    """Prove the node holds every packet the log has for its nation, or list exactly what is missing.

    Fetches the log's leaves (signed headers only, never content) up to the hub's latest
    checkpoint, checks they hash to its signed root, and compares them with the store.
    """
    import asyncio

    import aiohttp

    from clients.audit.completeness import audit_completeness, utc
    from clients.audit.fetch import LogClient
    from clients.node.store import NodeStore

    if node_config is not None:
        from clients.node.config import load_node_config

        cfg = load_node_config(node_config)
        store, trust_dir, hub_url = store or cfg.store, trust_dir or cfg.trust, hub_url or cfg.hub
        nation = nation or cfg.nation
        patterns = patterns or tuple(p for s in cfg.subscriptions for p in s.patterns)
    for value, flag in ((store, "--store"), (trust_dir, "--trust"), (hub_url, "--hub"), (nation, "--nation")):
        if value is None:
            raise click.UsageError(f"missing {flag} (or give --node-config)")
    trust = _trust(trust_dir)
    st = NodeStore(store)  # type: ignore[arg-type]

    async def run() -> Any:
        async with aiohttp.ClientSession() as s:
            return await audit_completeness(LogClient(s, hub_url), trust.roster, store, nation.upper(),  # type: ignore[arg-type, union-attr]
                                            patterns=patterns or None, grace=grace,
                                            progress=None if as_json else _progress, has_packet=st.has_packet)

    try:
        report = asyncio.run(run())
    finally:
        st.close()
    if as_json:
        emit_json(report.as_dict())
    else:
        cp = report.checkpoint
        click.echo(f"log checkpoint: {cp.size:,} leaves at {utc(cp.time)}, signed by the hub; "
                   f"{report.leaves:,} leaves fetched and checked against its root")
        click.echo(f"{report.nation}: {report.addressed:,} addressed, {report.received:,} received, "
                   f"{len(report.missing)} missing, {len(report.expired)} expired undelivered, "
                   f"{len(report.not_subscribed)} not subscribed, {len(report.in_flight)} in flight")
        for title, leaves in (("MISSING", report.missing), ("EXPIRED, never received", report.expired),
                              ("not subscribed", report.not_subscribed), ("in flight", report.in_flight)):
            if leaves:
                click.echo(f"\n{title}:")
                click.echo(table([(x.index, x.packet_id, x.sender, x.topic, utc(x.time)) for x in leaves],
                                 ["index", "packet", "from", "topic", "accepted"]))
        for i, ours, theirs in report.misplaced:
            click.echo(f"FAIL: this node received {ours} as leaf {i}, but the log holds {theirs} there")
        for prob in report.problems:
            click.echo(f"FAIL: {prob}")
        click.echo("COMPLETE: every packet the log holds for this nation is in the store" if report.complete
                   else "INCOMPLETE")
    if not report.complete:
        raise SystemExit(1)


@audit.command("export")
@click.argument("ids", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Bundle file to write (e.g. case.bundle).")
@_opt_store(required=True)
@_opt_trust(required=True)
@_opt_hub
@click.option("--no-content", is_flag=True, help="Leave out the disclosed content (salt and plaintext).")
@click.option("--no-receipts", is_flag=True, help="Leave out the receipts for the packets.")
@click.option("--note", default="", help="A line for the reader of the bundle (case reference).")
@json_option
def export_cmd(ids: tuple[str, ...], out: Path, store: Path, trust_dir: Path, hub_url: str | None,
               no_content: bool, no_receipts: bool, note: str, as_json: bool) -> None:
    """Write a self-contained evidence bundle of packets (by id) that verifies offline, years later.

    It holds the packets, their receipts, the roster, every certificate and revocation list,
    the hub-signed checkpoints with the proofs linking them, each packet's inclusion proof,
    the node's saved evidence against the hub, and (unless --no-content) the disclosed
    content a court can check against each packet's signed commitment.
    """
    import asyncio

    from clients.audit.bundle import bundle_summary, export_bundle
    from hub.keyfiles import write_atomic

    b = asyncio.run(export_bundle(ids, store, _trust(trust_dir), hub_url=hub_url, content=not no_content,
                                  receipts=not no_receipts, note=note))
    write_atomic(out, b.encode(), 0o600)
    summary = {"file": str(out), **bundle_summary(b),
               "unproven": sum(1 for p in b.packets if p.index is None)}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {out}: {summary['packets']} packet(s), {summary['checkpoints']} checkpoint(s), "
                   f"{summary['evidence']} evidence item(s); roster {summary['roster'][:16]}…")
        if summary["unproven"]:
            click.echo(f"note: {summary['unproven']} packet(s) without a log proof (run the node's log watcher, "
                       "or give --hub)")


@audit.command("export-signature")
@click.argument("packet")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write.")
@_opt_store(required=False)
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Take the packet (by id) and the keys from this bundle.")
@_opt_trust(required=False)
def export_signature_cmd(packet: str, out: Path, store: Path | None, bundle_path: Path | None,
                         trust_dir: Path | None) -> None:
    """Write a packet's signed bytes, signature and signer's key as files openssl checks alone.

    PACKET is a packet file, or a packet id found in --store or --bundle. See README.txt in
    --out for the `openssl pkeyutl -verify` commands.
    """
    from clients.audit.signature import export_signature

    raw, trust = _find_packet(packet, store, bundle_path, trust_dir)
    files = export_signature(raw, trust, out)
    click.echo(f"wrote {len(files)} files to {out}; check with:\n"
               f"  openssl pkeyutl -verify -pubin -inkey {out}/pub.pem -rawin -in {out}/signed.bin "
               f"-sigfile {out}/sig.bin")


def _find_packet(packet: str, store: Path | None, bundle_path: Path | None, trust_dir: Path | None) -> tuple[bytes, Any]:
    from clients.audit import storeread
    from clients.audit.bundle import load_bundle
    from clients.audit.inputs import read_packet_file
    from hub.protocol import envelope
    from hub.protocol.roster import Roster
    from hub.protocol.trust import Trust

    if bundle_path is not None:
        b = load_bundle(bundle_path)
        trust = Trust(Roster.parse(b.roster))
        for raw in b.certs:
            trust.add_certificate(raw)
        for raw in b.revocations:
            trust.add_revocations(raw)
        for bp in b.packets:
            if envelope.parse_packet(bp.packet).header.packet_id == packet:
                return bp.packet, trust
        raise click.BadParameter(f"no packet {packet} in {bundle_path}", param_hint="PACKET")
    if trust_dir is None:
        raise click.UsageError("missing --trust (the federation directory), or give --bundle")
    trust = _trust(trust_dir)
    if Path(packet).is_file():
        return read_packet_file(Path(packet)), trust
    if store is None:
        raise click.BadParameter(f"{packet} is not a file; give --store to find it by id", param_hint="PACKET")
    envelope.parse_packet_id(packet)
    conn = storeread.open_readonly(store)
    try:
        sp = storeread.packet_by_id(conn, packet)
    finally:
        conn.close()
    if sp is None:
        raise click.BadParameter(f"no packet {packet} in {store}", param_hint="PACKET")
    return sp.raw, trust
