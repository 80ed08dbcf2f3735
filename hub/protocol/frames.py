"""Wire frames of protocol v1 over WebSocket (docs/protocol.md §8). Pure: bytes in, typed maps out.

Every frame is one binary WebSocket message holding one canonical map with a
string ``t`` naming its type. Each type has a closed schema: the fields, their
types, nothing else. :func:`decode_frame` rejects anything else with
:class:`DecodeError` before the session acts on it.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from . import codec
from .errors import DecodeError
from .keys import signing_input

#: Largest frame accepted from a peer: a maximal packet plus a certificate and framing.
MAX_FRAME: Final[int] = (1 << 20) + 32 * 1024
MAX_PATTERNS: Final[int] = 32
MAX_NAME: Final[int] = 64
#: Most log indexes acknowledged by one ack frame (nodes batch their acks).
MAX_ACKS: Final[int] = 1024

_BIN, _STR, _INT, _MAP, _LIST = bytes, str, int, dict, list
_FLAT: Final = frozenset({bytes, str, int, bool})

#: type -> {field: (python type, required)}; ``t`` is implicit.
SCHEMAS: Final[dict[str, dict[str, tuple[type, bool]]]] = {
    # hub -> node
    "hello": {"v": (_INT, True), "hub": (_STR, True), "roster": (_BIN, True), "challenge": (_BIN, True),
              "time": (_INT, True)},
    "welcome": {"nation": (_STR, True), "session": (_STR, True), "time": (_INT, True)},
    "accepted": {"rid": (_INT, True), "id": (_BIN, True), "index": (_INT, True), "dup": (bool, True),
                 "promise": (_STR, False)},
    "subscribed": {"rid": (_INT, True), "name": (_STR, True), "cursor": (_INT, True)},
    "deliver": {"sub": (_STR, True), "index": (_INT, True), "packet": (_BIN, True), "cert": (_BIN, False),
                "proof": (_MAP, False)},
    "ok": {"rid": (_INT, True)},
    "error": {"rid": (_INT, False), "code": (_STR, True), "reason": (_STR, True)},
    "notice": {"kind": (_STR, True), "data": (_BIN, True)},
    # node -> hub
    "auth": {"cert": (_BIN, True), "sig": (_MAP, True), "window": (_INT, True)},
    "sub": {"rid": (_INT, True), "name": (_STR, True), "patterns": (_LIST, True)},
    "unsub": {"rid": (_INT, True), "name": (_STR, True)},
    "pub": {"rid": (_INT, True), "packet": (_BIN, True), "cert": (_BIN, False)},
    "ack": {"sub": (_STR, True), "indexes": (_LIST, True)},
    "post": {"rid": (_INT, True), "kind": (_STR, True), "data": (_BIN, True)},
}

HUB_TO_NODE: Final = frozenset({"hello", "welcome", "accepted", "subscribed", "deliver", "ok", "error", "notice"})
NODE_TO_HUB: Final = frozenset({"auth", "sub", "unsub", "pub", "ack", "post"})


def encode_frame(t: str, **fields: Any) -> bytes:
    schema = SCHEMAS[t]
    for name, (typ, required) in schema.items():
        if required and name not in fields:
            raise ValueError(f"frame {t} needs {name}")
    body = {k: v for k, v in fields.items() if v is not None}
    body["t"] = t
    # Hot path (deliver, accepted, ack): only the top level needs its keys sorted; nested values
    # (a proof map, a pattern list) are canonicalised on their own, the packet bytes are not copied.
    out = {k: (v if type(v) in _FLAT else codec.canonical(v)) for k, v in sorted(body.items())}
    return codec.pack_as_is(out)


# deliver_parts' own Packer, not codec.pack_as_is: it runs only on the hub's event loop, and
# the per-thread lookup would cost 0.3 us of its 1.3 (seven deliveries per packet).
_pack = msgpack.Packer(use_bin_type=True).pack


def deliver_parts(sub: str, index: int, packet: bytes, cert: bytes | None, proof: bytes | None) -> list[bytes]:
    """A canonical ``deliver`` frame as the pieces that, joined, make it; ``proof`` given already
    encoded (canonically).

    The hub's hottest frame: built in key order (cert, index, packet, proof, sub, t), so the
    proof is encoded once per packet rather than once per recipient, and the packet bytes are
    one of the pieces, not copied: the hub joins a turn's frames for a socket once, where packing
    the packet and joining the frame copied each 13 KB packet twice more for each of its recipients.
    """
    parts = [b""]
    n = 4
    if cert is not None:
        parts += [_K_CERT, _pack(cert)]
        n += 1
    parts += [_K_INDEX, _pack(index), _K_PACKET, _bin_header(len(packet)), packet]
    if proof is not None:
        parts += [_K_PROOF, proof]
        n += 1
    parts += [_K_SUB, _pack(sub), _T_DELIVER]
    parts[0] = _FIXMAP[n]  # a fixmap: at most 6 entries
    return parts


def _bin_header(n: int) -> bytes:
    """The msgpack bin header for ``n`` bytes (the shortest form, as canonical encoding requires)."""
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_K_CERT, _K_INDEX, _K_PACKET, _K_PROOF, _K_SUB = (_pack(k) for k in ("cert", "index", "packet", "proof", "sub"))
_T_DELIVER = _pack("t") + _pack("deliver")
_FIXMAP = [bytes([0x80 | n]) for n in range(16)]


def decode_frame(data: bytes, allowed: frozenset[str], *, max_size: int = MAX_FRAME) -> dict[str, Any]:
    """Decode one frame whose type must be in ``allowed``; the schema is checked field by field."""
    f = codec.decode(data, max_size=max_size, max_items=MAX_ACKS)  # an ack frame's list is the longest
    if type(f) is not dict:
        raise DecodeError("frame: must be a map")
    t = f.get("t")
    if type(t) is not str or t not in SCHEMAS:
        raise DecodeError(f"frame: unknown type {t!r}")
    if t not in allowed:
        raise DecodeError(f"frame: {t!r} is not allowed here")
    schema = SCHEMAS[t]
    for name, value in f.items():
        if name == "t":
            continue
        spec = schema.get(name)
        if spec is None:
            raise DecodeError(f"frame {t}: unknown field {name!r}")
        if type(value) is not spec[0]:
            raise DecodeError(f"frame {t}: field {name!r} must be {spec[0].__name__}")
    for name, (_, required) in schema.items():
        if required and name not in f:
            raise DecodeError(f"frame {t}: missing field {name!r}")
    for name in ("rid", "index", "window", "cursor", "v", "time"):
        if name in f and f[name] < 0:
            raise DecodeError(f"frame {t}: field {name!r} must not be negative")
    if t == "ack":
        idx = f["indexes"]
        if not 0 < len(idx) <= MAX_ACKS or any(type(i) is not int or i < 0 for i in idx):
            raise DecodeError(f"frame ack: indexes must be 1-{MAX_ACKS} non-negative integers")
    if t == "sub":
        pats = f["patterns"]
        if not 0 < len(pats) <= MAX_PATTERNS or any(type(p) is not str for p in pats):
            raise DecodeError(f"frame sub: patterns must be 1-{MAX_PATTERNS} strings")
    for name in ("name", "sub"):
        if name in f and not 0 < len(f[name]) <= MAX_NAME:
            raise DecodeError(f"frame {t}: {name} must be 1-{MAX_NAME} characters")
    return f


def auth_message(challenge: bytes, hub: str, roster: bytes, cert_fp: bytes, window: int) -> bytes:
    """What a node signs to authenticate (§8.2): the challenge, the hub, and the session parameters."""
    return signing_input("auth", codec.encode(
        {"challenge": challenge, "hub": hub, "roster": roster, "cert": cert_fp, "window": window}))
