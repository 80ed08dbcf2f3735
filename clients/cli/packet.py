"""``intelhub packet``: seal, open and verify packet files offline (no hub involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import emit_json, json_option, now, parse_nations, table, trust_option


@click.group()
def packet() -> None:
    """Seal, open and verify packet files offline."""


def _read_packet(path: Path) -> bytes:
    from hub.keyfiles import read_bytes
    from hub.protocol.armor import dearmor

    return dearmor("PACKET", read_bytes(path, "packet"), str(path))


@packet.command("seal")
@click.option("--file", "content_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Content as JSON (see `intelhub alert template`).")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_KEY", show_envvar=True, help="Your private key file (officer or node).")
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_CERT", show_envvar=True, help="Your certificate.")
@trust_option
@click.option("--to", "to", required=True, help="Recipient nations: FR,DE or 'all'.")
@click.option("--topic", default=None, help="Routing topic (default: derived from the content).")
@click.option("--suite", default="IH1-HYBRID", show_default=True, help="IH1-HYBRID or IH1-CLASSIC.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Packet file to write.")
@json_option
def seal_cmd(content_file: Path, key_path: Path, cert_path: Path, trust_dir: Path, to: str, topic: str | None,
             suite: str, out: Path, as_json: bool) -> None:
    """Validate content, encrypt it to the recipients' nations and sign it, into a packet file."""
    from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir, write_atomic
    from hub.protocol import envelope
    from hub.protocol.content import content_from_json, default_topic
    from hub.protocol.errors import KeyFileError
    from hub.protocol.suites import SUITES

    if suite not in SUITES:
        raise click.BadParameter(f"{suite!r} is not a suite ({', '.join(SUITES)})", param_hint="--suite")
    content = content_from_json(content_file.read_text("utf-8"))
    trust = load_trust_dir(trust_dir)
    cert = trust.add_certificate(load_certificate(cert_path).raw)
    keys = load_private_keys(key_path)
    if keys.signing is None or keys.signing.public().key_id != cert.signing.key_id:
        raise KeyFileError(f"{key_path}: does not hold the signing key of {cert_path}")
    t = now()
    nations = parse_nations(to, sorted(trust.roster.nations), exclude=cert.nation)
    recipients = [trust.recipient(n, t) for n in nations]
    raw = envelope.seal(content, signer=keys.signing, signer_cert=cert, recipients=recipients,
                        topic=topic or default_topic(content), now=t, suite=SUITES[suite])
    write_atomic(out, raw)
    h = envelope.parse_packet(raw).header
    if as_json:
        emit_json({"file": str(out), "size": len(raw), "header": h.to_json()})
    else:
        click.echo(f"sealed {h.packet_id} ({len(raw)} bytes) from {cert.name} to {', '.join(h.nations)} on {h.topic}")


@packet.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@trust_option
@json_option
def verify_cmd(files: tuple[Path, ...], trust_dir: Path, as_json: bool) -> None:
    """Check packets from public keys only: structure, signer certificate, both signature halves."""
    from hub.keyfiles import load_trust_dir
    from hub.protocol import envelope
    from hub.protocol.errors import IntelhubError

    trust = load_trust_dir(trust_dir)
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            v = envelope.verify(_read_packet(f), trust, now())
            results.append({"file": str(f), "ok": True, "id": v.header.packet_id, "signer": v.signer.name,
                            "suite": v.header.suite.id, "topic": v.header.topic, "to": list(v.header.nations),
                            "created": v.header.created})
        except IntelhubError as exc:
            results.append({"file": str(f), "ok": False, "error": str(exc)})
    if as_json:
        emit_json(results)
    else:
        click.echo(table([(r["file"], "OK" if r["ok"] else "FAIL", r.get("id", ""), r.get("signer", ""),
                           r.get("suite", ""), ",".join(r.get("to", [])) or r.get("error", ""))
                          for r in results], ["file", "result", "packet", "signer", "suite", "to / error"]))
    if not all(r["ok"] for r in results):
        raise SystemExit(3)


@packet.command("open")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_NODE_KEY", show_envvar=True, help="The recipient nation's node key file.")
@click.option("--nation", required=True, help="The recipient nation whose key this is.")
@trust_option
@json_option
def open_cmd(file: Path, key_path: Path, nation: str, trust_dir: Path, as_json: bool) -> None:
    """Verify a packet, then decrypt it as a recipient nation and show header and content."""
    from hub.keyfiles import load_private_keys, load_trust_dir
    from hub.protocol import envelope
    from hub.protocol.errors import KeyFileError

    trust = load_trust_dir(trust_dir)
    keys = load_private_keys(key_path)
    if keys.kem is None:
        raise KeyFileError(f"{key_path}: holds no recipient (HPKE) key; use the node key")
    o = envelope.open_packet(_read_packet(file), nation=nation.upper(), kem=keys.kem, trust=trust, now=now())
    if as_json:
        emit_json({"header": o.header.to_json(), "signer": o.signer.name, "content": o.content})
    else:
        h = o.header
        click.echo(f"packet {h.packet_id} from {o.signer.name} to {', '.join(h.nations)}, topic {h.topic}, suite {h.suite.id}")
        click.echo(json.dumps(o.content, indent=2, ensure_ascii=False))
