"""What a verifier trusts: a verified roster, the certificates its roots signed, revocations.

A :class:`Trust` is also the key directory: it answers "which key encrypts to FR"
and "is certificate X good for a packet of nation Y signed at time T". Validity is
judged at the time of signing (docs/protocol.md §4.5), so evidence checked years
later still verifies, while a revoked or superseded key cannot sign anything new.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .certs import Certificate
from .errors import InvalidPacket, UntrustedSigner
from .keys import signing_input
from .roster import Roster, RevocationList

_SIGNING_ROLES: Final = frozenset({"node", "officer"})


class Trust:
    def __init__(self, roster: Roster) -> None:
        self.roster = roster.verify()
        self.certs: dict[bytes, Certificate] = {}
        self.revocations: dict[str, RevocationList] = {}
        self._superseded: dict[bytes, int] | None = None

    # -- adding material -------------------------------------------------

    def add_certificate(self, raw: bytes) -> Certificate:
        """Parse and check a certificate against its nation's root; cached by fingerprint."""
        cert = Certificate.parse(raw)
        known = self.certs.get(cert.fp)
        if known is not None:
            return known
        nation = self.roster.nations.get(cert.nation)
        if nation is None:
            raise UntrustedSigner(f"certificate {cert.name} is from {cert.nation}, which is not in the roster")
        if cert.issuer != nation.root.key_id:
            raise UntrustedSigner(f"certificate {cert.name} names an issuer that is not {cert.nation}'s root key")
        try:
            nation.root.verify(signing_input("cert", cert.tbs), cert.sig)
        except InvalidPacket:
            raise UntrustedSigner(f"certificate {cert.name} is not signed by {cert.nation}'s root key") from None
        self.certs[cert.fp] = cert
        self._superseded = None
        return cert

    def forget_certificate(self, fp: bytes) -> None:
        """Undo :meth:`add_certificate` (the hub could not store it: it is learnt again next time)."""
        if self.certs.pop(fp, None) is not None:
            self._superseded = None

    def add_certificates(self, raws: Iterable[bytes]) -> None:
        for raw in raws:
            self.add_certificate(raw)

    def add_revocations(self, raw: bytes) -> RevocationList:
        """Install a nation's revocation list; an older serial never replaces a newer one."""
        rl = RevocationList.parse(raw).verify(self.roster)
        current = self.revocations.get(rl.nation)
        if current is None or rl.serial > current.serial:
            self.revocations[rl.nation] = rl
            return rl
        return current

    # -- questions ---------------------------------------------------------

    def revoked_at(self, cert: Certificate) -> int | None:
        rl = self.revocations.get(cert.nation)
        entry = rl.entries.get(cert.fp) if rl else None
        return entry.at if entry else None

    def superseded_at(self, cert: Certificate) -> int | None:
        """When a newer certificate (higher serial) for the same subject and role took over."""
        if self._superseded is None:
            # Recomputed only when a certificate is added: verification is a hot path.
            table: dict[bytes, int] = {}
            for old in self.certs.values():
                times = [
                    c.not_before for c in self.certs.values()
                    if (c.nation, c.subject, c.role) == (old.nation, old.subject, old.role) and c.serial > old.serial
                ]
                if times:
                    table[old.fp] = min(times)
            self._superseded = table
        return self._superseded.get(cert.fp)

    def usable_at(self, cert: Certificate, t: int) -> str | None:
        """None if ``cert`` may sign at time ``t``; otherwise why not."""
        if t < cert.not_before:
            return f"certificate {cert.name} is not valid until {cert.not_before}"
        if t > cert.not_after:
            return f"certificate {cert.name} expired at {cert.not_after}"
        revoked = self.revoked_at(cert)
        if revoked is not None and t >= revoked:
            return f"certificate {cert.name} was revoked at {revoked}"
        superseded = self.superseded_at(cert)
        if superseded is not None and t >= superseded:
            return f"certificate {cert.name} was superseded at {superseded}"
        return None

    def signer(self, fp: bytes, nation: str, t: int, roles: frozenset[str] = _SIGNING_ROLES) -> Certificate:
        """The certificate ``fp``, if it may sign for ``nation`` at ``t``; else :class:`UntrustedSigner`."""
        cert = self.certs.get(fp)
        if cert is None:
            raise UntrustedSigner(f"unknown certificate {fp.hex()[:16]} (fetch it from the key directory)")
        if cert.nation != nation:
            raise UntrustedSigner(f"certificate {cert.name} cannot sign for {nation}")
        if cert.role not in roles:
            raise UntrustedSigner(f"certificate {cert.name} has role {cert.role}, not one of {', '.join(sorted(roles))}")
        why = self.usable_at(cert, t)
        if why:
            raise UntrustedSigner(why)
        return cert

    def recipient(self, nation: str, t: int) -> Certificate:
        """The newest node certificate of ``nation`` usable at ``t``: the key packets are wrapped to."""
        if nation not in self.roster.nations:
            raise UntrustedSigner(f"{nation} is not a member of the federation")
        best: Certificate | None = None
        for cert in self.certs.values():
            if cert.nation == nation and cert.kem is not None and self.usable_at(cert, t) is None:
                if best is None or cert.serial > best.serial:
                    best = cert
        if best is None:
            raise UntrustedSigner(f"no usable node certificate for {nation} (add its node.cert to the key directory)")
        return best
