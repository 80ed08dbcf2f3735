"""Fuzz tests: every decoder, fed random and mutated input, keeps its contract.

Issue "Proof under load, faults and attack", part 3. A :class:`Target` is one
decoder, a hypothesis strategy for its input (random bytes or text, and real valid
objects put through structured mutations) and a check of its contract:

* it raises only the project error its module documents (``DecodeError``,
  ``LogError``, ``ConfigError``, ...), never ``TypeError``, ``KeyError``, ...;
* it answers one input within :data:`HANG_SECONDS` of CPU time;
* what it accepts keeps the invariants of strict parsing (docs/protocol.md §2): a
  decoded value re-encodes to the input, a parsed object re-serialises to it, a
  changed packet or signed note never verifies.

A broken contract raises :class:`Finding`. The tests at the end run every target
with a small derandomised budget (``make test``), and replay every input kept in
``tests/fuzz_corpus/<target>/*.json``: one per bug found so far, with what it broke
and a proposed fix. ``bench/fuzz.py`` runs the same :data:`TARGETS` for a set time
with random seeds and saves what it finds in the same form (``*.case.json``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import textwrap
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.node.config import parse_node_config
from clients.node.filters import FilterSet
from clients.node.sinks import sinks_from_config
from hub.protocol import codec, envelope
from hub.protocol.armor import armor, dearmor
from hub.protocol.certs import Certificate
from hub.protocol.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint, parse_checkpoint_body, sign_checkpoint
from hub.protocol.content import content_from_json, validate_content
from hub.protocol.envelope import open_packet, parse_packet, seal, verify
from hub.protocol.errors import (
    ConfigError, DecodeError, InvalidPacket, KeyFileError, LogError, UntrustedSigner, ValidationError,
)
from hub.protocol.federation import G7, Federation, create_federation
from hub.protocol.frames import SCHEMAS, decode_frame, encode_frame
from hub.protocol.keys import KemKey, PrivateKeys, SigningKey, parse_private_keys
from hub.protocol.note import CosignatureVerifier, Cosigner, NoteSigner, NoteVerifier, add_signatures, split_note
from hub.protocol.promise import Promise, sign_promise, verify_promise
from hub.protocol.roster import Revocation, RevocationList, Roster, roster_tbs, sign_revocations
from hub.protocol.suites import CLASSIC, HYBRID
from hub.protocol.trust import Trust
from hub.server.config import parse_config

from .conftest import NOW, sample_alert

#: CPU seconds one input may take before it counts as a hang.
HANG_SECONDS: Final[float] = 1.0
ORIGIN: Final[str] = "intelhub.example/log"
PASSPHRASE: Final[bytes] = b"correct horse battery staple"
_REF: Final[str] = "0193a1b2-0000-7000-8000-000000000000"


class Finding(AssertionError):
    """A broken contract: an undocumented exception, a hang, or a broken invariant (``kind``)."""

    def __init__(self, message: str, kind: str = "invariant") -> None:
        super().__init__(message)
        self.kind = kind


def _call(what: str, allowed: tuple[type[Exception], ...], fn: Callable[..., Any], *args: Any,
          **kwargs: Any) -> tuple[bool, Any, str]:
    """Run one decoder call: ``(accepted, value, outcome)``; anything off-contract is a :class:`Finding`."""
    start = time.process_time()
    try:
        value, accepted, outcome = fn(*args, **kwargs), True, "accepted"
    except allowed as exc:
        value, accepted, outcome = None, False, type(exc).__name__
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException (a Rust panic) is a BaseException
        names = " or ".join(a.__name__ for a in allowed) or "no exception"
        raise Finding(f"{what} raised {type(exc).__name__}: {str(exc)[:200]} (its contract allows {names})",
                      "exception") from exc
    spent = time.process_time() - start
    if spent > HANG_SECONDS:
        raise Finding(f"{what} took {spent:.2f} s of CPU on one input (limit {HANG_SECONDS} s)", "hang")
    return accepted, value, outcome


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise Finding(message)


# -- msgpack that need not be canonical ------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Bytes spliced verbatim into an encoding: a float, an ext, a huge declared length, ..."""

    data: bytes


@dataclass(frozen=True)
class RawMap:
    """A map written pair by pair, in this order, duplicates included."""

    pairs: tuple[tuple[Any, Any], ...]


def _header(n: int, small: int, small_max: int, w16: int, w32: int) -> bytes:
    if n <= small_max:
        return bytes([small | n])
    return bytes([w16]) + n.to_bytes(2, "big") if n < 1 << 16 else bytes([w32]) + n.to_bytes(4, "big")


def pack(obj: Any) -> bytes:
    """Encode ``obj`` like msgpack, honouring :class:`Raw` and :class:`RawMap`; plain dicts are sorted."""
    t = type(obj)
    if t is Raw:
        return obj.data
    if t is RawMap:
        return _header(len(obj.pairs), 0x80, 15, 0xDE, 0xDF) + b"".join(pack(k) + pack(v) for k, v in obj.pairs)
    if t is dict:
        items = sorted(obj.items()) if all(type(k) is str for k in obj) else list(obj.items())
        return pack(RawMap(tuple(items)))
    if t is list or t is tuple:
        return _header(len(obj), 0x90, 15, 0xDC, 0xDD) + b"".join(pack(v) for v in obj)
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):  # out of msgpack's range: a nil stands in
        return b"\xc0"


def _wide(obj: Any) -> Any:
    """The same value in a longer, non-canonical form (what a canonical decoder must refuse)."""
    t = type(obj)
    if t is int and not isinstance(obj, bool):
        return Raw(b"\xd3" + obj.to_bytes(8, "big", signed=True)) if obj < 0 else Raw(b"\xcf" + obj.to_bytes(8, "big"))
    if t is str:
        data = obj.encode("utf-8", "surrogatepass")
        return Raw(b"\xdb" + len(data).to_bytes(4, "big") + data)
    if t is bytes:
        return Raw(b"\xc6" + len(obj).to_bytes(4, "big") + obj)
    if t is list:
        return Raw(b"\xdd" + len(obj).to_bytes(4, "big") + b"".join(pack(v) for v in obj))
    if t is dict:
        return Raw(b"\xdf" + len(obj).to_bytes(4, "big") + pack(obj)[_map_header_len(len(obj)) :])
    return obj


def _map_header_len(n: int) -> int:
    return 1 if n <= 15 else 3 if n < 1 << 16 else 5


#: Declared lengths far beyond any input, truncated values, floats, exts, the never-used 0xc1.
MSGPACK_TOKENS: Final[tuple[bytes, ...]] = (
    b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\xda\xff\xff", b"\xc5\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff", b"\xd9\xff", b"\xc4\xff",
    b"\xdd\x7f\xff\xff\xff", b"\xdf\x00\x01\x00\x00", b"\xc1", b"\xc0", b"\xc2", b"\xc3", b"\x90", b"\x80",
    b"\xa0", b"\xc4\x00", b"\xca\x00\x00\x00\x00", b"\xcb" + bytes(8), b"\xcb\x7f\xf8" + bytes(6),
    b"\xd4\x01\x00", b"\xc7\x00\x05", b"\xd6\xff\x00\x00\x00\x00", b"\xcc\x05", b"\xcd\x00\x05",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80" + bytes(7), b"\x91" * 40, b"\x81\xa1a" * 20,
    b"\xa2\xc3\x28", b"\xa3\xed\xa0\x80", b"\xa1t", b"\xa1v\x01",
)
EDGE_INTS: Final[tuple[int, ...]] = (0, 1, -1, 2, 127, 128, 255, 256, 65535, 65536, -32, -33, 2**31 - 1, 2**32,
                                     2**40, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), NOW, NOW + 10**9)


class Seeds(tuple):  # type: ignore[type-arg]
    """Seed values, shown by their count: hypothesis prints a strategy's arguments."""

    def __repr__(self) -> str:
        return f"<{len(self)} seeds>"


# -- structured mutation of trees (msgpack values, content, config documents) ----------------

_EMBED: Final = "<embedded msgpack>"
_DELETE: Final = object()


def _embedded(value: Any) -> Any:
    """A canonical map or array held as ``bin`` (a header, a tbs, the content), else None."""
    if type(value) is not bytes or not value or len(value) > 1 << 16 or not (
            0x80 <= value[0] <= 0x9F or value[0] in (0xDC, 0xDD, 0xDE, 0xDF)):
        return None
    return _embedded_cached(value)


@lru_cache(maxsize=1024)  # seeds hit it again and again; mutants rarely
def _embedded_cached(value: bytes) -> Any:
    try:
        return codec.decode(value)
    except DecodeError:
        return None


def _paths(obj: Any, embed: bool, limit: int = 400) -> list[tuple[Any, ...]]:
    """Every node's path, root first; with ``embed``, paths go on into embedded msgpack."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), obj)]
    while stack and len(out) < limit:
        path, node = stack.pop()
        out.append(path)
        if type(node) is dict:
            stack.extend((path + (k,), v) for k, v in reversed(list(node.items())))
        elif type(node) is list:
            stack.extend((path + (i,), v) for i, v in reversed(list(enumerate(node))))
        elif embed and (inner := _embedded(node)) is not None:
            stack.append((path + (_EMBED,), inner))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    """The node at ``path``, or ``_DELETE`` if ``obj`` has none there."""
    for step in path:
        if step is _EMBED:
            obj = _embedded(obj)
            if obj is None:
                return _DELETE
        elif type(obj) is dict and step in obj or type(obj) is list and type(step) is int and step < len(obj):
            obj = obj[step]
        else:
            return _DELETE
    return obj


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _old: value


def _edit(obj: Any, path: tuple[Any, ...], fn: Callable[[Any], Any]) -> Any:
    """A copy of ``obj`` with the node at ``path`` replaced by ``fn(node)`` (``_DELETE`` removes it)."""
    if not path:
        return fn(obj)
    step, rest = path[0], path[1:]
    if step is _EMBED:
        new = _edit(_embedded(obj), rest, fn)
        return pack(new) if new is not _DELETE else b""
    child = _edit(obj[step], rest, fn)
    if type(obj) is dict:
        out = dict(obj)
        if child is _DELETE:
            del out[step]
        else:
            out[step] = child
        return out
    items = list(obj)
    if child is _DELETE:
        del items[step]
    else:
        items[step] = child
    return items


TREE_OPS: Final = ("replace", "replace", "tweak", "tweak", "tweak_all", "delete", "add_key", "transplant",
                   "dup_item", "drop_item", "dup_entry", "reorder", "wide", "swap_str_bin", "deep", "token")
#: Edits of a decoded JSON or TOML document (no encoding tricks; TOML has no bytes either).
DOC_TREE_OPS: Final = ("replace", "replace", "tweak", "tweak", "tweak_all", "delete", "add_key", "transplant",
                       "dup_item", "drop_item")
EDGE_FLOATS: Final[tuple[float, ...]] = (float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e308, 5e-324, 1e-9, -1.5)
#: What :func:`_tweak` splices into a string: NUL, odd digits and widths, URL and path syntax.
STRING_TOKENS: Final[tuple[str, ...]] = ("\x00", "²", "١", "𝟙", "\ufffd", "\ud800", "\u202e", "\uff03", "é", "ß", "İ",
                                         " ", "\n", "\t", "/", "..", ":", "@", "[", "]", "#", "%00", "+", "*", ">", "A" * 300,
                                         "x/" * 300, "9" * 25)


def _tweak(draw: Any, node: Any) -> Any:
    """The same kind of value, slightly wrong: an edge number, a string with a token spliced in,
    a byte string one byte off."""
    t = type(node)
    if t is bool:
        return not node
    if t is int or t is float:
        return draw(st.sampled_from(EDGE_INTS + EDGE_FLOATS + (True, False) if t is int else EDGE_FLOATS + (0, -1, 2**63 - 1)))
    if t is str:
        i = draw(st.integers(0, len(node)))
        tok = draw(st.sampled_from(STRING_TOKENS))
        return node[:i] + tok + node[i + draw(st.integers(0, 2)) :] if draw(st.booleans()) else tok * draw(st.integers(1, 3))
    if t is bytes:
        i = draw(st.integers(0, max(0, len(node) - 1)))
        return draw(st.sampled_from((node[:-1], node + b"\x00", node[:i] + bytes([(node[i:i + 1] or b"\x00")[0] ^ 1])
                                     + node[i + 1 :], b"")))
    return node


def _tweak_all(draw: Any, node: Any) -> Any:
    """:func:`_tweak` applied to about half the leaves under ``node``."""
    if type(node) is dict:
        return {k: _tweak_all(draw, v) for k, v in node.items()}
    if type(node) is list:
        return [_tweak_all(draw, v) for v in node]
    return _tweak(draw, node) if draw(st.booleans()) else node


@st.composite
def tree_mutants(draw: Any, seeds: Sequence[Any], values: st.SearchStrategy[Any], keys: st.SearchStrategy[str],
                 *, embed: bool, ops: Sequence[str] = TREE_OPS, max_ops: int = 3, root: bool = True) -> Any:
    """A seed with 1..max_ops structural edits: another value or type, a field removed or added,
    an entry duplicated, keys out of order, a longer encoding, a node from another seed, ...
    Without ``root`` the top-level map itself is never replaced (a TOML document is always one)."""
    obj = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, max_ops))):
        paths = _paths(obj, embed)[0 if root else 1 :]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(ops))
        node = _get(obj, path)
        if node is _DELETE:
            continue
        if op == "replace":
            new = draw(values)
        elif op == "tweak":
            new = _tweak(draw, node)
        elif op == "tweak_all":
            new = _tweak_all(draw, node)
        elif op == "delete" and path:
            new = _DELETE
        elif op == "add_key" and type(node) is dict:
            new = {**node, draw(keys): draw(values)}
        elif op == "transplant":
            new = _get(draw(st.sampled_from(seeds)), path)
            if new is _DELETE:
                continue
        elif op == "dup_item" and type(node) is list and node:
            i = draw(st.integers(0, len(node) - 1))
            new = node[: i + 1] + node[i:]
        elif op == "drop_item" and type(node) is list and node:
            i = draw(st.integers(0, len(node) - 1))
            new = node[:i] + node[i + 1 :]
        elif op == "dup_entry" and type(node) is dict and node:
            pairs = sorted(node.items())
            i = draw(st.integers(0, len(pairs) - 1))
            new = RawMap(tuple(pairs[: i + 1] + pairs[i:]))
        elif op == "reorder" and type(node) is dict and len(node) > 1:
            new = RawMap(tuple(sorted(node.items(), reverse=True)))
        elif op == "wide":
            new = _wide(node)
        elif op == "swap_str_bin" and type(node) in (str, bytes):
            new = node.encode("utf-8", "surrogatepass") if type(node) is str else node.decode("latin-1")
        elif op == "deep":
            new = node
            for _ in range(draw(st.integers(11, 40))):
                new = [new]
        elif op == "token":
            new = Raw(draw(st.sampled_from(MSGPACK_TOKENS)))
        else:
            new = draw(values)
        obj = _edit(obj, path, _constant(new))
    return obj


# -- byte and text mutation -----------------------------------------------------------------

BYTE_OPS: Final = ("flip", "set", "insert", "delete", "truncate", "append", "dup_slice", "splice", "token")


@st.composite
def byte_mutants(draw: Any, seeds: Sequence[bytes], *, tokens: Sequence[bytes] = MSGPACK_TOKENS,
                 max_ops: int = 4) -> bytes:
    """A seed with 1..max_ops byte edits: bit flips, inserted and deleted runs, truncation,
    splices with another seed, and msgpack tokens such as huge declared lengths."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(BYTE_OPS))
        n = len(data)
        i = draw(st.integers(0, n))
        if op == "flip" and n:
            i = min(i, n - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[min(i, n - 1)] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xC0, 0xC1, 0xDF, 0xFF)))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[i:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "dup_slice":
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            j = draw(st.integers(0, len(other)))
            data = data[:i] + other[j:]
        else:
            tok = draw(st.sampled_from(tokens))
            if draw(st.booleans()):
                data[i : i + len(tok)] = tok
            else:
                data[i:i] = tok
    return bytes(data)


TEXT_OPS: Final = ("insert", "insert", "replace", "delete", "truncate", "dup_line", "drop_line", "swap_lines",
                   "splice")


@st.composite
def text_mutants(draw: Any, seeds: Sequence[str], tokens: Sequence[str], *, max_ops: int = 3) -> str:
    """A seed with 1..max_ops edits: tokens from a dictionary or random characters inserted or
    replacing a run, lines duplicated, dropped or swapped, truncation, a splice with another seed."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(TEXT_OPS))
        i = draw(st.integers(0, len(text)))
        lines = text.split("\n")
        k = draw(st.integers(0, len(lines) - 1))
        if op in ("insert", "replace"):
            tok = draw(st.one_of(st.sampled_from(tokens), st.text(min_size=1, max_size=4)))
            end = i if op == "insert" else min(len(text), i + draw(st.integers(1, 12)))
            text = text[:i] + tok + text[end:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 12)) :]
        elif op == "truncate":
            text = text[:i]
        elif op == "dup_line":
            text = "\n".join(lines[: k + 1] + lines[k:])
        elif op == "drop_line":
            text = "\n".join(lines[:k] + lines[k + 1 :])
        elif op == "swap_lines" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
            text = "\n".join(lines)
        else:
            other = draw(st.sampled_from(seeds))
            text = text[:i] + other[draw(st.integers(0, len(other))) :]
    return text


_PEM_BODY: Final = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)\n-----END \1-----", re.S)


def _der(data: bytes, i: int = 0) -> tuple[int, bytes, int]:
    """One DER element at ``i``: (tag, contents, end)."""
    tag, n, j = data[i], data[i + 1], i + 2
    if n & 0x80:
        n, j = int.from_bytes(data[j : j + (n & 0x7F)], "big"), j + (n & 0x7F)
    return tag, data[j : j + n], j + n


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    head = bytes([n]) if n < 0x80 else bytes([0x80 | (n.bit_length() + 7) // 8]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + head + body


def _set_der_integer(der: bytes, k: int, value: int) -> bytes:
    """``der`` with its k-th INTEGER set to ``value``, every enclosing length fixed up."""
    count = 0

    def walk(element: bytes) -> bytes:
        nonlocal count
        tag, body, _ = _der(element)
        if tag == 0x30:
            parts, i = [], 0
            while i < len(body):
                end = _der(body, i)[2]
                parts.append(walk(body[i:end]))
                i = end
            return _tlv(tag, b"".join(parts))
        if tag == 0x02:
            count += 1
            if count == k + 1:
                return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))
        return element

    return walk(der)


#: INTEGER values for key files: zero, negative, byte boundaries, and a PBKDF2 iteration count
#: that takes seconds (2**31 - 1 would take the fuzzer minutes per input, so it stops here).
DER_INTEGERS: Final[tuple[int, ...]] = (0, 1, -1, 127, 128, 255, 256, 65536, 2**63, 10**7)


@st.composite
def pem_mutants(draw: Any, seeds: Sequence[str]) -> str:
    """A key file with the DER inside one PEM block mutated: bytes (wrong OIDs, lengths, tags),
    or one INTEGER (version, PBKDF2 iteration count, key length) set to an edge value."""
    text = draw(st.sampled_from(seeds))
    m = draw(st.sampled_from(list(_PEM_BODY.finditer(text))))
    der = base64.b64decode("".join(m.group(2).split()))
    if draw(st.booleans()):
        new = _set_der_integer(der, draw(st.integers(0, 3)), draw(st.sampled_from(DER_INTEGERS)))
    else:
        new = draw(byte_mutants(Seeds([der]), tokens=(b"\x02\x04\x7f\xff\xff\xff", b"\x30\x84\xff\xff\xff\xff",
                                                      b"\x05\x00", b"\x06\x03\x2b\x65\x6e", b"\x06\x03\x2b\x65\x71",
                                                      b"\x04\x00"), max_ops=2))
    body = "\n".join(textwrap.wrap(base64.b64encode(new).decode(), 64)) or "="
    return text[: m.start(2)] + body + text[m.end(2) :]


# -- value dictionaries ---------------------------------------------------------------------

#: Strings that have broken parsers before: escapes, odd digits, bidi controls, NUL, long runs.
STRINGS: Final[tuple[str, ...]] = (
    "", " ", "\x00", "a\x00b", "\n", "\r\n", "\t", "\u2028", "\u202e", "\u2066", "\ufeff", "\ud800", "\udfff",
    "é", "ß", "ﬀ", "İ", "Σ", "\u0301", "١٢٣", "²", "𝟙𝟚", "½", "0", "-0", "00", "1e309", "1e-7", "NaN", "Infinity",
    "-1", "0x10", "1_000", "9" * 40, "9" * 5000, "A" * 300, "x/" * 300, "../" * 40, "/", ".", "..", "*", ">",
    "a..b", "TLP:RED", "AMBER+STRICT", "WHITE", "H2", "X", "FR", "fr", "FRA", "ZZ", "XK", "EU", "éé",
    "0193a1b2-0000-7000-8000-000000000000", "not-a-uuid", "2025-02-30", "0000-01-01", "9999-12-31",
    "2025-11-24T16:00:00Z", "2025-11-24T25:00:00+14:00", "EUR", "eur", "XAU", "XXX", "BTC",
    "DE89 3704 0044 0532 0130 00", "DE00 0000 0000 0000 0000 00", "GB82WEST12345698765432",
    "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "0x" + "f" * 40,
    "IMO 9074729", "IMO 0000000", "+44 7700 900123", "+999", "+" + "9" * 30, "@", "@handle", "a@b", "DEUTDEFF",
    "529900T8BM49AURSDO55", "HRB 12345", "Person", "person", "Vessel", "CryptoWallet", "Thing",
    "http://[::1", "https://a\uff03b/", "http://127.0.0.1:8080/hook", "https://user:pw@example.org/",
    "http://10.0.0.1/", "ftp://example.org/", "https://", "http://[::1]:99999/", "https://exa mple.org/",
    "http://localhost", "https://hub.example:8443/", "127.0.0.1:8443", "127.0.0.1:²", "127.0.0.1:١٢",
    "127.0.0.1:99999", ":80", "127.0.0.1:", "[::1]:80", "0.0.0.0:443", "localhost:0", "debug", "loud",
    "intelhub-key: sign.ed25519", "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----",
)
#: Tokens for text formats: line structure, separators, numbers, base64, PEM and TOML syntax.
TEXT_TOKENS: Final[tuple[str, ...]] = STRINGS + (
    "\n\n", "\u2014 ", "\u2014", "+", "=", "==", "time ", "mmd ", "0", "18446744073709551616",
    "9223372036854775808", "AAAA", "////", "# EXAMPLE ONLY\n", "-----BEGIN INTELHUB CERTIFICATE-----\n",
    "-----END INTELHUB CERTIFICATE-----\n", "-----BEGIN ENCRYPTED PRIVATE KEY-----\n", "[hub]\n", "[[filters]]\n",
    "[limits]\n", "= inf\n", "= nan\n", "= -1\n", '= "\\u0000"\n', "= []\n", "= {}\n", "= 1979-05-27\n", '"', "'",
    "{", "}", "[", "]", ",", ":", "\\", "\\u0000", "\\ud800", "null", "true", "1.5", "1e400", "[" * 64,
)
_atoms = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(STRINGS), st.text(max_size=12), st.binary(max_size=40), st.floats(),
)
#: Any msgpack/JSON-like value, floats included (they must be refused too).
VALUES: Final = st.recursive(_atoms, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                             max_leaves=8)
_toml_atoms = st.one_of(
    st.sampled_from(STRINGS), st.text(max_size=12), st.booleans(), st.sampled_from([i for i in EDGE_INTS if i < 2**63]),
    st.integers(-(2**63), 2**63 - 1), st.floats(), st.dates(), st.datetimes(), st.times(),
)
#: Any value a TOML file can hold (strings, 64-bit integers, floats with inf and nan, dates, times).
TOML_VALUES: Final = st.recursive(
    _toml_atoms, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6)


def _field_names(seeds: Sequence[Any]) -> list[str]:
    names: set[str] = set()
    for seed in seeds:
        for path in _paths(seed, embed=True, limit=2000):
            names.update(s for s in path if type(s) is str and s is not _EMBED)
    return sorted(names)


def _keys(seeds: Sequence[Any]) -> st.SearchStrategy[str]:
    """Field names seen in the seeds (a known field in the wrong place) or random ones."""
    return st.one_of(st.sampled_from(_field_names(seeds) + ["t", "v", "x", "type"]), st.text(max_size=8))


# -- TOML text from documents ---------------------------------------------------------------


def _toml_str(s: str) -> str:
    out = []
    for c in s:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")  # TOML cannot hold a lone surrogate
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else "inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return _toml_str(v if isinstance(v, str) else repr(v))


def toml_dumps(doc: dict[str, Any]) -> str:
    """A TOML text that :mod:`tomllib` reads back as ``doc`` (everything as inline tables)."""
    return "".join(f"{_toml_str(str(k))} = {_toml_value(v)}\n" for k, v in doc.items())


# -- the corpus: real, valid objects of every kind ------------------------------------------


@dataclass(frozen=True)
class Sealed:
    recipients: frozenset[str]
    content: dict[str, Any]


@dataclass(eq=False)
class Corpus:
    """Valid seeds for every decoder, built from the seeded test federation."""

    fed: Federation
    workdir: Path
    packets: dict[bytes, Sealed] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)
    contents: list[dict[str, Any]] = field(default_factory=list)
    certs: list[bytes] = field(default_factory=list)
    rosters: list[bytes] = field(default_factory=list)
    revocations: list[bytes] = field(default_factory=list)
    armored: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    checkpoint_bodies: set[str] = field(default_factory=set)
    promises: list[str] = field(default_factory=list)
    promise_bodies: set[str] = field(default_factory=set)
    vkeys: list[str] = field(default_factory=list)
    key_files: list[str] = field(default_factory=list)
    hub_configs: list[dict[str, Any]] = field(default_factory=list)
    node_configs: list[dict[str, Any]] = field(default_factory=list)

    trust: Trust = field(init=False)
    #: The hub's note signer (seeded) and its verifier.
    hub: NoteSigner = field(init=False)
    hub_verifier: NoteVerifier = field(init=False)

    def __post_init__(self) -> None:
        self.trust = self.fed.trust()
        seed = hashlib.sha256(b"fuzz-hub").digest()
        self.hub = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(seed), MLDSA65PrivateKey.from_seed_bytes(seed))
        self.hub_verifier = self.hub.verifier()


def _freeze() -> dict[str, Any]:
    return {
        "type": "freeze", "authority": {"name": "Bundesanstalt für Finanzdienstleistungsaufsicht", "country": "DE"},
        "legal_basis": "KWG §6a", "reference": "BA-2025-17", "status": "issued",
        "subject": {"id": "s1", "schema": "Company", "names": ["Zuwara Shipping Ltd"],
                    "identifiers": [{"type": "lei", "value": "529900T8BM49AURSDO55"}]},
        "assets": [
            {"id": "a1", "kind": "bank_account", "status": "frozen", "amount": "125000.00", "currency": "EUR",
             "identifier": {"type": "iban", "value": "DE89 3704 0044 0532 0130 00"}},
            {"id": "a2", "kind": "crypto_wallet", "status": "frozen", "quantity": "1.5", "unit": "usdt",
             "identifier": {"type": "crypto_wallet", "value": "TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE"}},
            {"id": "a3", "kind": "vessel", "status": "frozen", "identifier": {"type": "imo", "value": "IMO 9074729"}},
        ],
        "effective": "2025-11-20", "expires": "2026-11-20", "requested_action": "Freeze matching accounts.",
        "handling": {"tlp": "AMBER+STRICT", "codes": ["H1", "H2"], "source": "A", "information": "1"},
    }


def _rich_alert() -> dict[str, Any]:
    alert = sample_alert()
    alert["entities"].append({
        "id": "e3", "schema": "Phone", "identifiers": [{"type": "phone", "value": "+44 7700 900123"}]})
    alert["entities"].append({
        "id": "e4", "schema": "UserAccount", "names": ["zuwara_boats"],
        "identifiers": [{"type": "handle", "value": "@zuwara_boats", "platform": "telegram"},
                        {"type": "email", "value": "boats@example.org"}]})
    alert["links"].append({"from": "e1", "to": "e3", "type": "owner"})
    alert["valid_until"] = "2026-05-24"
    alert["case_ref"] = "OP-ZUWARA-7"
    return alert


_HUB_TOML: Final = """\
# hub configuration used as a fuzzing seed
[hub]
listen = "127.0.0.1:8443"
key = "hub.key"
trust = "trust"
database = "run/hub.db"
verify_threads = 2
checkpoint_interval = 1.0
log_level = "info"

[limits]
max_packet_bytes = 1048576
publish_rate = 1000
ack_timeout = 30

[retention]
days = 30

[topics]
publish = ["alerts.>", "notices.>"]
subscribe = [">"]

[topics.JP]
publish = ["alerts.entity.>"]
"""

_NODE_TOML: Final = """\
[node]
nation = "FR"
hub = "http://127.0.0.1:8443"
key = "node.key"
cert = "node.cert"
trust = "trust"
store = "run/fr.db"
window = 256

[[subscriptions]]
name = "main"
patterns = [">"]

[receipts]
delivered = true

[watchlists.ids]
type = "identifiers"
path = "ids.txt"

[sinks.fiu]
type = "jsonl"
path = "run/fiu.jsonl"

[[filters]]
name = "freezes-to-fiu"
packet_type = "freeze"
notify = ["fiu"]
processed = true
"""

_IDS: Final = ("iban:DE89 3704 0044 0532 0130 00\ncrypto_wallet:TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE\n# a comment\n"
               "imo:IMO 9074729\nphone:+44 7700 900123\nlei:529900T8BM49AURSDO55\n")
_NAMES: Final = "Mohammed Al-Rashid\nمحمد الراشد\nИван Петров\n王小明\n\n# comment\nZuwara Shipping Ltd\n"


def _node_doc() -> dict[str, Any]:
    return {
        "node": {"nation": "FR", "hub": "http://127.0.0.1:8443", "key": "node.key", "cert": "node.cert",
                 "trust": "trust", "store": "run/fr.db", "window": 256, "log_level": "info", "ca_file": "ca.pem"},
        "subscriptions": [{"name": "main", "patterns": [">"]}, {"name": "freezes", "patterns": ["notices.*.freeze"]}],
        "receipts": {"delivered": True},
        "watchlists": {"ids": {"type": "identifiers", "path": "fuzz-ids.txt"},
                       "names": {"type": "names", "path": "fuzz-names.txt", "threshold": 0.85, "description": "x"}},
        "sinks": {"fiu": {"type": "jsonl", "path": "run/fiu.jsonl", "max_attempts": 5},
                  "siem": {"type": "webhook", "url": "https://siem.example/intel", "timeout": 5, "max_backoff": 60,
                           "headers": {"Authorization": "Bearer example"}, "description": "SIEM"},
                  "local": {"type": "webhook", "url": "http://127.0.0.1:9000/x", "allow_insecure": False}},
        "filters": [
            {"name": "freezes-to-fiu", "packet_type": "freeze", "notify": ["fiu"], "processed": True},
            {"name": "watch", "watchlist": ["ids", "names"], "threshold": 0.9, "notify": ["siem", "local"]},
            {"name": "drop-low", "severity": ["low"], "max_tlp": "GREEN", "action": "drop"},
            {"name": "eu", "sender": ["FR", "DE"], "countries": ["LY"], "schema": "Person", "topic": "alerts.>",
             "category": "migrant_smuggling", "min_severity": "medium", "tlp": ["AMBER", "TLP:RED"],
             "nationality": "LY", "description": "smuggling from Libya"},
        ],
    }


def _hub_doc(tls: bool) -> dict[str, Any]:
    hub: dict[str, Any] = {"listen": "0.0.0.0:8443" if tls else "127.0.0.1:0", "key": "hub.key", "trust": "trust",
                           "database": "run/hub.db", "verify_threads": 2, "checkpoint_interval": 0.5,
                           "log_level": "warning"}
    if tls:
        hub.update(tls_cert="ca.pem", tls_key="hub.key")
    return {
        "hub": hub,
        "limits": {"max_packet_bytes": 1 << 20, "max_recipients": 64, "max_clock_skew": 300, "publish_rate": 1000.0,
                   "publish_burst": 2000, "window": 256, "ack_timeout": 30, "auth_timeout": 10.0,
                   "max_sessions_per_nation": 16, "max_pending_publishes": 512, "idle_timeout": 120},
        "retention": {"days": 30},
        "topics": {"publish": ["alerts.>"], "subscribe": [">"], "JP": {"publish": ["alerts.entity.>"], "subscribe": ["*"]}},
    }


def _workdir(root: Path) -> None:
    """Files the configurations name: keys, a trust directory, watch lists, a CA file."""
    for d in ("trust", "run"):
        (root / d).mkdir(exist_ok=True)
    for name in ("hub.key", "node.key", "node.cert", "empty.txt"):
        (root / name).write_text("")
    (root / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (root / "junk.txt").write_bytes(b"\xff\xfe\x00bad\x80utf8\n")
    for name, text in (("ids.txt", _IDS), ("names.txt", _NAMES), ("fuzz-ids.txt", _IDS), ("fuzz-names.txt", _NAMES)):
        (root / name).write_text(text, "utf-8")


def build_corpus(fed: Federation, workdir: Path) -> Corpus:
    """Seal packets, issue and armor objects, sign notes, write config files: the fuzzing seeds."""
    c = Corpus(fed, workdir)
    m = fed.members
    contents = [sample_alert(), _rich_alert(), _freeze(),
                {"type": "withdraw", "ref": _REF, "reason": "Duplicate of an earlier alert."},
                {"type": "receipt", "ref": _REF, "status": "delivered", "at": "2025-11-24T16:00:00Z"},
                {"type": "amend", "ref": _REF, "reason": "New alias.", "content": sample_alert()}]
    c.contents = [validate_content(x) for x in contents]
    plans = [  # (suite, sender, role, recipients, content index)
        (HYBRID, "IT", "officer", ("DE", "FR", "GB"), 0), (CLASSIC, "IT", "officer", ("FR",), 2),
        (HYBRID, "FR", "node", ("IT",), 4), (HYBRID, "DE", "officer", ("CA", "FR", "JP", "US"), 1),
        (CLASSIC, "GB", "node", ("DE", "FR"), 5), (HYBRID, "JP", "officer", ("FR",), 3),
    ]
    for suite, sender, role, to, i in plans:
        signer, cert = (m[sender].officer, m[sender].officer_cert) if role == "officer" else \
            (m[sender].node_signing, m[sender].node_cert)
        raw = seal(c.contents[i], signer=signer, signer_cert=cert, recipients=[m[n].node_cert for n in to],
                   topic="alerts.entity.migrant_smuggling", now=NOW - 60, suite=suite)
        c.packets[raw] = Sealed(frozenset(to), c.contents[i])
    # Certificates, the roster, revocation lists (one with entries, signed like a real one).
    c.certs = [x.raw for code in ("FR", "JP") for x in (m[code].node_cert, m[code].officer_cert)]
    c.rosters = [fed.roster.raw]
    revoked = [Revocation(m["FR"].officer_cert.fp, NOW - 10, "key_compromise"),
               Revocation(hashlib.sha256(b"old").digest(), NOW - 9000, "superseded")]
    c.revocations = [m["FR"].revocations.raw,
                     sign_revocations(m["FR"].root, nation="FR", serial=7, issued=NOW, entries=revoked).raw]
    c.armored = [armor("CERTIFICATE", c.certs[0], ("EXAMPLE ONLY", "FR/fr-node node")),
                 armor("ROSTER", fed.roster.raw, ("federation intelhub-test",)),
                 armor("REVOCATIONS", c.revocations[1]), armor("PACKET", next(iter(c.packets)))]
    # Wire frames of every type, with real packets and certificates inside.
    packet = next(iter(c.packets))
    sig = m["FR"].node_signing.sign(b"challenge")
    c.frames = [
        encode_frame("hello", v=1, hub="hub", roster=fed.roster.fp, challenge=bytes(32), time=NOW),
        encode_frame("auth", cert=m["FR"].node_cert.raw, sig=sig, window=256),
        encode_frame("welcome", nation="FR", session="s-1", time=NOW),
        encode_frame("sub", rid=1, name="main", patterns=["alerts.>", "notices.*.freeze"]),
        encode_frame("subscribed", rid=1, name="main", cursor=42),
        encode_frame("pub", rid=2, packet=packet, cert=m["IT"].officer_cert.raw),
        encode_frame("accepted", rid=2, id=bytes(16), index=7, dup=False, promise="intelhub promise v1\n"),
        encode_frame("deliver", sub="main", index=7, packet=packet, cert=m["IT"].officer_cert.raw,
                     proof={"size": 8, "path": [bytes(32)]}),
        encode_frame("ack", sub="main", indexes=[5, 6, 7]),
        encode_frame("post", rid=3, kind="revocations", data=c.revocations[1]),
        encode_frame("ok", rid=3),
        encode_frame("notice", kind="revocations", data=c.revocations[1]),
        encode_frame("error", rid=4, code="malformed", reason="header: missing or wrong fields"),
    ]
    # Signed notes: checkpoints (one cosigned by a witness), promises, verifier keys.
    witness = Cosigner("fr.intelhub.example/witness", Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
                       MLDSA65PrivateKey.from_seed_bytes(bytes(range(32))))
    for size, t in ((0, NOW), (10, NOW + 1), (2**40, NOW + 2)):
        cp = Checkpoint(ORIGIN, size, hashlib.sha256(b"%d" % size).digest(), t)
        c.checkpoint_bodies.add(cp.body())
        c.checkpoints.append(sign_checkpoint(cp, c.hub))
    c.checkpoints.append(add_signatures(c.checkpoints[1], cosign_checkpoint(
        Checkpoint(ORIGIN, 10, hashlib.sha256(b"10").digest(), NOW + 1), witness, NOW + 5)))
    for index in (0, 1023):
        promise = Promise(ORIGIN, index, hashlib.sha256(b"leaf%d" % index).digest(), NOW, 60)
        c.promise_bodies.add(promise.body())
        c.promises.append(sign_promise(promise, c.hub))
    c.vkeys = c.hub_verifier.vkeys() + witness.verifier().vkeys()
    # Private key files: an EXAMPLE ONLY one in clear, an encrypted one, a signing-only one.
    node = PrivateKeys(SigningKey.from_seed(b"fuzz-node"), KemKey.from_seed(b"fuzz-node"))
    c.key_files = [node.to_file_text(None, ("EXAMPLE ONLY - fuzzing seed",)), node.to_file_text(PASSPHRASE),
                   PrivateKeys(SigningKey.from_seed(b"fuzz-officer")).to_file_text(None, ("EXAMPLE ONLY",))]
    _workdir(workdir)
    c.hub_configs = [_hub_doc(tls=False), _hub_doc(tls=True)]
    c.node_configs = [_node_doc()]
    warm_up(c)
    return c


def make_federation() -> Federation:
    """The federation of the ``fed`` fixture (tests/conftest.py), for runs outside pytest."""
    return create_federation(G7, now=NOW, seed=b"intelhub-tests", name="intelhub-test",
                             suites=(HYBRID.id, CLASSIC.id))


# -- targets: a strategy and a contract per decoder ------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    #: What is fuzzed, for the report.
    decoder: str
    strategy: Callable[[Corpus], st.SearchStrategy[Any]]
    #: Raises :class:`Finding` on a broken contract; returns the outcome (accepted, or the error's name).
    check: Callable[[Corpus, Any], str]
    #: Maps any case to one the decoder's callers can pass it (None: none such), e.g. a key file's
    #: text is ASCII because :func:`hub.keyfiles.load_private_keys` decodes it so.
    normalise: Callable[[Any], Any] | None = None


TARGETS: dict[str, Target] = {}


def target(name: str, decoder: str, strategy: Callable[[Corpus], st.SearchStrategy[Any]],
           normalise: Callable[[Any], Any] | None = None) -> Callable[
        [Callable[[Corpus, Any], str]], Callable[[Corpus, Any], str]]:
    """Register a check with the strategy of its inputs (built once per corpus)."""
    def register(check: Callable[[Corpus, Any], str]) -> Callable[[Corpus, Any], str]:
        def inputs(c: Corpus) -> st.SearchStrategy[Any]:
            cases = strategy(c)
            return cases if normalise is None else cases.map(normalise).filter(lambda x: x is not None)
        TARGETS[name] = Target(name, decoder, cache(inputs), check, normalise)
        return check
    return register


def _utf8_text(text: str) -> str:
    """What a strict UTF-8 file read can give: no lone surrogates."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _msgpack_inputs(seeds: Sequence[bytes], embed: bool = True) -> st.SearchStrategy[bytes]:
    trees = [codec.decode(s) for s in seeds]
    return st.one_of(
        byte_mutants(Seeds(seeds)),
        tree_mutants(Seeds(trees), VALUES, _keys(trees), embed=embed).map(pack),
        st.binary(max_size=64),
    )


# codec ------------------------------------------------------------------------------------


def _codec_inputs(c: Corpus) -> st.SearchStrategy[bytes]:
    seeds = list(c.packets)[:2] + c.frames + c.certs[:1] + [codec.encode(x) for x in c.contents[:3]]
    return st.one_of(_msgpack_inputs(seeds), VALUES.map(pack),
                     st.lists(st.sampled_from(MSGPACK_TOKENS), min_size=1, max_size=6).map(b"".join))


_CANONICAL_TYPES: Final = (type(None), bool, int, str, bytes, list, dict)


def _foreign_types(value: Any) -> str:
    """The name of the first type in ``value`` that canonical msgpack does not allow, or ''."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) not in _CANONICAL_TYPES:
            return type(item).__name__
        if type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return ""


@target("codec", "hub.protocol.codec.decode", _codec_inputs)
def check_codec(c: Corpus, data: bytes) -> str:
    ok, value, outcome = _call("codec.decode", (DecodeError,), codec.decode, data)
    if ok:
        stray = _foreign_types(value)
        _require(not stray, f"codec.decode returned a {stray} for {data[:40]!r}: only nil, bool, int, str, bin, "
                            "array and map are allowed (docs/protocol.md §2 rule 1)")
        _, again, _ = _call("codec.encode of a decoded value", (), codec.encode, value)
        _require(again == data, f"decode accepted a non-canonical encoding: encode(decode(b)) != b for {data[:80]!r}")
    return outcome


# frames -----------------------------------------------------------------------------------


def _frame_inputs(c: Corpus) -> st.SearchStrategy[tuple[bytes, frozenset[str]]]:
    allowed = st.one_of(st.just(frozenset(SCHEMAS)), st.frozensets(st.sampled_from(sorted(SCHEMAS)), min_size=1))
    return st.tuples(_msgpack_inputs(c.frames), allowed)


@target("frames", "hub.protocol.frames.decode_frame", _frame_inputs)
def check_frames(c: Corpus, case: tuple[bytes, frozenset[str]]) -> str:
    data, allowed = case
    ok, f, outcome = _call("decode_frame", (DecodeError,), decode_frame, data, allowed)
    if ok:
        _require(f["t"] in allowed, f"decode_frame returned a {f['t']!r} frame, not allowed here")
        body = {k: v for k, v in f.items() if k != "t"}
        _, again, _ = _call("encode_frame of a decoded frame", (), encode_frame, f["t"], **body)
        _require(again == data, "a decoded frame does not re-encode to its bytes")
    return outcome


# packets ----------------------------------------------------------------------------------


def _packet_inputs(c: Corpus) -> st.SearchStrategy[bytes]:
    seeds = list(c.packets)
    return st.one_of(_msgpack_inputs(seeds), st.sampled_from(seeds))


def _header_bytes(h: Any) -> bytes:
    return codec.encode({
        "v": 1, "suite": h.suite.id, "id": h.id, "sender": {"nation": h.sender, "cert": h.sender_cert},
        "to": [{"nation": r.nation, "key": r.key, "wrap": r.wrap} for r in h.to], "topic": h.topic,
        "created": h.created, "expires": h.expires, "ct": h.ct_digest, "commit": h.commit,
    })


@target("packet", "hub.protocol.envelope.parse_packet", _packet_inputs)
def check_packet(c: Corpus, data: bytes) -> str:
    ok, p, outcome = _call("parse_packet", (DecodeError,), parse_packet, data)
    # parse_packet's fast path (msgspec) may only accept what the strict parse accepts, as the same Packet.
    fast = envelope._parse_fast(data, envelope.MAX_PACKET_SIZE)
    if fast is not None:
        strict_ok, strict, _ = _call("_parse_strict", (DecodeError,), envelope._parse_strict, data,
                                     envelope.MAX_PACKET_SIZE)
        _require(strict_ok and strict == fast, "parse_packet's fast path accepted what the strict parse does not")
    elif data in c.packets:
        _require(False, "parse_packet's fast path refused a sealed packet")
    if ok:
        _require(_header_bytes(p.header) == p.header.raw, "parse_packet accepted a header its fields do not re-encode to")
        again = codec.encode({"v": 1, "header": p.header.raw, "sig": p.sig, "ct": p.ct, "keys": list(p.keys)})
        _require(again == data, "parse_packet accepted a packet its fields do not re-encode to")
    return outcome


def _verify_inputs(c: Corpus) -> st.SearchStrategy[tuple[bytes, int]]:
    return st.tuples(_packet_inputs(c), st.sampled_from((NOW, NOW - 400, NOW + 3 * 365 * 86400)))


_VERIFY_ERRORS: Final = (DecodeError, InvalidPacket, UntrustedSigner)


@target("verify", "hub.protocol.envelope.verify", _verify_inputs)
def check_verify(c: Corpus, case: tuple[bytes, int]) -> str:
    data, now = case
    ok, _, outcome = _call("verify", _VERIFY_ERRORS, verify, data, c.trust, now)
    if data in c.packets:
        _require(ok or now < NOW, f"verify rejected an unchanged sealed packet ({outcome})")
    else:
        _require(not ok, "verify accepted a changed packet")
    return outcome


def _open_inputs(c: Corpus) -> st.SearchStrategy[tuple[bytes, str, str]]:
    nations = st.sampled_from(sorted(G7))
    return st.tuples(_packet_inputs(c), nations, st.one_of(st.none(), nations))


@target("open", "hub.protocol.envelope.open_packet", _open_inputs)
def check_open(c: Corpus, case: tuple[bytes, str, str | None]) -> str:
    """``case``: the packet, the nation opening it, and whose key it uses (None: its own)."""
    data, nation, key_of = case
    kem = c.fed.members[key_of or nation].node_kem
    ok, opened, outcome = _call("open_packet", _VERIFY_ERRORS + (ValidationError,), open_packet, data,
                                nation=nation, kem=kem, trust=c.trust, now=NOW)
    sealed = c.packets.get(data)
    rightful = sealed is not None and nation in sealed.recipients and key_of in (None, nation)
    if ok:
        _require(rightful, "open_packet opened a changed packet, or for a nation or key it was not sealed to")
        _require(opened.content == sealed.content, "open_packet returned other content than was sealed")  # type: ignore[union-attr]
    else:
        _require(not rightful, f"open_packet rejected an unchanged packet for its recipient ({outcome})")
    return outcome


# content ----------------------------------------------------------------------------------


def _content_inputs(c: Corpus) -> st.SearchStrategy[Any]:
    values = st.one_of(VALUES, st.sampled_from(STRINGS))
    return st.one_of(tree_mutants(Seeds(c.contents), values, _keys(c.contents), embed=False, ops=DOC_TREE_OPS + ("swap_str_bin",),
                                  max_ops=4), VALUES)


def _normalised_invariants(out: dict[str, Any]) -> None:
    _, again, _ = _call("validate_content of normalised content", (), validate_content, out)
    _require(again == out, "validate_content is not idempotent: normalising its own output changed it")
    _, encoded, _ = _call("codec.encode of normalised content", (), codec.encode, out)
    _require(codec.decode(encoded) == out, "normalised content does not survive canonical msgpack")
    _, text, _ = _call("json.dumps of normalised content", (), json.dumps, out, ensure_ascii=False)
    _, back, _ = _call("content_from_json of normalised content", (), content_from_json, text)
    _require(back == out, "normalised content does not survive its JSON form")


@target("content", "hub.protocol.content.validate_content", _content_inputs)
def check_content(c: Corpus, obj: Any) -> str:
    ok, out, outcome = _call("validate_content", (ValidationError,), validate_content, obj)
    if ok:
        _normalised_invariants(out)
    return outcome


def _json_inputs(c: Corpus) -> st.SearchStrategy[str]:
    seeds = [json.dumps(x, ensure_ascii=a, indent=i) for x in c.contents for a, i in ((False, 2), (True, None))]
    mutated = _content_inputs(c).map(lambda x: json.dumps(x, default=repr, allow_nan=True))
    return st.one_of(text_mutants(Seeds(seeds), TEXT_TOKENS), mutated, st.text(max_size=64),
                     st.from_regex(r'\{("[a-z_]{1,8}": ?("[^"]{0,8}"|-?[0-9]{1,30}(\.[0-9]+)?(e[0-9]+)?|\[\]|null|true), ?){0,6}\}',
                                   fullmatch=True))


@target("content_json", "hub.protocol.content.content_from_json", _json_inputs)
def check_content_json(c: Corpus, text: str) -> str:
    ok, out, outcome = _call("content_from_json", (ValidationError,), content_from_json, text)
    if ok:
        _normalised_invariants(out)
    return outcome


# certificates, roster, revocations, armor -------------------------------------------------


def _cert_inputs(c: Corpus) -> st.SearchStrategy[bytes]:
    return _msgpack_inputs(c.certs)


@target("cert", "hub.protocol.certs.Certificate.parse", _cert_inputs)
def check_cert(c: Corpus, data: bytes) -> str:
    ok, cert, outcome = _call("Certificate.parse", (DecodeError,), Certificate.parse, data)
    if ok:
        tbs = {"v": 1, "kind": "cert", "serial": cert.serial, "nation": cert.nation, "subject": cert.subject,
               "role": cert.role, "sign": cert.signing.to_wire(), "not_before": cert.not_before,
               "not_after": cert.not_after, "issuer": cert.issuer}
        if cert.kem is not None:
            tbs["kem"] = cert.kem.to_wire()
        _require(codec.encode(tbs) == cert.tbs, "Certificate.parse accepted a tbs its fields do not re-encode to "
                                                "(a field of the wrong type or value passed)")
    return outcome


def _roster_inputs(c: Corpus) -> st.SearchStrategy[bytes]:
    return _msgpack_inputs(c.rosters)


@target("roster", "hub.protocol.roster.Roster.parse", _roster_inputs)
def check_roster(c: Corpus, data: bytes) -> str:
    ok, r, outcome = _call("Roster.parse", (DecodeError,), Roster.parse, data)
    if ok:
        tbs = roster_tbs(federation=r.federation, serial=r.serial, issued=r.issued,
                         nations=[(n.code, n.name, n.root) for n in r.nations.values()], hub_name=r.hub_name,
                         hub_key=r.hub_key, suites=list(r.suites))
        _require(tbs == r.tbs, "Roster.parse accepted a tbs its fields do not re-encode to "
                               "(a field of the wrong type or value passed)")
    return outcome


def _revocation_inputs(c: Corpus) -> st.SearchStrategy[bytes]:
    return _msgpack_inputs(c.revocations)


@target("revocations", "hub.protocol.roster.RevocationList.parse", _revocation_inputs)
def check_revocations(c: Corpus, data: bytes) -> str:
    ok, rl, outcome = _call("RevocationList.parse", (DecodeError,), RevocationList.parse, data)
    if ok:
        tbs = codec.encode({"v": 1, "kind": "revocations", "nation": rl.nation, "serial": rl.serial,
                            "issued": rl.issued, "revoked": [{"cert": e.cert, "at": e.at, "reason": e.reason}
                                                             for e in rl.entries.values()]})
        _require(tbs == rl.tbs, "RevocationList.parse accepted a tbs its fields do not re-encode to "
                                "(a field of the wrong type or value passed)")
    return outcome


_ARMOR_KINDS: Final = ("CERTIFICATE", "ROSTER", "REVOCATIONS", "PACKET")


def _armor_inputs(c: Corpus) -> st.SearchStrategy[tuple[bytes, str]]:
    texts = text_mutants(Seeds(c.armored), TEXT_TOKENS).map(lambda s: s.encode("utf-8", "surrogatepass"))
    raw = byte_mutants(Seeds([s.encode() for s in c.armored]), tokens=tuple(t.encode("utf-8", "surrogatepass")
                                                                     for t in TEXT_TOKENS))
    return st.tuples(st.one_of(texts, raw, st.binary(max_size=64)), st.sampled_from(_ARMOR_KINDS))


@target("armor", "hub.protocol.armor.dearmor", _armor_inputs)
def check_armor(c: Corpus, case: tuple[bytes, str]) -> str:
    data, kind = case
    ok, out, outcome = _call("dearmor", (KeyFileError,), dearmor, kind, data)
    if ok:
        _require(type(out) is bytes, "dearmor returned something other than bytes")
        _, back, _ = _call("dearmor of armor", (), dearmor, kind, armor(kind, out, ("comment",)).encode())
        _require(back == out, "dearmor(armor(x)) != x")
    return outcome


# signed notes: checkpoints, promises, verifier keys ---------------------------------------

_NOTE_TOKENS: Final = TEXT_TOKENS + (f"\u2014 {ORIGIN} ", "\u2014 other.example/key AAAAAQ==\n")


def _sig_line_mutants(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    """A note whose signature line blob (key ID || signature) has its bytes mutated."""
    @st.composite
    def mutate(draw: Any) -> str:
        note = draw(st.sampled_from(seeds))
        lines = note.split("\n")
        sig_lines = [i for i, line in enumerate(lines) if line.startswith("\u2014 ")]
        i = draw(st.sampled_from(sig_lines))
        name, _, blob = lines[i][2:].partition(" ")
        new = draw(byte_mutants(Seeds([base64.b64decode(blob)]), tokens=(bytes(4), b"\xff" * 4), max_ops=2))
        lines[i] = f"\u2014 {name} {base64.b64encode(new).decode()}"
        return "\n".join(lines)
    return mutate()


def _note_inputs(seeds: Sequence[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        text_mutants(Seeds(seeds), _NOTE_TOKENS), _sig_line_mutants(seeds),
        byte_mutants(Seeds([s.encode() for s in seeds]), tokens=(b"\n", b"\xe2\x80\x94 ", b"\xff", b"\xed\xa0\x80")),
        st.sampled_from(seeds), st.text(max_size=64),
    )


def _checkpoint_body_inputs(c: Corpus) -> st.SearchStrategy[str]:
    seeds = sorted(c.checkpoint_bodies)
    return st.one_of(text_mutants(Seeds(seeds), TEXT_TOKENS), st.text(max_size=64),
                     st.from_regex(r"[!-~]{1,20}\n(0|[1-9][0-9]{0,20})\n[A-Za-z0-9+/]{43}=\ntime [0-9]{1,20}\n",
                                   fullmatch=True))


@target("checkpoint_body", "hub.protocol.checkpoint.parse_checkpoint_body", _checkpoint_body_inputs)
def check_checkpoint_body(c: Corpus, text: str) -> str:
    ok, cp, outcome = _call("parse_checkpoint_body", (LogError,), parse_checkpoint_body, text)
    if ok:
        _require(cp.body() == text, "parse_checkpoint_body accepted a text its checkpoint does not re-serialise to")
    return outcome


def _checkpoint_inputs(c: Corpus) -> st.SearchStrategy[str | bytes]:
    return _note_inputs(c.checkpoints)


def _note_text(note: str | bytes) -> str:
    return note.decode("utf-8", "replace") if isinstance(note, bytes) else note


@target("checkpoint", "hub.protocol.checkpoint.open_checkpoint", _checkpoint_inputs)
def check_checkpoint(c: Corpus, note: str | bytes) -> str:
    ok, cp, outcome = _call("open_checkpoint", (LogError,), open_checkpoint, note, c.hub_verifier, ORIGIN)
    if ok:
        _require(cp.body() in c.checkpoint_bodies, "open_checkpoint accepted a checkpoint the hub never signed")
    elif _note_text(note) in c.checkpoints:
        raise Finding(f"open_checkpoint rejected a checkpoint the hub signed ({outcome})")
    return outcome


def _promise_inputs(c: Corpus) -> st.SearchStrategy[str | bytes]:
    return _note_inputs(c.promises + c.checkpoints[:1])


@target("promise", "hub.protocol.promise.verify_promise", _promise_inputs)
def check_promise(c: Corpus, note: str | bytes) -> str:
    ok, promise, outcome = _call("verify_promise", (LogError,), verify_promise, note, c.hub_verifier, ORIGIN)
    if ok:
        _require(promise.body() in c.promise_bodies, "verify_promise accepted a promise the hub never signed")
    return outcome


def _split_inputs(c: Corpus) -> st.SearchStrategy[str | bytes]:
    return _note_inputs(c.checkpoints + c.promises)


@target("note", "hub.protocol.note.split_note", _split_inputs)
def check_note(c: Corpus, note: str | bytes) -> str:
    ok, parts, outcome = _call("split_note", (LogError,), split_note, note)
    if ok:
        text, sigs = parts
        again = text + "\n" + "".join(s.line() for s in sigs)
        _require(again == _note_text(note), "split_note accepted a note its parts do not re-serialise to")
    return outcome


def _vkey_inputs(c: Corpus) -> st.SearchStrategy[tuple[str, bool]]:
    @st.composite
    def blob_mutants(draw: Any) -> str:
        """A vkey whose key bytes are mutated, with the key ID recomputed so parsing goes deeper."""
        name, _, b64 = draw(st.sampled_from(c.vkeys)).split("+", 2)
        blob = draw(byte_mutants(Seeds([base64.b64decode(b64)]), tokens=(b"\x01", b"\x04", b"\xff"), max_ops=2))
        kid = int.from_bytes(hashlib.sha256(name.encode() + b"\n" + blob).digest()[:4], "big")
        return f"{name}+{kid:08x}+{base64.b64encode(blob).decode()}"
    vkeys = st.one_of(text_mutants(Seeds(c.vkeys), TEXT_TOKENS), blob_mutants(), st.text(max_size=40))
    return st.tuples(vkeys, st.booleans())


@target("vkey", "hub.protocol.note.NoteVerifier.from_vkey", _vkey_inputs)
def check_vkey(c: Corpus, case: tuple[str, bool]) -> str:
    vkey, cosigner = case
    cls = CosignatureVerifier if cosigner else NoteVerifier
    ok, v, outcome = _call(f"{cls.__name__}.from_vkey", (LogError,), cls.from_vkey, vkey)
    if ok:
        _require(v.vkeys() == [vkey], "from_vkey accepted a vkey its verifier does not re-serialise to")
    return outcome


# private key files ------------------------------------------------------------------------


def _key_inputs(c: Corpus) -> st.SearchStrategy[tuple[str, bytes | None]]:
    texts = st.one_of(text_mutants(Seeds(c.key_files), TEXT_TOKENS), pem_mutants(Seeds(c.key_files)), st.text(max_size=40))
    return st.tuples(texts, st.sampled_from((PASSPHRASE, None, b"", b"wrong")))


@target("keys", "hub.protocol.keys.parse_private_keys", _key_inputs,
        normalise=lambda case: (case[0].encode("ascii", "ignore").decode(), case[1]))
def check_keys(c: Corpus, case: tuple[str, bytes | None]) -> str:
    text, passphrase = case
    return _call("parse_private_keys", (KeyFileError,), parse_private_keys, text, passphrase, "fuzz.key")[2]


# configuration files ----------------------------------------------------------------------


def _config_texts(docs: Sequence[dict[str, Any]], pretty: Sequence[str]) -> st.SearchStrategy[str]:
    values = st.one_of(TOML_VALUES, st.sampled_from(STRINGS))
    mutated = tree_mutants(Seeds(docs), values, _keys(docs), embed=False, ops=DOC_TREE_OPS, max_ops=3, root=False)
    seeds = [toml_dumps(d) for d in docs] + list(pretty)
    return st.one_of(mutated.map(toml_dumps), text_mutants(Seeds(seeds), TEXT_TOKENS),
                     st.from_regex(r'(\[[a-z.]{1,12}\]\n)?([a-z_]{1,16} = ("[^"\n]{0,12}"|-?[0-9]{1,20}|inf|nan|true)\n){1,4}',
                                   fullmatch=True))


def _hub_config_inputs(c: Corpus) -> st.SearchStrategy[str]:
    return _config_texts(c.hub_configs, [_HUB_TOML])


@target("hub_config", "hub.server.config.parse_config", _hub_config_inputs, normalise=_utf8_text)
def check_hub_config(c: Corpus, text: str) -> str:
    ok, cfg, outcome = _call("parse_config", (ConfigError,), parse_config, text, c.workdir)
    if ok:
        _require(0 <= cfg.listen_port < 65536, f"parse_config accepted port {cfg.listen_port}")
        for name, value in vars(cfg.limits).items():
            _require(value > 0, f"parse_config accepted limits.{name} = {value!r} (must be greater than 0)")
        _require(cfg.checkpoint_interval > 0, f"parse_config accepted checkpoint_interval = {cfg.checkpoint_interval!r}")
    return outcome


def _node_config_inputs(c: Corpus) -> st.SearchStrategy[str]:
    return _config_texts(c.node_configs, [_NODE_TOML])


@target("node_config", "clients.node.config.parse_node_config", _node_config_inputs, normalise=_utf8_text)
def check_node_config(c: Corpus, text: str) -> str:
    ok, cfg, outcome = _call("parse_node_config", (ConfigError,), parse_node_config, text, c.workdir / "node.toml")
    if ok:
        _require(re.fullmatch(r"[A-Z]{2}", cfg.nation) is not None,
                 f"parse_node_config accepted nation {cfg.nation!r} (not a two-letter code)")
        _require(1 <= cfg.window <= 4096, f"parse_node_config accepted window {cfg.window!r}")
    return outcome


def via_toml(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``doc`` as :mod:`tomllib` would hand it over (None if TOML cannot hold it): the
    filter and sink parsers only ever see what a TOML file can say."""
    try:
        return tomllib.loads(toml_dumps(doc))
    except tomllib.TOMLDecodeError:
        return None


def _doc_inputs(c: Corpus) -> st.SearchStrategy[dict[str, Any]]:
    values = st.one_of(TOML_VALUES, st.sampled_from(STRINGS))
    return tree_mutants(Seeds(c.node_configs), values, _keys(c.node_configs), embed=False, ops=DOC_TREE_OPS,
                        max_ops=4, root=False)


def _filter_inputs(c: Corpus) -> st.SearchStrategy[tuple[dict[str, Any], str, str]]:
    ids = text_mutants(Seeds([_IDS]), TEXT_TOKENS)
    names = text_mutants(Seeds([_NAMES]), TEXT_TOKENS)
    return st.tuples(_doc_inputs(c), st.one_of(st.just(_IDS), ids), st.one_of(st.just(_NAMES), names))


def _filter_case(case: tuple[dict[str, Any], str, str]) -> tuple[dict[str, Any], str, str] | None:
    doc = via_toml(case[0])
    return None if doc is None else (doc, _utf8_text(case[1]), _utf8_text(case[2]))


@target("filters", "clients.node.filters.FilterSet.from_config", _filter_inputs, normalise=_filter_case)
def check_filters(c: Corpus, case: tuple[dict[str, Any], str, str]) -> str:
    """``case``: the node document, and the texts of its two watch list files."""
    doc, ids, names = case
    (c.workdir / "fuzz-ids.txt").write_text(ids, "utf-8")
    (c.workdir / "fuzz-names.txt").write_text(names, "utf-8")
    return _call("FilterSet.from_config", (ConfigError,), FilterSet.from_config, doc, c.workdir)[2]


def _sink_inputs(c: Corpus) -> st.SearchStrategy[dict[str, Any]]:
    return _doc_inputs(c)


@target("sinks", "clients.node.sinks.sinks_from_config", _sink_inputs, normalise=via_toml)
def check_sinks(c: Corpus, doc: dict[str, Any]) -> str:
    return _call("sinks_from_config", (ConfigError,), sinks_from_config, doc, c.workdir)[2]


def warm_up(c: Corpus) -> None:
    """Run every decoder once on a valid seed, so lazy imports and caches don't count as hangs."""
    packet = next(iter(c.packets))
    verify(packet, c.trust, NOW)
    open_packet(packet, nation="FR", kem=c.fed.members["FR"].node_kem, trust=c.trust, now=NOW)
    content_from_json(json.dumps(c.contents[2]))
    parse_private_keys(c.key_files[1], PASSPHRASE)
    FilterSet.from_config(_node_doc(), c.workdir)
    sinks_from_config(_node_doc(), c.workdir)
    parse_config(toml_dumps(c.hub_configs[1]), c.workdir)
    parse_node_config(_NODE_TOML, c.workdir / "node.toml")
    open_checkpoint(c.checkpoints[0], c.hub_verifier, ORIGIN)


def input_bytes(case: Any) -> bytes:
    """The main input of a case as bytes (what bench/fuzz.py saves as ``<target>-<n>.bin``)."""
    if isinstance(case, tuple):
        case = case[0]
    if isinstance(case, bytes):
        return case
    if isinstance(case, str):
        return case.encode("utf-8", "surrogatepass")
    if isinstance(case, dict):
        return toml_dumps(case).encode("utf-8", "surrogatepass")
    return repr(case).encode("utf-8", "surrogatepass")


_TAGS: Final = ("$bytes", "$tuple", "$frozenset", "$float", "$dict", "$datetime", "$date", "$time")


def dump_case(case: Any) -> Any:
    """A JSON form of a case that :func:`load_case` turns back into the same value: JSON values
    stand for themselves, other values are tagged (``{"$bytes": base64}``, ``{"$tuple": [...]}``)."""
    if isinstance(case, bytes):
        return {"$bytes": base64.b64encode(case).decode()}
    if isinstance(case, tuple):
        return {"$tuple": [dump_case(x) for x in case]}
    if isinstance(case, frozenset):
        return {"$frozenset": sorted(case)}
    if isinstance(case, dict):
        if len(case) == 1 and next(iter(case)) in _TAGS:
            return {"$dict": [[k, dump_case(v)] for k, v in case.items()]}
        return {k: dump_case(v) for k, v in case.items()}
    if isinstance(case, list):
        return [dump_case(x) for x in case]
    if isinstance(case, float):
        return {"$float": repr(case)}
    for kind in (datetime.datetime, datetime.date, datetime.time):
        if isinstance(case, kind):
            return {f"${kind.__name__}": case.isoformat()}
    return case


def load_case(doc: Any) -> Any:
    if isinstance(doc, list):
        return [load_case(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    if len(doc) != 1 or next(iter(doc)) not in _TAGS:
        return {k: load_case(v) for k, v in doc.items()}
    (kind, value), = doc.items()
    if kind == "$bytes":
        return base64.b64decode(value)
    if kind == "$tuple":
        return tuple(load_case(x) for x in value)
    if kind == "$frozenset":
        return frozenset(value)
    if kind == "$dict":
        return {k: load_case(v) for k, v in value}
    if kind == "$float":
        return float(value)
    return getattr(datetime, kind[1:]).fromisoformat(value)


# -- the tests: a small, derandomised budget per target -------------------------------------


@pytest.fixture(scope="module")
def corpus(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(fed, tmp_path_factory.mktemp("fuzz"))


def ci(max_examples: int) -> Any:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


#: Examples per target in ``make test``: about a second each (``bench/fuzz.py`` runs longer).
CI_EXAMPLES: Final[dict[str, int]] = {
    "codec": 300, "frames": 200, "packet": 150, "verify": 150, "open": 150, "content": 200, "content_json": 150,
    "cert": 200, "roster": 150, "revocations": 200, "armor": 200, "checkpoint_body": 200, "checkpoint": 150,
    "promise": 150, "note": 200, "vkey": 200, "keys": 100, "hub_config": 200, "node_config": 200, "filters": 100,
    "sinks": 150,
}


@pytest.mark.parametrize("name", list(CI_EXAMPLES))
def test_fuzz(corpus: Corpus, name: str) -> None:
    """The decoder ``name`` keeps its contract on every input drawn (see the module docstring)."""
    t = TARGETS[name]

    @ci(CI_EXAMPLES[name])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        t.check(corpus, data.draw(t.strategy(corpus), label=t.decoder))

    run()


def test_every_target_runs_in_ci() -> None:
    assert set(CI_EXAMPLES) == set(TARGETS)


#: Inputs that once broke a contract, kept as regression seeds (``<target>/<what>.json``, written by
#: bench/fuzz.py as ``*.case.json``). Each is replayed on every run, whatever hypothesis draws.
FUZZ_CORPUS: Final[Path] = Path(__file__).parent / "fuzz_corpus"


@pytest.mark.parametrize("path", sorted(FUZZ_CORPUS.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fuzz_corpus(corpus: Corpus, path: Path) -> None:
    doc = json.loads(path.read_text("utf-8"))
    try:
        TARGETS[path.parent.name].check(corpus, load_case(doc["case"]))
    except Finding as exc:
        raise Finding(f"{exc}\n  {path.parent.name}/{path.name}: {doc.get('finding', '')}\n"
                      f"  proposed fix: {doc.get('proposed_fix', '')}", exc.kind) from exc
