"""Options and output helpers shared by the CLI modules (kept free of heavy imports)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(f)


def trust_option(f: F) -> F:
    return click.option(
        "--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path), envvar="INTELHUB_TRUST",
        show_envvar=True, required=True,
        help="Federation directory with roster.txt, the certificates and revocation lists.",
    )(f)


def now() -> int:
    return int(time.time())


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned table for people (no dependency needed for this)."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_nations(value: str, members: Sequence[str], *, exclude: str | None = None, field: str = "--to") -> list[str]:
    """``all`` or a comma list of nation codes, checked against the roster."""
    if value.strip().lower() == "all":
        return [n for n in members if n != exclude]
    out = []
    for part in value.split(","):
        code = part.strip().upper()
        if not code:
            continue
        if code not in members:
            raise click.BadParameter(f"{code!r} is not a member (members: {', '.join(members)}; or 'all')",
                                     param_hint=field)
        if code not in out:
            out.append(code)
    if not out:
        raise click.BadParameter("name at least one nation, e.g. FR,DE, or 'all'", param_hint=field)
    return out
