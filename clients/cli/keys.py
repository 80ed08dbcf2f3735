"""``intelhub keys``: federations, certificates, revocations, fingerprints."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, json_option, now, trust_option


@click.group()
def keys() -> None:
    """Create a federation, issue and revoke certificates, show fingerprints."""


@keys.group()
def federation() -> None:
    """Whole-federation operations."""


def _new_passphrase() -> bytes:
    from hub.keyfiles import PASSPHRASE_ENV
    import os

    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    return click.prompt("Passphrase for the new private keys", hide_input=True, confirmation_prompt=True).encode()


@federation.command("create")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Empty directory to write the federation into.")
@click.option("--nations", default="CA,DE,FR,GB,IT,JP,US", show_default=True,
              help="Comma-separated ISO 3166-1 alpha-2 codes of the members.")
@click.option("--name", default="intelhub", show_default=True, help="Federation name, written into the roster.")
@click.option("--hub-name", default="hub", show_default=True, help="The hub's name in the roster.")
@click.option("--suite", "suites", multiple=True, default=["IH1-HYBRID"], show_default=True,
              help="Allowed suite (repeat for several): IH1-HYBRID, IH1-CLASSIC.")
@click.option("--validity-days", type=click.IntRange(1, 3650), default=730, show_default=True,
              help="Validity of the node and officer certificates.")
@click.option("--example", is_flag=True,
              help="Write UNENCRYPTED keys marked EXAMPLE ONLY (for demos and tests only).")
@json_option
def federation_create(out: Path, nations: str, name: str, hub_name: str, suites: tuple[str, ...],
                      validity_days: int, example: bool, as_json: bool) -> None:
    """Create roots, a hub key, a node and an officer per nation, and the roster they all sign.

    Private keys are encrypted with a passphrase ($INTELHUB_PASSPHRASE or a prompt)
    unless --example is given. In a real federation each nation creates its own
    root offline; this command is for a first set-up and for exercises.
    """
    import pycountry

    from hub.keyfiles import write_federation
    from hub.protocol.federation import create_federation
    from hub.protocol.suites import SUITES

    members: dict[str, str] = {}
    for part in nations.split(","):
        code = part.strip().upper()
        country = pycountry.countries.get(alpha_2=code) if len(code) == 2 else None
        if country is None:
            raise click.BadParameter(f"{part!r} is not an ISO 3166-1 alpha-2 code (e.g. FR)", param_hint="--nations")
        members[code] = getattr(country, "common_name", None) or country.name
    for s in suites:
        if s not in SUITES:
            raise click.BadParameter(f"{s!r} is not a suite ({', '.join(SUITES)})", param_hint="--suite")
    passphrase = None if example else _new_passphrase()
    fed = create_federation(members, now=now(), name=name + (" (EXAMPLE ONLY)" if example else ""),
                            hub_name=hub_name, validity=validity_days * 86400, suites=tuple(suites))
    written = write_federation(fed, out, passphrase, example=example)
    if as_json:
        emit_json({"roster": fed.roster.fp.hex(), "files": [str(p) for p in written]})
        return
    click.echo(f"federation {fed.name!r}: {len(members)} nations, roster fingerprint {fed.roster.fp.hex()}")
    click.echo(f"wrote {len(written)} files under {out}/ (root keys: keep offline)")


@keys.command("issue")
@click.option("--root", "root_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The nation's root key file.")
@trust_option
@click.option("--nation", required=True, help="The nation the certificate is for (its root must be --root).")
@click.option("--role", type=click.Choice(["officer", "node"]), required=True, help="officer signs packets; node also receives.")
@click.option("--subject", required=True, help="Name of the officer or node: a-z 0-9 . _ @ - (e.g. fr-officer-dupont).")
@click.option("--out", "out_prefix", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Writes OUT.key (new private key) and OUT.cert.")
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True, help="Validity.")
@json_option
def issue(root_path: Path, trust_dir: Path, nation: str, role: str, subject: str, out_prefix: Path,
          days: int, as_json: bool) -> None:
    """Generate a key pair and a certificate for it, signed by the nation's root."""
    from hub.keyfiles import load_private_keys, load_trust_dir, save_private_keys, write_atomic
    from hub.protocol.armor import armor
    from hub.protocol.certs import SUBJECT_RE, issue_certificate
    from hub.protocol.errors import KeyFileError
    from hub.protocol.keys import KemKey, PrivateKeys, SigningKey

    nation = nation.upper()
    if not SUBJECT_RE.fullmatch(subject):
        raise click.BadParameter("use 1-64 of a-z 0-9 . _ @ -", param_hint="--subject")
    trust = load_trust_dir(trust_dir)
    if nation not in trust.roster.nations:
        raise click.BadParameter(f"{nation} is not in the roster", param_hint="--nation")
    root = load_private_keys(root_path).signing
    if root is None or root.public().key_id != trust.roster.root_key_id(nation):
        raise KeyFileError(f"{root_path}: not the root key of {nation} in the roster")
    key_path, cert_path = out_prefix.with_suffix(".key"), out_prefix.with_suffix(".cert")
    for p in (key_path, cert_path):
        if p.exists():
            raise click.BadParameter(f"{p} exists; choose another --out", param_hint="--out")
    serial = max([c.serial for c in trust.certs.values() if c.nation == nation] + [0]) + 1
    signing = SigningKey.generate()
    kem = KemKey.generate() if role == "node" else None
    t = now()
    cert = issue_certificate(root, nation=nation, subject=subject, role=role, signing=signing.public(),
                             kem=kem.public() if kem else None, serial=serial, not_before=t - 60,
                             not_after=t + days * 86400)
    passphrase = _new_passphrase()
    save_private_keys(key_path, PrivateKeys(signing=signing, kem=kem), passphrase)
    write_atomic(cert_path, armor("CERTIFICATE", cert.raw, (f"{cert.name} {role}",)))
    if as_json:
        emit_json({**cert.to_json(), "key_file": str(key_path), "cert_file": str(cert_path)})
    else:
        click.echo(f"issued {cert.name} ({role}) serial {serial}, fingerprint {cert.fp.hex()}")
        click.echo(f"wrote {key_path} and {cert_path}; copy the .cert into the federation directory")


@keys.command("revoke")
@click.option("--root", "root_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The nation's root key file.")
@trust_option
@click.option("--cert", "cert_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The certificate to revoke.")
@click.option("--reason", type=click.Choice(["key_compromise", "superseded", "cessation", "unspecified"]),
              default="key_compromise", show_default=True)
@click.option("--at", "at_time", type=int, default=None,
              help="Effective time (Unix seconds; default now). Signatures made before it stay valid evidence.")
@json_option
def revoke(root_path: Path, trust_dir: Path, cert_path: Path, reason: str, at_time: int | None, as_json: bool) -> None:
    """Add a certificate to its nation's revocation list (rewrites <CC>/revocations.txt)."""
    from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir, write_atomic
    from hub.protocol.armor import armor
    from hub.protocol.errors import KeyFileError
    from hub.protocol.roster import Revocation, RevocationList, sign_revocations

    trust = load_trust_dir(trust_dir)
    cert = load_certificate(cert_path)
    trust.add_certificate(cert.raw)
    root = load_private_keys(root_path).signing
    if root is None or root.public().key_id != trust.roster.root_key_id(cert.nation):
        raise KeyFileError(f"{root_path}: not the root key of {cert.nation}")
    current = trust.revocations.get(cert.nation) or RevocationList.parse(
        sign_revocations(root, nation=cert.nation, serial=0, issued=now(), entries=[]).raw)
    if cert.fp in current.entries:
        raise click.BadParameter(f"{cert.name} is already revoked", param_hint="--cert")
    at = now() if at_time is None else at_time
    rl = sign_revocations(root, nation=cert.nation, serial=current.serial + 1, issued=now(),
                          entries=list(current.entries.values()) + [Revocation(cert.fp, at, reason)])
    path = trust_dir / cert.nation / "revocations.txt"
    write_atomic(path, armor("REVOCATIONS", rl.raw, (f"{cert.nation} revocation list serial {rl.serial}",)))
    if as_json:
        emit_json({"revoked": cert.fp.hex(), "at": at, "reason": reason, "serial": rl.serial, "file": str(path)})
    else:
        click.echo(f"revoked {cert.name} ({cert.fp.hex()[:16]}) from {at}, reason {reason}; wrote {path} (serial {rl.serial})")


@keys.command("show")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@json_option
def show(files: tuple[Path, ...], as_json: bool) -> None:
    """Show what a roster, certificate, revocation list or key file holds, with fingerprints."""
    from hub.keyfiles import load_certificate, load_private_keys, load_revocations, load_roster

    out = []
    for f in files:
        head = f.read_bytes()[:4096]
        if b"INTELHUB ROSTER" in head:
            r = load_roster(f)
            out.append({"file": str(f), "kind": "roster", "fingerprint": r.fp.hex(), "federation": r.federation,
                        "serial": r.serial, "suites": list(r.suites), "hub": r.hub_name,
                        "hub_key_id": r.hub_key.key_id.hex(),
                        "nations": {c: {"name": n.name, "root_key_id": n.root.key_id.hex()} for c, n in r.nations.items()}})
        elif b"INTELHUB CERTIFICATE" in head:
            out.append({"file": str(f), "kind": "certificate", **load_certificate(f).to_json()})
        elif b"INTELHUB REVOCATIONS" in head:
            rl = load_revocations(f)
            out.append({"file": str(f), "kind": "revocations", "nation": rl.nation, "serial": rl.serial,
                        "revoked": [{"cert": e.cert.hex(), "at": e.at, "reason": e.reason} for e in rl.entries.values()]})
        elif b"intelhub-key:" in head:
            keys = load_private_keys(f)
            out.append({"file": str(f), "kind": "private key",
                        "signing_key_id": keys.signing.public().key_id.hex() if keys.signing else None,
                        "can_receive": keys.kem is not None})
        else:
            raise click.BadParameter(f"{f}: not a roster, certificate, revocation list or intelhub key file",
                                     param_hint="FILES")
    if as_json:
        emit_json(out)
        return
    for item in out:
        click.echo(f"{item['file']}: {item['kind']}")
        for k, v in item.items():
            if k not in ("file", "kind"):
                click.echo(f"  {k}: {v}")
