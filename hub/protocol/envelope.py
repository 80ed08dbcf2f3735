"""The packet envelope: seal, verify, open (docs/protocol.md §5).

``seal`` encrypts content once under a fresh AES-256-GCM key, wraps that key to
each recipient nation with HPKE, and signs the header. ``verify`` checks a packet
from public material only (what the hub and auditors do); ``open`` verifies, then
decrypts for one recipient. Every signature/decryption failure is the one opaque
:class:`InvalidPacket`; bad structure is :class:`DecodeError`; an unusable signer
certificate is :class:`UntrustedSigner`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Final, NamedTuple

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import codec
from .certs import NATION_CODES, Certificate
from .content import validate_content
from .errors import DecodeError, FutureSkew, InvalidPacket, UntrustedSigner, ValidationError
from .keys import KemKey, SigningKey, signing_input
from .suites import CONTENT_KEY_LEN, DEFAULT_SUITE, SUITES, WRAPPED_KEY_OVERHEAD, Suite, get_suite
from .trust import Trust

VERSION: Final[int] = 1
MAX_PACKET_SIZE: Final[int] = 1 << 20
MAX_RECIPIENTS: Final[int] = 64
MAX_TOPIC_LEN: Final[int] = 128
MAX_LIFETIME: Final[int] = 366 * 86400
DEFAULT_LIFETIME: Final[int] = 90 * 86400
#: How far in the future a ``created`` time may be, for any verifier.
MAX_FUTURE_SKEW: Final[int] = 300
TOPIC_RE: Final = re.compile(r"[a-z0-9_-]{1,32}(\.[a-z0-9_-]{1,32}){0,7}")
#: Content keys are used exactly once, so a fixed nonce is safe (as in age).
_NONCE: Final[bytes] = bytes(12)

# Each map's fields in canonical (sorted) order: the strict parse compares key lists with these,
# which checks the field set and the canonical order in one step (see codec.decode's ``tree``).
_PACKET_FIELDS: Final = sorted(["v", "header", "sig", "ct", "keys"])
_HEADER_FIELDS: Final = sorted(["v", "suite", "id", "sender", "to", "topic", "created", "expires", "ct", "commit"])
_SENDER_FIELDS: Final = ["cert", "nation"]
_RECIPIENT_FIELDS: Final = ["key", "nation", "wrap"]
#: Builds a Recipient without NamedTuple's Python-level __new__ (seven per header).
_new_tuple: Final = tuple.__new__


class Recipient(NamedTuple):
    nation: str
    #: Fingerprint of the recipient's node certificate whose HPKE key was used.
    key: bytes
    #: SHA-256 of the wrapped key addressed to this recipient.
    wrap: bytes


@dataclass(frozen=True, init=False)
class Header:
    """The routing header: everything the hub may read, all of it signed."""

    raw: bytes
    suite: Suite
    id: bytes
    sender: str
    sender_cert: bytes
    to: tuple[Recipient, ...]
    topic: str
    created: int
    expires: int
    ct_digest: bytes
    commit: bytes

    def __init__(self, raw: bytes, suite: Suite, id: bytes, sender: str, sender_cert: bytes,  # noqa: A002
                 to: tuple[Recipient, ...], topic: str, created: int, expires: int, ct_digest: bytes,
                 commit: bytes) -> None:
        # Still frozen, but filled without the frozen class's setattr call per field: every
        # packet the hub and the nodes receive builds one (a third of the cost).
        self.__dict__.update(raw=raw, suite=suite, id=id, sender=sender, sender_cert=sender_cert, to=to,
                             topic=topic, created=created, expires=expires, ct_digest=ct_digest, commit=commit)

    @cached_property  # the hub reads these several times per packet
    def packet_id(self) -> str:
        return packet_id_text(self.id)

    @cached_property
    def nations(self) -> tuple[str, ...]:
        return tuple(r.nation for r in self.to)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "suite": self.suite.id,
            "id": self.packet_id,
            "sender": {"nation": self.sender, "cert": self.sender_cert.hex()},
            "to": [{"nation": r.nation, "key": r.key.hex(), "wrap": r.wrap.hex()} for r in self.to],
            "topic": self.topic,
            "created": self.created,
            "expires": self.expires,
            "ct": self.ct_digest.hex(),
            "commit": self.commit.hex(),
        }


@dataclass(frozen=True, init=False)
class Packet:
    """A structurally valid packet; nothing about it is trusted yet."""

    raw: bytes
    header: Header
    sig: dict[str, bytes]
    ct: bytes
    keys: tuple[bytes, ...]

    def __init__(self, raw: bytes, header: Header, sig: dict[str, bytes], ct: bytes, keys: tuple[bytes, ...]) -> None:
        self.__dict__.update(raw=raw, header=header, sig=sig, ct=ct, keys=keys)  # as Header's


@dataclass(frozen=True, init=False)
class Verified:
    packet: Packet
    signer: Certificate

    def __init__(self, packet: Packet, signer: Certificate) -> None:
        self.__dict__.update(packet=packet, signer=signer)  # as Header's

    @property
    def header(self) -> Header:
        return self.packet.header


@dataclass(frozen=True, init=False)
class Opened:
    header: Header
    signer: Certificate
    content: dict[str, Any]
    #: The salt and canonical content bytes: shown to an auditor, they prove what was signed.
    salt: bytes
    content_bytes: bytes

    def __init__(self, header: Header, signer: Certificate, content: dict[str, Any], salt: bytes,
                 content_bytes: bytes) -> None:
        self.__dict__.update(header=header, signer=signer, content=content, salt=salt,
                             content_bytes=content_bytes)  # as Header's


def packet_id_text(pid: bytes) -> str:
    """``str(uuid.UUID(bytes=pid))`` (lowercase 8-4-4-4-12) without building a UUID: once per packet."""
    h = pid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_packet_id(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except (ValueError, AttributeError, TypeError):
        raise ValidationError("id", f"{text!r} is not a packet id (a UUID like 0193a1b2-...)") from None


_last_ms = 0
_counter = 0


def new_packet_id(now_ms: int) -> bytes:
    """A UUIDv7 (RFC 9562), strictly increasing within a process (§6.2 method 1, 12-bit counter).

    Time-ordered ids let stores order a record's versions that were signed in the same second.
    """
    global _last_ms, _counter
    if now_ms > _last_ms:
        _last_ms, _counter = now_ms, int.from_bytes(os.urandom(2), "big") & 0x7FF
    else:
        _counter += 1
        if _counter > 0xFFF:
            _last_ms, _counter = _last_ms + 1, 0
    b = bytearray(_last_ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (_counter >> 8)
    b[7] = _counter & 0xFF
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def _id_ms(now: int) -> int:
    # Seconds are the signed clock; the milliseconds come from the wall clock when ``now`` is the
    # present (so ids sealed by separate processes in one second still sort by sealing time).
    wall = time.time()
    return int(wall * 1000) if abs(wall - now) < 1.0 and int(wall) == now else now * 1000


def commitment(salt: bytes, content_bytes: bytes) -> bytes:
    h = hashlib.sha256(_COMMIT_PREFIX)  # = SHA-256(signing_input("commit", salt || content)), without the copies
    h.update(salt)
    h.update(content_bytes)
    return h.digest()


_COMMIT_PREFIX: Final = signing_input("commit", b"")


def _aad(h: dict[str, Any]) -> bytes:
    """The routing fields, bound into the content AEAD (docs/protocol.md §5.4)."""
    return codec.encode({
        "v": h["v"], "suite": h["suite"], "id": h["id"], "sender": h["sender"],
        "to": [r["nation"] for r in h["to"]], "topic": h["topic"],
        "created": h["created"], "expires": h["expires"],
    })


def _aad_of(h: Header) -> bytes:
    """:func:`_aad` of a parsed header. Its fields were checked by the strict decoder, so they are
    packed directly, keys in canonical order (the vectors and tests hold the two equal)."""
    return codec.pack_as_is({
        "created": h.created, "expires": h.expires, "id": h.id,
        "sender": {"cert": h.sender_cert, "nation": h.sender}, "suite": h.suite.id,
        "to": [r.nation for r in h.to], "topic": h.topic, "v": VERSION,
    })


def _info(suite: str, packet_id: bytes, sender: dict[str, Any], nation: str, key: bytes) -> bytes:
    """HPKE ``info``: binds the wrapped key to this packet, sender and recipient (§5.5)."""
    # Keys in canonical order and values of canonical types, so packed directly (as codec.encode would).
    return _WRAP_PREFIX + codec.pack_as_is({
        "id": packet_id, "recipient": {"key": key, "nation": nation},
        "sender": {"cert": sender["cert"], "nation": sender["nation"]}, "suite": suite,
    })


_WRAP_PREFIX: Final = signing_input("wrap", b"")  # signing_input("wrap", body) is this + body


def _bytes32(v: object, path: str) -> bytes:
    if type(v) is not bytes or len(v) != 32:
        raise DecodeError(f"{path}: must be 32 bytes")
    return v


def _parse_header(raw: bytes) -> Header:
    # The hub runs this for every packet: checks are inlined rather than helper calls.
    # Every map's key order and every value's type are checked below: a closed schema.
    h = codec.decode(raw, max_size=MAX_PACKET_SIZE, max_items=MAX_RECIPIENTS + 16, tree=False)
    if type(h) is not dict or list(h) != _HEADER_FIELDS:
        raise _fields_error("header", h, _HEADER_FIELDS)
    if type(h["v"]) is not int or h["v"] != VERSION:
        raise DecodeError(f"header.v: unsupported version {h['v']!r} (this is v{VERSION})")
    suite = get_suite(h["suite"])
    pid = h["id"]
    if type(pid) is not bytes or len(pid) != 16:
        raise DecodeError("header.id: must be 16 bytes")
    sender = h["sender"]
    if type(sender) is not dict or list(sender) != _SENDER_FIELDS:
        raise DecodeError("header.sender: must be a map of cert and nation, in that order")
    sender_nation = sender["nation"]
    if type(sender_nation) is not str or sender_nation not in NATION_CODES:
        raise DecodeError("header.sender.nation: must be a nation code (two capital letters)")
    to = h["to"]
    if type(to) is not list or not 0 < len(to) <= MAX_RECIPIENTS:
        raise DecodeError(f"header.to: must list 1-{MAX_RECIPIENTS} recipients")
    recipients = []
    prev = ""
    for i, r in enumerate(to):
        if type(r) is not dict or list(r) != _RECIPIENT_FIELDS:
            raise DecodeError(f"header.to[{i}]: must be a map of key, nation and wrap, in that order")
        key, nation, wrap = r.values()  # the order just checked
        if type(nation) is not str or nation not in NATION_CODES:
            raise DecodeError(f"header.to[{i}].nation: must be a nation code (two capital letters)")
        if nation <= prev:
            raise DecodeError(f"header.to[{i}]: recipients must be unique and sorted by nation")
        if type(key) is not bytes or len(key) != 32 or type(wrap) is not bytes or len(wrap) != 32:
            raise DecodeError(f"header.to[{i}]: key and wrap must be 32 bytes")
        prev = nation
        recipients.append(_new_tuple(Recipient, (nation, key, wrap)))
    topic = h["topic"]
    if type(topic) is not str or len(topic) > MAX_TOPIC_LEN or not TOPIC_RE.fullmatch(topic):
        raise DecodeError("header.topic: must be dot-separated words of a-z 0-9 _ - (e.g. alerts.entity.smuggling)")
    created, expires = h["created"], h["expires"]
    if type(created) is not int or type(expires) is not int or not 0 < created < expires <= created + MAX_LIFETIME:
        raise DecodeError(f"header.created/expires: need 0 < created < expires <= created + {MAX_LIFETIME} s")
    return Header(
        raw, suite, pid, sender_nation, _bytes32(sender["cert"], "header.sender.cert"), tuple(recipients),
        topic, created, expires, _bytes32(h["ct"], "header.ct"), _bytes32(h["commit"], "header.commit"),
    )


class HeaderPeek(NamedTuple):
    """The header fields a node needs before the strict parse: the packet id (to skip a packet
    just stored) and what :func:`check_signer` reads. NOT validated, so good only for choosing a
    certificate: whatever is then accepted must rest on a strict parse that agrees (see
    :func:`peek_agrees`)."""

    id: bytes
    suite: Suite
    sender: str
    sender_cert: bytes
    created: int

    @property
    def packet_id(self) -> str:
        return packet_id_text(self.id)


def peek_header(raw: bytes) -> HeaderPeek | None:
    """A fast, permissive read of those fields (two C-level unpacks, no canonical checks), or
    None when they cannot be read that way; the strict parse then says what is wrong."""
    try:
        # The limits parse_packet and _parse_header decode with.
        outer = codec.unpack_loose(raw, max_size=MAX_PACKET_SIZE, max_items=MAX_RECIPIENTS + 8)
        h = codec.unpack_loose(outer["header"], max_size=MAX_PACKET_SIZE, max_items=MAX_RECIPIENTS + 16)
        pid, sender, created = h["id"], h["sender"], h["created"]
        nation, cert = sender["nation"], sender["cert"]
        if type(pid) is not bytes or len(pid) != 16 or type(nation) is not str or type(cert) is not bytes \
                or type(created) is not int:
            return None
        return HeaderPeek(pid, get_suite(h["suite"]), nation, cert, created)
    except Exception:  # noqa: BLE001 - anything at all: the strict parse will name it
        return None


def peek_agrees(peek: HeaderPeek, header: Header) -> bool:
    """Whether a strictly parsed header has the fields a trust decision was taken on from ``peek``."""
    return (peek.id, peek.suite.id, peek.sender, peek.sender_cert, peek.created) == \
        (header.id, header.suite.id, header.sender, header.sender_cert, header.created)


def _fields_error(what: str, m: object, fields: list[str]) -> DecodeError:
    if type(m) is not dict:
        return DecodeError(f"{what}: must be a map")
    extra = sorted(k for k in m if k not in fields) if all(type(k) is str for k in m) else [next(iter(m))]
    if extra:
        return DecodeError(f"{what}: unknown field {extra[0]!r}")
    if len(m) != len(fields):
        return DecodeError(f"{what}: missing fields ({', '.join(f for f in fields if f not in m)})")
    return DecodeError(f"{what}: map keys out of canonical order")


def parse_packet(raw: bytes, *, max_size: int = MAX_PACKET_SIZE) -> Packet:
    """Strictly decode a packet's structure (no cryptography); :class:`DecodeError` if malformed."""
    return _parse_fast(raw, max_size) or _parse_strict(raw, max_size)


# The fast path. msgspec decodes the packet and its header against typed schemas in C (field
# set, types, lengths, counts), and encoding what it decoded must give the input back byte for
# byte: the canonical form (key order, shortest lengths and integers, no duplicate key). A
# packet that passes that and the checks in _parse_fast is one _parse_strict accepts, parsed
# to the same Packet; for anything else, and so for every error message, _parse_strict decides.
# tests/test_fuzz.py (target "packet") holds the two paths equal on mutated packets.
_Bin32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class _WireRecipient(msgspec.Struct, forbid_unknown_fields=True):
    key: _Bin32
    nation: str
    wrap: _Bin32


class _WireSender(msgspec.Struct, forbid_unknown_fields=True):
    cert: _Bin32
    nation: str


class _WireInner(msgspec.Struct, forbid_unknown_fields=True):  # the plaintext (§5.4)
    content: bytes
    salt: _Bin32
    sender: _WireSender


class _WireHeader(msgspec.Struct, forbid_unknown_fields=True):  # fields in canonical order
    commit: _Bin32
    created: int
    ct: _Bin32
    expires: int
    id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    sender: _WireSender
    suite: str
    to: Annotated[list[_WireRecipient], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)]
    topic: Annotated[str, msgspec.Meta(max_length=MAX_TOPIC_LEN)]
    v: int


class _WirePacket(msgspec.Struct, forbid_unknown_fields=True):
    ct: Annotated[bytes, msgspec.Meta(min_length=16)]
    header: bytes
    keys: Annotated[list[bytes], msgspec.Meta(max_length=MAX_RECIPIENTS)]
    sig: Annotated[dict[str, bytes], msgspec.Meta(max_length=MAX_RECIPIENTS + 8)]  # the strict decode's map limit
    v: int


_decode_packet: Final = msgspec.msgpack.Decoder(_WirePacket).decode
_decode_header: Final = msgspec.msgpack.Decoder(_WireHeader).decode
_decode_inner: Final = msgspec.msgpack.Decoder(_WireInner).decode
_encode_wire: Final = msgspec.msgpack.Encoder().encode


def _parse_fast(raw: bytes, max_size: int) -> Packet | None:
    if type(raw) is not bytes or len(raw) > max_size:
        return None
    try:
        p = _decode_packet(raw)
        w = _decode_header(p.header)
    except msgspec.MsgspecError:
        return None
    suite = SUITES.get(w.suite)
    if suite is None or p.v != VERSION or w.v != VERSION or _encode_wire(p) != raw or _encode_wire(w) != p.header:
        return None
    sender = w.sender.nation
    if sender not in NATION_CODES or not TOPIC_RE.fullmatch(w.topic) \
            or not 0 < w.created < w.expires <= w.created + MAX_LIFETIME:
        return None
    recipients = []
    prev = ""
    for r in w.to:
        nation = r.nation
        if nation <= prev or nation not in NATION_CODES:
            return None
        prev = nation
        recipients.append(_new_tuple(Recipient, (nation, r.key, r.wrap)))
    wrapped_len = suite.enc_len + CONTENT_KEY_LEN + WRAPPED_KEY_OVERHEAD
    keys = p.keys
    if len(keys) != len(recipients):
        return None
    for k in keys:
        if len(k) != wrapped_len:
            return None
    prev = ""
    for name in p.sig:
        if name < prev:
            return None
        prev = name
    header = Header(p.header, suite, w.id, sender, w.sender.cert, tuple(recipients), w.topic, w.created, w.expires,
                    w.ct, w.commit)
    return Packet(raw, header, p.sig, p.ct, tuple(keys))


def _parse_strict(raw: bytes, max_size: int) -> Packet:
    """The parse that says what is wrong: msgpack decoded generically, every field checked here."""
    # Every map's key order and every value's type are checked below: a closed schema.
    p = codec.decode(raw, max_size=max_size, max_items=MAX_RECIPIENTS + 8, tree=False)
    if type(p) is not dict or list(p) != _PACKET_FIELDS:
        raise _fields_error("packet", p, _PACKET_FIELDS)
    if p["v"] != VERSION or type(p["v"]) is not int:
        raise DecodeError(f"packet.v: unsupported version {p['v']!r} (this is v{VERSION})")
    sig = p["sig"]
    if type(p["header"]) is not bytes or type(p["ct"]) is not bytes or type(sig) is not dict:
        raise DecodeError("packet: header and ct must be bytes, sig a map")
    # Which halves a suite needs is the signature check's business; the shape is checked here.
    prev = ""
    for k, v in sig.items():
        if type(k) is not str or type(v) is not bytes or k < prev:  # keys are unique: a dict
            raise DecodeError("packet.sig: must map signature names, in canonical order, to bytes")
        prev = k
    header = _parse_header(p["header"])
    keys = p["keys"]
    wrapped_len = header.suite.enc_len + CONTENT_KEY_LEN + WRAPPED_KEY_OVERHEAD
    if type(keys) is not list or len(keys) != len(header.to):
        raise DecodeError("packet.keys: must hold one wrapped key per recipient, in header order")
    for i, k in enumerate(keys):
        if type(k) is not bytes or len(k) != wrapped_len:
            raise DecodeError(f"packet.keys[{i}]: must be {wrapped_len} bytes for {header.suite.id}")
    if len(p["ct"]) < 16:
        raise DecodeError("packet.ct: too short to be AES-GCM ciphertext")
    return Packet(raw, header, p["sig"], p["ct"], tuple(keys))


def seal(
    content: dict[str, Any],
    *,
    signer: SigningKey,
    signer_cert: Certificate,
    recipients: list[Certificate],
    topic: str,
    now: int,
    suite: Suite = DEFAULT_SUITE,
    lifetime: int = DEFAULT_LIFETIME,
    packet_id: bytes | None = None,
) -> bytes:
    """Validate, encrypt and sign ``content`` for the recipients' node certificates."""
    content = validate_content(content)
    if not TOPIC_RE.fullmatch(topic) or len(topic) > MAX_TOPIC_LEN:
        raise ValidationError("topic", f"{topic!r} is not a topic (dot-separated words of a-z 0-9 _ -)")
    if not recipients or len(recipients) > MAX_RECIPIENTS:
        raise ValidationError("to", f"need 1-{MAX_RECIPIENTS} recipient nations")
    by_nation = {c.nation: c for c in recipients}
    if len(by_nation) != len(recipients) or any(c.kem is None for c in recipients):
        raise ValidationError("to", "one node certificate per recipient nation is needed")
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValidationError("lifetime", f"must be 1-{MAX_LIFETIME} seconds")
    pid = packet_id or new_packet_id(_id_ms(now))
    sender = {"nation": signer_cert.nation, "cert": signer_cert.fp}
    salt = os.urandom(32)
    content_bytes = codec.encode(content)
    plaintext = codec.encode({"content": content_bytes, "salt": salt, "sender": sender})
    key = os.urandom(CONTENT_KEY_LEN)
    nations = sorted(by_nation)
    h: dict[str, Any] = {
        "v": VERSION, "suite": suite.id, "id": pid, "sender": sender,
        "to": [{"nation": n, "key": by_nation[n].fp} for n in nations],
        "topic": topic, "created": now, "expires": now + lifetime,
    }
    ct = AESGCM(key).encrypt(_NONCE, plaintext, _aad(h))
    hp = suite.hpke()
    wrapped = [
        hp.encrypt(key, by_nation[n].kem.for_suite(suite), info=_info(suite.id, pid, sender, n, by_nation[n].fp))  # type: ignore[union-attr]
        for n in nations
    ]
    for entry, w in zip(h["to"], wrapped):
        entry["wrap"] = hashlib.sha256(w).digest()
    h["ct"] = hashlib.sha256(ct).digest()
    h["commit"] = commitment(salt, content_bytes)
    header = codec.encode(h)
    sig = signer.sign(signing_input("packet", header), mldsa=suite.mldsa)
    return codec.encode({"v": VERSION, "header": header, "sig": sig, "ct": ct, "keys": wrapped})


def verify(raw: bytes | Packet, trust: Trust, now: int) -> Verified:
    """Check a packet from public material only: structure, suite, signer, digests, signature.

    The signer's certificate must be usable at the packet's ``created`` time, which
    may not be more than :data:`MAX_FUTURE_SKEW` after ``now``. Nothing is decrypted.
    """
    packet = raw if isinstance(raw, Packet) else parse_packet(raw)
    signer = check_signer(packet.header, trust, now)
    check_signature(packet, signer)
    return Verified(packet, signer)


def check_signer(h: Header | HeaderPeek, trust: Trust, now: int) -> Certificate:
    """The first half of :func:`verify`: the suite is allowed and the signer may sign this header now."""
    if h.suite.id not in trust.roster.suites:
        raise UntrustedSigner(f"suite {h.suite.id} is not allowed by the roster ({', '.join(trust.roster.suites)})")
    if h.created > now + MAX_FUTURE_SKEW:
        raise FutureSkew(f"packet created {h.created - now} s in the future, more than the {MAX_FUTURE_SKEW} s "
                         "any verifier allows; check the sender's clock")
    return trust.signer(h.sender_cert, h.sender, h.created)


def check_signature(packet: Packet, signer: Certificate) -> None:
    """The second half of :func:`verify`: digests and both signature halves, against ``signer``
    (which :func:`check_signer` accepted). Needs no trust store, so it can run in a worker process."""
    h = packet.header
    if signer.fp != h.sender_cert:
        raise InvalidPacket()
    ok = hmac.compare_digest(hashlib.sha256(packet.ct).digest(), h.ct_digest)
    for r, w in zip(h.to, packet.keys):
        ok &= hmac.compare_digest(hashlib.sha256(w).digest(), r.wrap)
    if not ok:
        raise InvalidPacket()
    signer.signing.verify(signing_input("packet", h.raw), packet.sig, mldsa_required=h.suite.mldsa)


def open_packet(raw: bytes | Packet, *, nation: str, kem: KemKey, trust: Trust, now: int) -> Opened:
    """Verify, then decrypt as recipient ``nation``; checks the commitment and the inner sender."""
    return decrypt(verify(raw, trust, now), nation=nation, kem=kem)


def decrypt(v: Verified, *, nation: str, kem: KemKey) -> Opened:
    """Decrypt a verified packet as recipient ``nation``; checks the commitment and the inner sender."""
    content, salt, content_bytes = decrypt_unvalidated(v, nation=nation, kem=kem)
    # Authentic but not valid content (a buggy or hostile sender) is a ValidationError, not a crypto failure.
    return Opened(v.header, v.signer, validate_content(content), salt, content_bytes)


def decrypt_unvalidated(v: Verified, *, nation: str, kem: KemKey) -> tuple[Any, bytes, bytes]:
    """:func:`decrypt` without its last step: the content as decoded, NOT validated, with its salt
    and canonical bytes. For a caller that opens a batch stage by stage (all decryptions, then all
    validations: each stage's code stays in the CPU caches) and runs :func:`validate_content` on
    the content before anything else reads it."""
    h, packet = v.header, v.packet
    for index, r in enumerate(h.to):
        if r.nation == nation:
            break
    else:
        raise InvalidPacket()
    sender = {"cert": h.sender_cert, "nation": h.sender}
    try:
        key = h.suite.hpke().decrypt(packet.keys[index], kem.for_suite(h.suite), info=_info(h.suite.id, h.id, sender, nation, r.key))
        if len(key) != CONTENT_KEY_LEN:
            raise InvalidPacket()
        plaintext = AESGCM(key).decrypt(_NONCE, packet.ct, _aad_of(h))
        # Its closed schema checked in C, and re-encoding must give the plaintext back (the
        # canonical form); any failure is the same opaque error, so no strict parse to fall back on.
        inner = _decode_inner(plaintext)
        if _encode_wire(inner) != plaintext:
            raise InvalidPacket()
        salt, content_bytes = inner.salt, inner.content
        # The sender inside the encryption must be the signer: no re-signing or forwarding.
        if inner.sender.cert != h.sender_cert or inner.sender.nation != h.sender \
                or not hmac.compare_digest(commitment(salt, content_bytes), h.commit):
            raise InvalidPacket()
        content = codec.decode(content_bytes, max_size=MAX_PACKET_SIZE)
    except (InvalidTag, ValueError, DecodeError, msgspec.MsgspecError):
        # One opaque error whatever failed: HPKE, AEAD, or the inner structure.
        raise InvalidPacket() from None
    return content, salt, content_bytes


def check_disclosure(header: Header, salt: bytes, content_bytes: bytes) -> dict[str, Any]:
    """For an auditor shown the plaintext: prove it is what the signed header commits to."""
    if not hmac.compare_digest(commitment(salt, content_bytes), header.commit):
        raise InvalidPacket()
    content = codec.decode(content_bytes, max_size=MAX_PACKET_SIZE)
    if type(content) is not dict:
        raise InvalidPacket()
    return content
