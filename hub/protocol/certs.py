"""Certificates: a nation's root key vouching for a node or officer key (docs/protocol.md §4.2).

A certificate is ``{"sig": <root signature>, "tbs": <canonical bytes>}``; the root
signs ``signing_input("cert", tbs)`` with both halves. Its fingerprint is
SHA-256(tbs). Parsing here checks structure only; :mod:`hub.protocol.trust`
checks who signed it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Final

from . import codec
from .errors import DecodeError, ValidationError
from .keys import KemPublicKey, SigningKey, SigningPublicKey, fingerprint, signing_input

ROLES: Final = ("node", "officer")
MAX_CERT_SIZE: Final[int] = 16 * 1024
NATION_RE: Final = re.compile(r"[A-Z]{2}")
#: Every string NATION_RE matches, for hot paths (each header names up to 64 nations): a set lookup.
NATION_CODES: Final = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
SUBJECT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")

_TBS_FIELDS: Final = {"v", "kind", "serial", "nation", "subject", "role", "sign", "not_before", "not_after", "issuer"}


def check_nation(value: object, path: str) -> str:
    if type(value) is not str or not NATION_RE.fullmatch(value):
        raise ValidationError(path, f"{value!r} is not a nation code (two capital letters, e.g. FR)")
    return value


def check_time(value: object, path: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 40:
        raise ValidationError(path, "must be a time in whole seconds since 1970")
    return value


@dataclass(frozen=True)
class Certificate:
    raw: bytes
    tbs: bytes
    sig: dict[str, bytes]
    fp: bytes
    serial: int
    nation: str
    subject: str
    role: str
    signing: SigningPublicKey
    kem: KemPublicKey | None
    not_before: int
    not_after: int
    issuer: bytes

    @property
    def name(self) -> str:
        return f"{self.nation}/{self.subject}"

    def valid_at(self, t: int) -> bool:
        return self.not_before <= t <= self.not_after

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fp.hex(),
            "nation": self.nation,
            "subject": self.subject,
            "role": self.role,
            "serial": self.serial,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "issuer": self.issuer.hex(),
            "signing_key_id": self.signing.key_id.hex(),
            "can_receive": self.kem is not None,
        }

    @classmethod
    def parse(cls, raw: bytes) -> Certificate:
        try:
            outer = codec.decode(raw, max_size=MAX_CERT_SIZE)
            if type(outer) is not dict or set(outer) != {"sig", "tbs"} or type(outer["tbs"]) is not bytes:
                raise ValidationError("certificate", "must be a map of exactly 'sig' and 'tbs' (bytes)")
            tbs = outer["tbs"]
            d = codec.decode(tbs, max_size=MAX_CERT_SIZE)
            if type(d) is not dict:
                raise ValidationError("certificate.tbs", "must be a map")
            role = d.get("role")
            want = _TBS_FIELDS | ({"kem"} if role == "node" else set())
            if set(d) != want:
                extra, missing = sorted(set(d) - want), sorted(want - set(d))
                raise ValidationError("certificate.tbs", f"unknown field {extra[0]!r}" if extra else f"missing field {missing[0]!r}")
            if type(d["v"]) is not int or d["v"] != 1 or d["kind"] != "cert":
                raise ValidationError("certificate.tbs", "not a version 1 certificate")
            if role not in ROLES:
                raise ValidationError("certificate.tbs.role", f"{role!r} is not one of {', '.join(ROLES)}")
            if type(d["subject"]) is not str or not SUBJECT_RE.fullmatch(d["subject"]):
                raise ValidationError("certificate.tbs.subject", "must be 1-64 of a-z 0-9 . _ @ -")
            if type(d["serial"]) is not int or d["serial"] < 0:
                raise ValidationError("certificate.tbs.serial", "must be a non-negative integer")
            if type(d["issuer"]) is not bytes or len(d["issuer"]) != 32:
                raise ValidationError("certificate.tbs.issuer", "must be 32 bytes")
            if type(outer["sig"]) is not dict:
                raise ValidationError("certificate.sig", "must be a map")
            signing = SigningPublicKey.from_wire(d["sign"], "certificate.tbs.sign")
            kem = KemPublicKey.from_wire(d["kem"], "certificate.tbs.kem") if role == "node" else None
            if kem is not None:
                # One key, one job: a recipient key must never equal a signing key or the other suite's key.
                x_hy = kem.hybrid[1184:]
                if len({x_hy, kem.classic, signing.ed25519}) != 3:
                    raise ValidationError("certificate.tbs.kem", "reuses a key: signing and each HPKE suite need distinct keys")
            nb, na = check_time(d["not_before"], "certificate.tbs.not_before"), check_time(d["not_after"], "certificate.tbs.not_after")
            if na <= nb:
                raise ValidationError("certificate.tbs.not_after", "must be after not_before")
            nation = check_nation(d["nation"], "certificate.tbs.nation")
        except ValidationError as exc:
            raise DecodeError(str(exc)) from None
        return cls(
            raw, tbs, outer["sig"], fingerprint(tbs), d["serial"], nation,
            d["subject"], role, signing, kem, nb, na, d["issuer"],
        )


def issue_certificate(
    root: SigningKey,
    *,
    nation: str,
    subject: str,
    role: str,
    signing: SigningPublicKey,
    kem: KemPublicKey | None = None,
    serial: int,
    not_before: int,
    not_after: int,
) -> Certificate:
    """Sign a certificate with a nation's root key; the result is parsed back, so it is valid."""
    tbs_map: dict[str, Any] = {
        "v": 1,
        "kind": "cert",
        "serial": serial,
        "nation": nation,
        "subject": subject,
        "role": role,
        "sign": signing.to_wire(),
        "not_before": not_before,
        "not_after": not_after,
        "issuer": root.public().key_id,
    }
    if kem is not None:
        tbs_map["kem"] = kem.to_wire()
    tbs = codec.encode(tbs_map)
    raw = codec.encode({"tbs": tbs, "sig": root.sign(signing_input("cert", tbs))})
    return Certificate.parse(raw)
