"""Paths named in configuration files: resolved and checked without letting OS errors escape."""

from __future__ import annotations

from pathlib import Path

from hub.protocol.errors import ConfigError

MAX_PATH = 4096


def config_path(base: Path, value: str, where: str) -> Path:
    """``value`` relative to ``base``; a NUL, an absurd length or an OS refusal is a ConfigError."""
    if "\x00" in value:
        raise ConfigError(f"{where}: the path contains a NUL character")
    if len(value) > MAX_PATH:
        raise ConfigError(f"{where}: the path is longer than {MAX_PATH} characters")
    try:
        return (base / value).resolve()
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
        raise ConfigError(f"{where}: cannot check {str(path)[:80]!r} ({exc.__class__.__name__})") from None


def read_config(path: Path) -> str:
    """The text of a configuration file; missing, unreadable or not UTF-8 is a ConfigError."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
