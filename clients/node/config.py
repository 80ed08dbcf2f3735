"""The national node's TOML configuration (docs/node.md). Every error names its field.

Filters, watch lists and sinks are parsed by their own modules from the same
document, so a bad rule fails at start with a message naming it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from hub.confpath import config_path, exists, parse_toml, read_config
from hub.protocol.errors import ConfigError, ValidationError
from hub.protocol.topics import check_pattern

_TOP: Final = ("node", "subscriptions", "receipts", "filters", "watchlists", "sinks", "witness")
_NODE: Final = {"nation", "hub", "key", "cert", "trust", "store", "ca_file", "window", "log_level", "officer_cert",
                 "crypto_workers"}


@dataclass(frozen=True)
class Subscription:
    name: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    nation: str
    hub: str
    key: Path
    cert: Path
    trust: Path
    store: Path
    ca_file: Path | None
    window: int
    log_level: str
    subscriptions: tuple[Subscription, ...]
    send_delivered: bool
    doc: dict[str, Any] = field(repr=False)
    crypto_workers: int = 0

    @property
    def base(self) -> Path:
        return self.path.parent


def _unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(k, sorted(allowed), n=1)
            raise ConfigError(f"{where}.{k}: unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def parse_node_config(text: str, path: Path) -> NodeConfig:
    doc = parse_toml(text, str(path), _TOP)
    node = doc.get("node")
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: missing [node] section (nation, hub, key, cert, trust, store)")
    _unknown(node, _NODE, "node")
    base = path.parent.resolve()

    def req(key: str) -> str:
        v = node.get(key)
        if not isinstance(v, str) or not v:
            raise ConfigError(f"node.{key}: missing or not a string (see examples/node.toml)")
        return v

    def p(key: str, must_exist: bool = True) -> Path:
        v = config_path(base, req(key), f"node.{key}")
        if must_exist and not exists(v, f"node.{key}"):
            raise ConfigError(f"node.{key}: {v} does not exist")
        return v

    nation = req("nation").upper()
    if not re.fullmatch("[A-Z]{2}", nation):
        raise ConfigError(f"node.nation: {nation!r} is not a nation code (e.g. FR)")
    hub = req("hub")
    if not hub.startswith(("http://", "https://")):
        raise ConfigError(f"node.hub: {hub!r} must be an http(s):// URL of the hub")
    try:
        host = urlsplit(hub).hostname
    except ValueError as exc:
        raise ConfigError(f"node.hub: {hub!r} is not a URL ({exc})") from None
    if not host:
        raise ConfigError(f"node.hub: {hub!r} names no host")
    if hub.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("node.hub: plain http is only allowed to 127.0.0.1; use https://")
    store = p("store", must_exist=False)
    if not exists(store.parent, "node.store", kind="dir"):
        raise ConfigError(f"node.store: directory {store.parent} does not exist")
    ca = node.get("ca_file")
    ca_file = None if ca is None else p("ca_file")
    window = node.get("window", 256)
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 4096:
        raise ConfigError("node.window: must be an integer 1-4096")
    workers = node.get("crypto_workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= 64:
        raise ConfigError("node.crypto_workers: must be an integer 0-64 (worker processes that open packets; "
                          "0 opens them on threads of the node's own process)")
    log_level = node.get("log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("node.log_level: must be one of debug, info, warning, error")

    subs_doc = doc.get("subscriptions", [{"name": "main", "patterns": [">"]}])
    if not isinstance(subs_doc, list) or not subs_doc:
        raise ConfigError("subscriptions: must be a list of [[subscriptions]] tables with name and patterns")
    subs = []
    for i, s in enumerate(subs_doc):
        where = f"subscriptions[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown(s, {"name", "patterns"}, where)
        name, pats = s.get("name"), s.get("patterns")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ConfigError(f"{where}.name: must be a name of 1-64 characters")
        if not isinstance(pats, list) or not pats or not all(isinstance(x, str) for x in pats):
            raise ConfigError(f"{where}.patterns: must be a list of topic patterns, e.g. [\"alerts.>\"]")
        try:
            subs.append(Subscription(name, tuple(check_pattern(x, f"{where}.patterns") for x in pats)))
        except ValidationError as exc:
            raise ConfigError(str(exc)) from None
    if len({s.name for s in subs}) != len(subs):
        raise ConfigError("subscriptions: names must be unique")
    receipts = doc.get("receipts", {})
    if not isinstance(receipts, dict):
        raise ConfigError("receipts: must be a table")
    _unknown(receipts, {"delivered"}, "receipts")
    delivered = receipts.get("delivered", True)
    if not isinstance(delivered, bool):
        raise ConfigError("receipts.delivered: must be true or false")
    return NodeConfig(path.resolve(), nation, hub.rstrip("/"), p("key"), p("cert"), p("trust"), store, ca_file,
                      window, log_level, tuple(subs), delivered, doc, workers)


def load_node_config(path: Path | str) -> NodeConfig:
    p = Path(path)
    text = read_config(p)
    return parse_node_config(text, p)
