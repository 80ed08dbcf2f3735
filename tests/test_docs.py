"""Docs that are tested: every CLI command has help text and is documented in README.md or docs/."""

from __future__ import annotations

from pathlib import Path

import click

from clients.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def walk(group: click.Group, ctx: click.Context, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        path = f"{prefix} {name}"
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            out.extend(walk(cmd, click.Context(cmd, info_name=name, parent=ctx), path))
    return out


def all_commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli, info_name="intelhub")
    return walk(cli, ctx, "intelhub")


def test_every_command_has_help() -> None:
    missing = [path for path, cmd in all_commands() if not (cmd.help or cmd.short_help or "").strip()]
    assert not missing, f"commands without help: {missing}"


def test_every_option_has_help() -> None:
    missing = []
    for path, cmd in all_commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip() and not p.is_flag \
                    and p.name not in ("help",) and not p.show_default:
                missing.append(f"{path} {p.opts[0]}")
    assert not missing, f"options without help: {missing}"


def test_every_command_is_documented() -> None:
    text = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    leaves = [path for path, cmd in all_commands() if not isinstance(cmd, click.Group)]
    missing = [path for path in leaves if path not in text]
    assert not missing, f"commands not shown in README.md or docs/: {missing}"
