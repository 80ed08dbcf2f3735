"""Topic patterns as in NATS: ``*`` matches one word, ``>`` (last) matches one or more."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

from .errors import ValidationError

_WORD: Final = re.compile(r"[a-z0-9_-]{1,32}")


def check_pattern(pattern: str, path: str = "pattern") -> str:
    words = pattern.split(".")
    if not 0 < len(words) <= 8 or len(pattern) > 128:
        raise ValidationError(path, f"{pattern!r}: use 1-8 dot-separated words")
    for i, w in enumerate(words):
        if w == ">" and i != len(words) - 1:
            raise ValidationError(path, f"{pattern!r}: '>' may only be the last word")
        if w not in ("*", ">") and not _WORD.fullmatch(w):
            raise ValidationError(path, f"{pattern!r}: word {w!r} is not a-z 0-9 _ - (or * or >)")
    return pattern


@lru_cache(maxsize=4096)
def matches(pattern: str, topic: str) -> bool:
    pw, tw = pattern.split("."), topic.split(".")
    for i, p in enumerate(pw):
        if p == ">":
            return len(tw) > i
        if i >= len(tw) or (p != "*" and p != tw[i]):
            return False
    return len(pw) == len(tw)


def any_match(patterns: Iterable[str], topic: str) -> bool:
    return any(matches(p, topic) for p in patterns)


@lru_cache(maxsize=4096)
def any_match_cached(patterns: tuple[str, ...], topic: str) -> bool:
    """:func:`any_match` remembered: the hub asks it for every packet and every subscription."""
    return any_match(patterns, topic)
