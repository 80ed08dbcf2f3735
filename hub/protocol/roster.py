"""The roster and revocation lists (docs/protocol.md §4.3, §4.4).

The roster names every nation and its root key, the hub's key and the allowed
suites; it is valid only when every listed nation's root has signed it. A
revocation list is signed by one nation's root; a newer serial supersedes older.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from . import codec
from .certs import SUBJECT_RE, check_nation, check_time
from .errors import DecodeError, InvalidPacket, UntrustedSigner, ValidationError
from .keys import SigningKey, SigningPublicKey, fingerprint, signing_input
from .suites import SUITES

MAX_ROSTER_SIZE: Final[int] = 256 * 1024
MAX_REVOCATIONS_SIZE: Final[int] = 1 << 20
MAX_NATIONS: Final[int] = 64
REVOCATION_REASONS: Final = ("key_compromise", "superseded", "cessation", "unspecified")


def _fields(d: object, want: set[str], path: str) -> dict[str, Any]:
    if type(d) is not dict:
        raise ValidationError(path, "must be a map")
    if set(d) != want:
        extra, missing = sorted(set(d) - want), sorted(want - set(d))
        raise ValidationError(path, f"unknown field {extra[0]!r}" if extra else f"missing field {missing[0]!r}")
    return d


@dataclass(frozen=True)
class Nation:
    code: str
    name: str
    root: SigningPublicKey


@dataclass(frozen=True)
class Roster:
    raw: bytes
    tbs: bytes
    sigs: dict[str, dict[str, bytes]]
    fp: bytes
    federation: str
    serial: int
    issued: int
    nations: dict[str, Nation]
    hub_name: str
    hub_key: SigningPublicKey
    suites: tuple[str, ...]

    @classmethod
    def parse(cls, raw: bytes) -> Roster:
        """Structure only; call :meth:`verify` before trusting it."""
        try:
            outer = _fields(codec.decode(raw, max_size=MAX_ROSTER_SIZE), {"sigs", "tbs"}, "roster")
            if type(outer["tbs"]) is not bytes or type(outer["sigs"]) is not dict:
                raise ValidationError("roster", "tbs must be bytes and sigs a map")
            d = _fields(
                codec.decode(outer["tbs"], max_size=MAX_ROSTER_SIZE),
                {"v", "kind", "federation", "serial", "issued", "nations", "hub", "suites"},
                "roster.tbs",
            )
            if type(d["v"]) is not int or d["v"] != 1 or d["kind"] != "roster":
                raise ValidationError("roster.tbs", "not a version 1 roster")
            if type(d["federation"]) is not str or not 0 < len(d["federation"]) <= 128:
                raise ValidationError("roster.tbs.federation", "must be a name of 1-128 characters")
            if type(d["serial"]) is not int or d["serial"] < 0:
                raise ValidationError("roster.tbs.serial", "must be a non-negative integer")
            if type(d["nations"]) is not list or not 0 < len(d["nations"]) <= MAX_NATIONS:
                raise ValidationError("roster.tbs.nations", f"must list 1-{MAX_NATIONS} nations")
            nations: dict[str, Nation] = {}
            for i, n in enumerate(d["nations"]):
                p = f"roster.tbs.nations[{i}]"
                n = _fields(n, {"code", "name", "root"}, p)
                code = check_nation(n["code"], p + ".code")
                if code in nations or (nations and code < max(nations)):
                    raise ValidationError(p + ".code", "nations must be unique and sorted by code")
                if type(n["name"]) is not str or not n["name"]:
                    raise ValidationError(p + ".name", "must be a non-empty string")
                nations[code] = Nation(code, n["name"], SigningPublicKey.from_wire(n["root"], p + ".root"))
            hub = _fields(d["hub"], {"name", "key"}, "roster.tbs.hub")
            if type(hub["name"]) is not str or not SUBJECT_RE.fullmatch(hub["name"]):
                raise ValidationError("roster.tbs.hub.name", "must be 1-64 of a-z 0-9 . _ @ -")
            suites = d["suites"]
            if type(suites) is not list or not suites or any(type(s) is not str or s not in SUITES for s in suites) \
                    or len(set(suites)) != len(suites):
                raise ValidationError("roster.tbs.suites", f"must be a non-empty list of distinct suites from {', '.join(SUITES)}")
            return cls(
                raw, outer["tbs"], outer["sigs"], fingerprint(outer["tbs"]), d["federation"], d["serial"],
                check_time(d["issued"], "roster.tbs.issued"), nations, hub["name"],
                SigningPublicKey.from_wire(hub["key"], "roster.tbs.hub.key"), tuple(suites),
            )
        except ValidationError as exc:
            raise DecodeError(str(exc)) from None

    def verify(self) -> Roster:
        """Every nation's root must have signed; raise :class:`UntrustedSigner` naming who did not."""
        if set(self.sigs) != set(self.nations):
            missing = sorted(set(self.nations) - set(self.sigs)) or sorted(set(self.sigs) - set(self.nations))
            raise UntrustedSigner(f"roster signatures do not match its nations (check {', '.join(missing)})")
        msg = signing_input("roster", self.tbs)
        for code, nation in self.nations.items():
            try:
                nation.root.verify(msg, self.sigs[code])
            except InvalidPacket:
                raise UntrustedSigner(f"roster signature of {code} does not verify") from None
        return self

    def root_key_id(self, nation: str) -> bytes:
        return self.nations[nation].root.key_id


def roster_tbs(
    *, federation: str, serial: int, issued: int, nations: list[tuple[str, str, SigningPublicKey]],
    hub_name: str, hub_key: SigningPublicKey, suites: list[str],
) -> bytes:
    return codec.encode({
        "v": 1, "kind": "roster", "federation": federation, "serial": serial, "issued": issued,
        "nations": [{"code": c, "name": n, "root": k.to_wire()} for c, n, k in sorted(nations, key=lambda x: x[0])],
        "hub": {"name": hub_name, "key": hub_key.to_wire()},
        "suites": suites,
    })


def sign_roster(tbs: bytes, signers: dict[str, SigningKey], existing: dict[str, dict[str, bytes]] | None = None) -> bytes:
    """Add nations' root signatures to a roster body (each nation may sign separately)."""
    sigs = dict(existing or {})
    for code, key in signers.items():
        sigs[code] = key.sign(signing_input("roster", tbs))
    return codec.encode({"tbs": tbs, "sigs": sigs})


@dataclass(frozen=True)
class Revocation:
    cert: bytes
    at: int
    reason: str


@dataclass(frozen=True)
class RevocationList:
    raw: bytes
    tbs: bytes
    sig: dict[str, bytes]
    nation: str
    serial: int
    issued: int
    entries: dict[bytes, Revocation]

    @classmethod
    def parse(cls, raw: bytes) -> RevocationList:
        try:
            outer = _fields(codec.decode(raw, max_size=MAX_REVOCATIONS_SIZE), {"sig", "tbs"}, "revocations")
            if type(outer["tbs"]) is not bytes or type(outer["sig"]) is not dict:
                raise ValidationError("revocations", "tbs must be bytes and sig a map")
            d = _fields(
                codec.decode(outer["tbs"], max_size=MAX_REVOCATIONS_SIZE),
                {"v", "kind", "nation", "serial", "issued", "revoked"}, "revocations.tbs",
            )
            if type(d["v"]) is not int or d["v"] != 1 or d["kind"] != "revocations":
                raise ValidationError("revocations.tbs", "not a version 1 revocation list")
            if type(d["serial"]) is not int or d["serial"] < 0:
                raise ValidationError("revocations.tbs.serial", "must be a non-negative integer")
            if type(d["revoked"]) is not list:
                raise ValidationError("revocations.tbs.revoked", "must be a list")
            entries: dict[bytes, Revocation] = {}
            for i, e in enumerate(d["revoked"]):
                p = f"revocations.tbs.revoked[{i}]"
                e = _fields(e, {"cert", "at", "reason"}, p)
                if type(e["cert"]) is not bytes or len(e["cert"]) != 32 or e["cert"] in entries:
                    raise ValidationError(p + ".cert", "must be a distinct 32-byte certificate fingerprint")
                if e["reason"] not in REVOCATION_REASONS:
                    raise ValidationError(p + ".reason", f"must be one of {', '.join(REVOCATION_REASONS)}")
                entries[e["cert"]] = Revocation(e["cert"], check_time(e["at"], p + ".at"), e["reason"])
            return cls(
                raw, outer["tbs"], outer["sig"], check_nation(d["nation"], "revocations.tbs.nation"),
                d["serial"], check_time(d["issued"], "revocations.tbs.issued"), entries,
            )
        except ValidationError as exc:
            raise DecodeError(str(exc)) from None

    def verify(self, roster: Roster) -> RevocationList:
        nation = roster.nations.get(self.nation)
        if nation is None:
            raise UntrustedSigner(f"revocation list from {self.nation}, which is not in the roster")
        try:
            nation.root.verify(signing_input("revocations", self.tbs), self.sig)
        except InvalidPacket:
            raise UntrustedSigner(f"revocation list of {self.nation} is not signed by its root key") from None
        return self


def sign_revocations(
    root: SigningKey, *, nation: str, serial: int, issued: int, entries: list[Revocation]
) -> RevocationList:
    tbs = codec.encode({
        "v": 1, "kind": "revocations", "nation": nation, "serial": serial, "issued": issued,
        "revoked": [{"cert": e.cert, "at": e.at, "reason": e.reason} for e in entries],
    })
    return RevocationList.parse(codec.encode({"tbs": tbs, "sig": root.sign(signing_input("revocations", tbs))}))
