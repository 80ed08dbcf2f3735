"""Where the CLI finds the hub, your keys and your node's store: flags, environment, a config file.

Precedence: a command-line flag, then its environment variable (both shown in
``--help``), then the config file (``--config`` / $INTELHUB_CONFIG), e.g.::

    [officer]
    nation = "IT"
    hub = "http://127.0.0.1:8443"
    key = "keys/example/IT/officer.key"
    cert = "keys/example/IT/officer.cert"
    trust = "keys/example"
    store = "run/demo/IT/store.db"     # your national node's store (search, status)

    [defaults]                         # used when a publish flag is not given
    tlp = "AMBER"
    handling = ["H2"]
    source = "B"
    information = "2"
    to = "all"

Relative paths in the file are relative to the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from hub.confpath import config_path, parse_toml
from hub.protocol.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_PATHS = ("key", "cert", "trust", "store")
_FIELDS = {"nation", "hub", *_PATHS}
_DEFAULTS = {"tlp", "handling", "source", "information", "to", "topic", "severity", "category", "suite"}


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    source: str = "flags and environment"

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def need(self, name: str) -> Any:
        v = self.values.get(name)
        if v is None:
            env = f"INTELHUB_{name.upper()}"
            raise click.UsageError(
                f"no {name} configured: pass --{name}, set ${env}, or put {name} in the [officer] section of "
                "the config file (--config / $INTELHUB_CONFIG)")
        return v


def _load_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        doc = parse_toml(path.read_text("utf-8"), str(path), ("officer", "defaults"))
    except FileNotFoundError:
        raise click.BadParameter(f"{path} does not exist", param_hint="--config") from None
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        raise click.BadParameter(f"{path}: {exc}" if not isinstance(exc, ConfigError) else str(exc),
                                 param_hint="--config") from None
    officer = doc.get("officer", {})
    defaults = doc.get("defaults", {})
    for name, table in (("officer", officer), ("defaults", defaults)):
        if not isinstance(table, dict):
            raise click.BadParameter(f"{path}: {name} must be a table ([{name}])", param_hint="--config")
    for k, v in officer.items():
        if k not in _FIELDS:
            raise click.BadParameter(f"{path}: officer.{k} is not a setting ({', '.join(sorted(_FIELDS))})",
                                     param_hint="--config")
        if not isinstance(v, str) or not v:
            raise click.BadParameter(f"{path}: officer.{k} must be a string, e.g. {k} = \"...\"",
                                     param_hint="--config")
    for k, v in defaults.items():
        if k not in _DEFAULTS:
            raise click.BadParameter(f"{path}: defaults.{k} is not a default ({', '.join(sorted(_DEFAULTS))})",
                                     param_hint="--config")
        if k == "handling" and not (isinstance(v, list) and all(isinstance(c, str) for c in v)):
            raise click.BadParameter(f"{path}: defaults.handling must be a list of codes, e.g. handling = [\"H2\"]",
                                     param_hint="--config")
        if k != "handling" and not isinstance(v, str) and not (k == "information" and type(v) is int):
            raise click.BadParameter(f"{path}: defaults.{k} must be a string, e.g. {k} = \"...\"",
                                     param_hint="--config")
    try:
        values = {k: (str(config_path(path.parent, v, f"officer.{k}")) if k in _PATHS else v)
                  for k, v in officer.items()}
    except ConfigError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    return values, defaults


def settings_options(*names: str) -> Callable[[F], F]:
    """Add --config and the named settings (hub, nation, key, cert, trust, store) as options."""
    helps = {
        "hub": "Hub base URL, e.g. http://127.0.0.1:8443.",
        "nation": "Your nation (ISO 3166-1 alpha-2).",
        "key": "Your private key file (officer or node).",
        "cert": "Your certificate.",
        "trust": "Federation directory: roster.txt, certificates, revocation lists.",
        "store": "Your national node's store (SQLite).",
    }

    def deco(f: F) -> F:
        for name in reversed(names):
            f = click.option(f"--{name}", f"opt_{name}", envvar=f"INTELHUB_{name.upper()}", show_envvar=True,
                             default=None, help=helps[name])(f)
        f = click.option("--config", "opt_config", type=click.Path(dir_okay=False, path_type=Path),
                         envvar="INTELHUB_CONFIG", show_envvar=True, default=None,
                         help="CLI config file (TOML: [officer] settings and [defaults]).")(f)
        return f

    return deco


def resolve(kw: dict[str, Any]) -> Settings:
    """Pop the settings options out of a command's kwargs and merge them with the config file."""
    config = kw.pop("opt_config", None)
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    source = "flags and environment"
    if config is not None:
        values, defaults = _load_file(Path(config))
        source = str(config)
    for k in list(kw):
        if k.startswith("opt_"):
            v = kw.pop(k)
            if v is not None:
                values[k[4:]] = v
    if "nation" in values:
        values["nation"] = str(values["nation"]).upper()
    return Settings(values, defaults, source)
