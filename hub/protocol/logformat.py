"""What the hub's log is made of (docs/protocol.md §9): its origin, its leaves, batch promises.

One definition for the hub that writes them and for the nodes and auditors that read
them. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
from typing import Final

from . import codec
from .checkpoint import parse_decimal, parse_hash, parse_keyword
from .errors import LogError
from .merkle import leaf_hash
from .note import check_name

LEAF_VERSION: Final[int] = 1
PROMISE_BATCH_HEADER: Final[str] = "intelhub promise batch v1"
PROMISE_BATCH_MAX: Final[int] = 64


def log_origin(hub_name: str) -> str:
    """The log's origin and the hub's key name in notes: ``<roster hub name>/log`` (§9.1)."""
    return f"{hub_name}/log"


def leaf_data(header: bytes, time: int) -> bytes:
    """A leaf: ``E({header, time, v: 1})``, the signed header and when the hub accepted it (§9.2)."""
    return codec.encode({"header": header, "time": time, "v": LEAF_VERSION})


def leaf_hash_for(header: bytes, time: int) -> bytes:
    return leaf_hash(leaf_data(header, time))


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


def batch_promise_body(origin: str, now: int, mmd: int, entries: list[tuple[int, int, bytes]]) -> str:
    """The text of a batch promise (§9.4): one ``<index> <time> <leaf hash>`` line per leaf."""
    lines = [f"{i} {t} {b64(h)}" for i, t, h in entries]
    return f"{PROMISE_BATCH_HEADER}\n{origin}\ntime {now}\nmmd {mmd}\n" + "".join(x + "\n" for x in lines)


def batch_promise_entries(text: str, origin: str) -> tuple[int, int, dict[int, tuple[int, bytes]]]:
    """Parse a batch promise text: (time, mmd, {index: (accepted_at, leaf hash)})."""
    if not text.endswith("\n"):
        raise LogError("batch promise must end with a newline")
    lines = text[:-1].split("\n")
    if not 5 <= len(lines) <= 4 + PROMISE_BATCH_MAX or lines[0] != PROMISE_BATCH_HEADER:
        raise LogError(f"not a batch promise of 1-{PROMISE_BATCH_MAX} leaves")
    if check_name(lines[1], "promise origin") != origin:
        raise LogError(f"promise is for log {lines[1]!r}, expected {origin!r}")
    t = parse_keyword(lines[2], "time", "batch promise")
    mmd = parse_keyword(lines[3], "mmd", "batch promise")
    entries: dict[int, tuple[int, bytes]] = {}
    last = -1
    for line in lines[4:]:
        parts = line.split(" ")
        if len(parts) != 3:
            raise LogError(f"batch promise line {line[:40]!r} is not '<index> <time> <leaf hash>'")
        index = parse_decimal(parts[0], "batch promise index")
        if index <= last:
            raise LogError("batch promise indexes must be strictly increasing")
        last = index
        entries[index] = (parse_decimal(parts[1], "batch promise leaf time"), parse_hash(parts[2], "leaf hash"))
    return t, mmd, entries
