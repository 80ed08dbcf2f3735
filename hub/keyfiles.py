"""Reading and writing key, certificate, roster and revocation files (the I/O around hub.protocol).

Layout of a federation directory (``intelhub keys federation create``)::

    roster.txt                 the signed roster (armored)
    hub/hub.key                the hub's signing key
    <CC>/root.key              a nation's root key (keep offline)
    <CC>/node.key, node.cert   the national node: signing + recipient keys
    <CC>/officer.key, .cert    one liaison officer
    <CC>/revocations.txt       the nation's signed revocation list
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from .protocol.armor import armor, dearmor
from .protocol.certs import Certificate
from .protocol.errors import DecodeError, IntelhubError, KeyFileError
from .protocol.federation import Federation
from .protocol.keys import EXAMPLE_MARKER, PrivateKeys, parse_private_keys
from .protocol.roster import RevocationList, Roster
from .protocol.trust import Trust

PASSPHRASE_ENV: Final[str] = "INTELHUB_PASSPHRASE"
EXAMPLE_COMMENTS: Final = (
    f"{EXAMPLE_MARKER} - a published example key. It protects nothing: never use it for real intelligence.",
    "Regenerate: intelhub keys federation create --example --out keys/example --validity-days 3650 --name intelhub-example",
)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write whole-or-nothing: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_bytes(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what} file ({exc.strerror})") from None


def passphrase_from_env_or_prompt(prompt: str, *, interactive: bool = True) -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    if interactive and sys.stdin.isatty():
        return getpass.getpass(prompt).encode() or None
    return None


def load_private_keys(path: Path | str, passphrase: bytes | None = None) -> PrivateKeys:
    """Load a private key file; encrypted keys take ``passphrase``, else $INTELHUB_PASSPHRASE, else a prompt."""
    raw = read_bytes(path, "key")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a text key file") from None
    if passphrase is None and "ENCRYPTED PRIVATE KEY" in text:
        passphrase = passphrase_from_env_or_prompt(f"Passphrase for {path}: ")
    return parse_private_keys(text, passphrase, str(path))


def save_private_keys(path: Path, keys: PrivateKeys, passphrase: bytes | None, example: bool = False) -> None:
    comments = EXAMPLE_COMMENTS if example else ("intelhub private key - keep secret",)
    write_atomic(path, keys.to_file_text(passphrase, comments), 0o600)


def _parse(kind: str, path: Path | str, parser: Any) -> object:
    data = dearmor(kind, read_bytes(path, kind.lower()), str(path))
    try:
        return parser.parse(data)
    except DecodeError as exc:
        raise KeyFileError(f"{path}: not a valid {kind.lower()} ({exc})") from None


def load_certificate(path: Path | str) -> Certificate:
    return _parse("CERTIFICATE", path, Certificate)  # type: ignore[return-value]


def load_roster(path: Path | str) -> Roster:
    roster: Roster = _parse("ROSTER", path, Roster)  # type: ignore[assignment]
    try:
        return roster.verify()
    except IntelhubError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def load_revocations(path: Path | str) -> RevocationList:
    return _parse("REVOCATIONS", path, RevocationList)  # type: ignore[return-value]


def load_trust(roster: Path | str, certs: Iterable[Path | str] = (), revocations: Iterable[Path | str] = ()) -> Trust:
    trust = Trust(load_roster(roster))
    for p in certs:
        cert = load_certificate(p)  # its errors name the file already
        try:
            trust.add_certificate(cert.raw)
        except IntelhubError as exc:
            raise KeyFileError(f"{p}: {exc}") from None
    for p in revocations:
        rl = load_revocations(p)
        try:
            trust.add_revocations(rl.raw)
        except IntelhubError as exc:
            raise KeyFileError(f"{p}: {exc}") from None
    return trust


def load_trust_dir(directory: Path | str, roster: Path | str | None = None) -> Trust:
    """Everything public in a federation directory: the roster, every cert, every revocation list."""
    d = Path(directory)
    certs = sorted(d.glob("*/*.cert")) + sorted(d.glob("certs/*.cert"))
    revs = sorted(d.glob("*/revocations.txt"))
    return load_trust(roster or d / "roster.txt", certs, revs)


def write_federation(fed: Federation, out: Path, passphrase: bytes | None, example: bool = False) -> list[Path]:
    """Write every file of a new federation; refuses to overwrite an existing one."""
    if (out / "roster.txt").exists():
        raise KeyFileError(f"{out}: already holds a federation (roster.txt exists); choose an empty directory")
    comments = EXAMPLE_COMMENTS if example else ()
    written: list[Path] = []

    def put(rel: str, data: bytes | str, mode: int = 0o644) -> None:
        write_atomic(out / rel, data, mode)
        written.append(out / rel)

    def put_key(rel: str, keys: PrivateKeys) -> None:
        save_private_keys(out / rel, keys, passphrase, example)
        written.append(out / rel)

    put_key("hub/hub.key", PrivateKeys(signing=fed.hub_key))
    for code, m in fed.members.items():
        put_key(f"{code}/root.key", PrivateKeys(signing=m.root))
        put_key(f"{code}/node.key", PrivateKeys(signing=m.node_signing, kem=m.node_kem))
        put_key(f"{code}/officer.key", PrivateKeys(signing=m.officer))
        put(f"{code}/node.cert", armor("CERTIFICATE", m.node_cert.raw, comments + (f"{m.node_cert.name} node",)))
        put(f"{code}/officer.cert", armor("CERTIFICATE", m.officer_cert.raw, comments + (f"{m.officer_cert.name} officer",)))
        put(f"{code}/revocations.txt", armor("REVOCATIONS", m.revocations.raw, comments))
    # The roster last: its presence marks a complete federation directory.
    put("roster.txt", armor("ROSTER", fed.roster.raw, comments + (f"federation {fed.name}",)))
    return written
