"""Canonical msgpack: one encoding per value, and a strict decoder. No I/O.

The rules are in docs/protocol.md §2 ("Canonical encoding"). In short: maps have
string keys in ascending code-point order with no duplicates; integers and
lengths use their shortest form; strings are UTF-8 ``str``, byte strings ``bin``;
no floats, no extension types; nesting at most :data:`MAX_DEPTH`; nothing after
the value. A decoder MUST reject anything else, and does so before the caller
does any work with the value.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import msgpack

from .errors import DecodeError

#: Deepest nesting of arrays/maps accepted anywhere (the content model needs 5).
MAX_DEPTH: Final[int] = 12
#: Default size limit of one encoded value, in bytes.
MAX_SIZE: Final[int] = 1 << 20
#: Most elements in one array or map.
MAX_ITEMS: Final[int] = 4096

_INT_MIN: Final[int] = -(1 << 63)
_INT_MAX: Final[int] = (1 << 64) - 1


class _Packer(threading.local):
    # One Packer per thread: msgpack.packb builds a new one per call, which costs a third of
    # packing a packet header. Not shared across threads: a Packer holds its buffer.
    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True).pack


_PACKER: Final = _Packer()


def pack_as_is(obj: Any) -> bytes:
    """msgpack of ``obj`` with maps in their own key order, no checks: for values built in canonical
    order (or to compare with their canonical encoding). :func:`encode` is the general way."""
    return _PACKER.pack(obj)


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"extension type {code} is not allowed")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # Keys must be strictly ascending: this rejects duplicates and any
    # non-canonical order in one comparison per key.
    prev: str | None = None
    for key, _ in pairs:
        if type(key) is not str:
            raise DecodeError(f"map key {key!r} is not a string")
        if prev is not None and key <= prev:
            if key == prev:
                raise DecodeError(f"duplicate map key {key!r}")
            raise DecodeError(f"map keys out of canonical order at {key!r}")
        prev = key
    return dict(pairs)


#: Scalar types a decoded value may hold (rule 1); msgpack's own Timestamp extension is not one.
_LEAVES: Final = frozenset({str, bytes, int, bool, type(None)})


def _bad_type(t: type) -> str:
    if t is float:
        return "floating-point numbers are not allowed"
    return f"type {t.__name__} is not allowed (only nil, bool, int, str, bin, array, map)"


def _check_tree(obj: Any, max_depth: int) -> None:
    """Reject floats, non-string or unsorted map keys, and excessive depth (iteratively).

    Runs on every decoded frame, so it avoids per-key Python loops: unpackb's
    strict_map_key already limits keys to str/bytes, a str/bytes mix makes
    sorted() raise, and the first key's type settles the rest.
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    push = stack.append
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            if item:
                keys = list(item)
                try:
                    ordered = keys == sorted(keys)
                except TypeError:
                    ordered = False
                if type(keys[0]) is not str:
                    raise DecodeError(f"map key {keys[0]!r} is not a string")
                if not ordered:
                    raise DecodeError("map keys out of canonical order (or not all strings)")
            children: Any = item.values()
        else:
            children = item
        if depth > max_depth:
            raise DecodeError(f"nesting deeper than {max_depth} levels")
        for child in children:
            ct = type(child)
            if ct is dict or ct is list:
                push((child, depth + 1))
            elif ct not in _LEAVES:
                raise DecodeError(_bad_type(ct))


def unpack_loose(data: bytes, *, max_size: int = MAX_SIZE, max_items: int = MAX_ITEMS) -> Any:
    """msgpack's own decoding under :func:`decode`'s limits, without its canonical checks; raises
    whatever msgpack raises. For a quick look at a value that is decoded strictly before anything
    read from it is trusted (and, inside :func:`decode`, the first step of that)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_reject_ext, max_str_len=max_size,
                           max_bin_len=max_size, max_array_len=max_items, max_map_len=max_items)


def decode(
    data: bytes,
    *,
    max_size: int = MAX_SIZE,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
    tree: bool = True,
) -> Any:
    """Decode one canonical value, or raise :class:`DecodeError` saying what is wrong.

    ``tree=False`` leaves out the walk that checks map key order, value types and depth, for
    a caller with a closed schema that checks the key order of every map and the type of every
    value itself (the packet and its header, on every packet). Everything else is still checked.
    """
    if type(data) is not bytes:  # one test on the hot path, where it always is
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if not 0 < len(data) <= max_size:
        raise DecodeError(f"value is {len(data)} bytes, over the limit of {max_size}" if data else "empty input")
    try:
        # Declared lengths are capped before any allocation by the max_* limits. No per-map
        # hook on this hot path: key order is checked by _check_tree, duplicates by re-encoding.
        obj = unpack_loose(data, max_size=max_size, max_items=max_items)
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the value") from None
    except UnicodeDecodeError:
        raise DecodeError("a string is not valid UTF-8") from None
    except msgpack.StackError:
        raise DecodeError(f"nesting deeper than {max_depth} levels") from None
    except (ValueError, TypeError, OverflowError) as exc:
        msg = str(exc)
        if "incomplete" in msg or "insufficient" in msg:
            raise DecodeError("truncated input") from None
        if "map key" in msg:
            raise DecodeError("a map key is not a string") from None
        raise DecodeError(f"not valid msgpack ({msg})") from None
    t = type(obj)
    if t is dict or t is list:
        if tree:
            _check_tree(obj, max_depth)
    elif t not in _LEAVES:
        raise DecodeError(_bad_type(t))
    # Shortest-form integers, lengths and str/bin choice: the only encoding of
    # the decoded value must be the input itself.
    if _PACKER.pack(obj) != data:
        # Slow path, errors only: name a duplicate key precisely if that is the cause.
        try:
            msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_pairs,
                            max_str_len=max_size, max_bin_len=max_size, max_array_len=max_items, max_map_len=max_items)
        except DecodeError:
            raise
        except Exception:  # noqa: BLE001 - already known to be malformed
            pass
        raise DecodeError("not in canonical form (re-encoding differs)")
    return obj


def _canon(obj: Any, depth: int) -> Any:
    t = type(obj)
    # Depth counts containers only, exactly as decode() does: what decodes also encodes.
    if (t is dict or t is list or t is tuple) and depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    if t is dict:
        out = {}
        for key in sorted(obj):
            if type(key) is not str:
                raise ValueError(f"map key {key!r} is not a string")
            out[key] = _canon(obj[key], depth + 1)
        return out
    if t is list or t is tuple:
        return [_canon(v, depth + 1) for v in obj]
    if t is bytearray or t is memoryview:
        return bytes(obj)
    if t is int:
        if not _INT_MIN <= obj <= _INT_MAX:
            raise ValueError(f"integer {obj} out of range")
        return obj
    if t is str or t is bytes or t is bool or obj is None:
        return obj
    raise ValueError(f"cannot encode a {t.__name__} canonically")


def canonical(obj: Any) -> Any:
    """``obj`` with every map's keys sorted and types checked (what :func:`encode` packs)."""
    return _canon(obj, 2)


def encode(obj: Any) -> bytes:
    """The one canonical encoding of ``obj`` (dict keys are sorted here)."""
    return _PACKER.pack(_canon(obj, 1))
