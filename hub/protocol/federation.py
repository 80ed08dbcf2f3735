"""Create a whole federation in memory: roots, the hub key, node and officer certificates, roster.

Used by ``intelhub keys federation create`` (real keys, from the OS RNG) and by tests
and golden vectors (deterministic keys from a seed). Writing files is
:mod:`hub.keyfiles`' job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from .certs import Certificate, issue_certificate
from .keys import KemKey, SigningKey
from .roster import Revocation, RevocationList, Roster, roster_tbs, sign_roster, sign_revocations
from .suites import DEFAULT_SUITE
from .trust import Trust

G7: Final[dict[str, str]] = {
    "CA": "Canada", "DE": "Germany", "FR": "France", "GB": "United Kingdom",
    "IT": "Italy", "JP": "Japan", "US": "United States",
}
YEAR: Final[int] = 365 * 86400


@dataclass
class Member:
    code: str
    name: str
    root: SigningKey
    node_signing: SigningKey
    node_kem: KemKey
    node_cert: Certificate
    officer: SigningKey
    officer_cert: Certificate
    revocations: RevocationList
    next_serial: int = 3


@dataclass
class Federation:
    name: str
    roster: Roster
    hub_name: str
    hub_key: SigningKey
    members: dict[str, Member]
    extra_certs: list[Certificate] = field(default_factory=list)

    def trust(self) -> Trust:
        t = Trust(self.roster)
        for m in self.members.values():
            t.add_certificate(m.node_cert.raw)
            t.add_certificate(m.officer_cert.raw)
            t.add_revocations(m.revocations.raw)
        for c in self.extra_certs:
            t.add_certificate(c.raw)
        return t

    def revoke(self, code: str, cert: Certificate, at: int, reason: str = "key_compromise") -> RevocationList:
        m = self.members[code]
        entries = list(m.revocations.entries.values()) + [Revocation(cert.fp, at, reason)]
        m.revocations = sign_revocations(
            m.root, nation=code, serial=m.revocations.serial + 1, issued=at, entries=entries
        )
        return m.revocations

    def issue(self, code: str, *, subject: str, role: str, signing: SigningKey, kem: KemKey | None,
              not_before: int, not_after: int) -> Certificate:
        m = self.members[code]
        cert = issue_certificate(
            m.root, nation=code, subject=subject, role=role, signing=signing.public(),
            kem=kem.public() if kem else None, serial=m.next_serial, not_before=not_before, not_after=not_after,
        )
        m.next_serial += 1
        self.extra_certs.append(cert)
        return cert


def _keys(seed: bytes | None, label: str) -> tuple[SigningKey, KemKey]:
    if seed is None:
        return SigningKey.generate(), KemKey.generate()
    s = hashlib.sha256(seed + b"/" + label.encode()).digest()
    return SigningKey.from_seed(s), KemKey.from_seed(s)


def create_federation(
    nations: dict[str, str],
    *,
    now: int,
    name: str = "intelhub",
    hub_name: str = "hub",
    validity: int = 2 * YEAR,
    suites: tuple[str, ...] = (DEFAULT_SUITE.id,),
    seed: bytes | None = None,
) -> Federation:
    """A complete federation; ``seed`` makes every key deterministic (tests and vectors only)."""
    hub_key, _ = _keys(seed, "hub")
    members: dict[str, Member] = {}
    roots: dict[str, SigningKey] = {}
    for code, title in sorted(nations.items()):
        root, _ = _keys(seed, f"{code}/root")
        roots[code] = root
        node_signing, node_kem = _keys(seed, f"{code}/node")
        officer, _ = _keys(seed, f"{code}/officer")
        sub = code.lower()
        node_cert = issue_certificate(
            root, nation=code, subject=f"{sub}-node", role="node", signing=node_signing.public(),
            kem=node_kem.public(), serial=1, not_before=now - 3600, not_after=now + validity,
        )
        officer_cert = issue_certificate(
            root, nation=code, subject=f"{sub}-officer", role="officer", signing=officer.public(),
            serial=2, not_before=now - 3600, not_after=now + validity,
        )
        revs = sign_revocations(root, nation=code, serial=0, issued=now, entries=[])
        members[code] = Member(code, title, root, node_signing, node_kem, node_cert, officer, officer_cert, revs)
    tbs = roster_tbs(
        federation=name, serial=1, issued=now,
        nations=[(c, m.name, roots[c].public()) for c, m in members.items()],
        hub_name=hub_name, hub_key=hub_key.public(), suites=list(suites),
    )
    roster = Roster.parse(sign_roster(tbs, roots)).verify()
    return Federation(name, roster, hub_name, hub_key, members)
