"""Paths named in configuration files: resolved and checked without letting OS errors escape."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.protocol.errors import ConfigError

MAX_PATH = 4096


def config_path(base: Path, value: str, where: str, *, resolve: bool = True) -> Path:
    """``value`` relative to ``base``; a NUL, an absurd length or an OS refusal is a ConfigError.
    Links are resolved unless not ``resolve`` (the path is then only made absolute, as written)."""
    if "\x00" in value:
        raise ConfigError(f"{where}: the path contains a NUL character")
    if len(value) > MAX_PATH:
        raise ConfigError(f"{where}: the path is longer than {MAX_PATH} characters")
    try:
        return (base / value).resolve() if resolve else Path.cwd() / base / value
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{where}: {value[:80]!r} is not a usable path ({exc})") from None


def exists(path: Path, where: str, *, kind: str = "any") -> bool:
    """Whether ``path`` exists (as a file or directory when ``kind`` says); OS errors become ConfigError."""
    try:
        if kind == "dir":
            return path.is_dir()
        if kind == "file":
            return path.is_file()
        return path.exists()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise ConfigError(f"{where}: cannot check {str(path)[:80]!r} ({why}); give a shorter, valid path") from None


def read_config(path: Path) -> str:
    """The text of a configuration file; missing, unreadable or not UTF-8 is a ConfigError."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None


def parse_toml(text: str, source: str, tables: Sequence[str]) -> dict[str, Any]:
    """A configuration file's TOML, whose top level may hold only ``tables``; otherwise a ConfigError
    that says what is wrong in words (not Python's)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    except ValueError:  # Python's own limit on integer digits, hit while parsing
        raise ConfigError(f"{source}: a number in it has thousands of digits; no setting takes such a value") \
            from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{source}: arrays or tables nested hundreds deep; no setting takes such a value") \
            from None
    for k in doc:
        if k not in tables:
            hint = difflib.get_close_matches(k, tables, n=1)
            raise ConfigError(f"{source}: unknown table [{k}]" + (f" (did you mean [{hint[0]}]?)" if hint else
                                                               f"; the tables are {', '.join(f'[{t}]' for t in tables)}"))
    return doc
