"""The hub's TOML configuration: parsed, validated, and every error names its field.

Relative paths are relative to the configuration file. See ``examples/hub.toml``
(every field, with its meaning) and ``docs/protocol.md`` §8 (what the limits bound).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any, Final

from hub.confpath import config_path, exists, parse_toml, read_config
from hub.protocol.envelope import MAX_PACKET_SIZE, MAX_RECIPIENTS
from hub.protocol.errors import ConfigError, ValidationError
from hub.protocol.topics import check_pattern

DEFAULT_PUBLISH: Final = ("alerts.>", "notices.>", "receipts.>", "control.>", "witness.>")
DEFAULT_SUBSCRIBE: Final = (">",)
#: Longest retention the hub accepts (ten years): beyond it, the purge cutoff overflows SQLite.
MAX_RETENTION_DAYS: Final = 3660
#: Most verify threads: more than cores only adds GIL hand-offs.
MAX_VERIFY_THREADS: Final = 64
#: Shortest timeout or interval accepted, in seconds.
MIN_SECONDS: Final = 0.05


@dataclass(frozen=True)
class Limits:
    max_packet_bytes: int = 1 << 20
    max_recipients: int = 64
    max_clock_skew: int = 300
    publish_rate: float = 1000.0
    publish_burst: int = 2000
    window: int = 256
    ack_timeout: float = 30.0
    auth_timeout: float = 10.0
    max_sessions_per_nation: int = 16
    #: Durable subscriptions a nation may hold: each is a row kept for good, a feed that wakes on
    #: every packet for the nation while connected, and a metric series.
    max_subscriptions_per_nation: int = 64
    max_pending_publishes: int = 512
    idle_timeout: float = 120.0


@dataclass(frozen=True)
class HubConfig:
    listen_host: str
    listen_port: int
    key: Path
    trust: Path
    database: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: Limits = field(default_factory=Limits)
    retention_seconds: int = 30 * 86400
    publish: dict[str, tuple[str, ...]] = field(default_factory=dict)
    subscribe: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_publish: tuple[str, ...] = DEFAULT_PUBLISH
    default_subscribe: tuple[str, ...] = DEFAULT_SUBSCRIBE
    verify_threads: int = 2
    checkpoint_interval: float = 1.0
    log_level: str = "info"
    #: The operator's control socket (hub/server/control.py); None: no control socket
    control_socket: Path | None = None

    def publish_patterns(self, nation: str) -> tuple[str, ...]:
        return self.publish.get(nation, self.default_publish)

    def subscribe_patterns(self, nation: str) -> tuple[str, ...]:
        return self.subscribe.get(nation, self.default_subscribe)

    def check_nations(self, roster_nations: Collection[str]) -> None:
        """Per-nation topic rules must name roster nations (a typo would silently apply the defaults)."""
        for table, rules in (("publish", self.publish), ("subscribe", self.subscribe)):
            for nation in rules:
                if nation not in roster_nations:
                    raise ConfigError(f"topics.{nation}.{table}: {nation} is not a nation of the roster "
                                      f"({', '.join(sorted(roster_nations))})")


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(k, sorted(allowed), n=1)
            raise ConfigError(f"{where}.{k}: unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _typed(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) and typ is not bool or not isinstance(v, typ):
        name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}.{key}: must be a {name}, not {v!r}")
    return v


def _positive(value: Any, where: str) -> Any:
    # "not > 0" (rather than "<= 0") also refuses nan; inf is refused explicitly.
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{where}: must be a finite number greater than 0")
    return value


def _patterns(v: Any, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
        raise ConfigError(f"{where}: must be a list of topic patterns, e.g. [\"alerts.>\"]")
    try:
        return tuple(check_pattern(p, where) for p in v)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None


def parse_config(text: str, base: Path, source: str = "hub.toml") -> HubConfig:
    doc = parse_toml(text, source, ("hub", "limits", "retention", "topics"))
    hub = doc.get("hub")
    if not isinstance(hub, dict):
        raise ConfigError(f"{source}: missing [hub] section (listen, key, trust, database)")
    _check_keys(hub, {"listen", "key", "trust", "database", "tls_cert", "tls_key", "verify_threads",
                      "checkpoint_interval", "log_level", "control_socket"}, "hub")
    for req in ("listen", "key", "trust", "database"):
        if req not in hub:
            raise ConfigError(f"hub.{req}: missing (see examples/hub.toml)")
    listen = _typed(hub, "listen", str, "hub", None)
    host, _, port_s = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address as in a URL: [::1]:8443
        host = host[1:-1]
    if not host or not (port_s.isascii() and port_s.isdigit() and len(port_s) <= 5) or not 0 <= int(port_s) < 65536:
        raise ConfigError(f"hub.listen: {listen!r} is not host:port (e.g. 127.0.0.1:8443; port 0 picks a free port)")

    def path(key: str, resolve: bool = True) -> Path | None:
        v = _typed(hub, key, str, "hub", None)
        return None if v is None else config_path(base, v, f"hub.{key}", resolve=resolve)

    tls_cert, tls_key = path("tls_cert"), path("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("hub.tls_cert / hub.tls_key: give both for TLS, or neither for plain HTTP on loopback")
    for key, p in (("key", path("key")), ("trust", path("trust")), ("tls_cert", tls_cert), ("tls_key", tls_key)):
        if p is not None and not exists(p, f"hub.{key}"):
            raise ConfigError(f"hub.{key}: {p} does not exist")
        kind = "dir" if key == "trust" else "file"  # a FIFO named as the key would hang the start
        if p is not None and not exists(p, f"hub.{key}", kind=kind):
            raise ConfigError(f"hub.{key}: {p} is not a {'directory' if kind == 'dir' else 'regular file'}")
    if tls_cert is None and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"hub.listen: {host} is not loopback; plain HTTP is only allowed on loopback (127.0.0.1, ::1, localhost); set tls_cert and tls_key")
    # As written, links and all: the hub and the CLI both reach it that way, and the hub checks
    # every directory and link on the way when it starts (control.check_place).
    control_socket = path("control_socket", resolve=False)
    if control_socket is not None:
        from .control import check_path

        check_path(control_socket)
    log_level = _typed(hub, "log_level", str, "hub", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("hub.log_level: must be one of debug, info, warning, error")

    lim = doc.get("limits", {})
    if not isinstance(lim, dict):
        raise ConfigError("limits: must be a table")
    defaults = Limits()
    _check_keys(lim, set(defaults.__dataclass_fields__), "limits")
    values = {}
    for name, f in defaults.__dataclass_fields__.items():
        typ = (int, float) if isinstance(getattr(defaults, name), float) else int
        values[name] = _positive(_typed(lim, name, typ, "limits", getattr(defaults, name)), f"limits.{name}")
    # Above the protocol's own limits a setting would not take effect: said at start, not ignored.
    if values["max_packet_bytes"] > MAX_PACKET_SIZE:
        raise ConfigError(f"limits.max_packet_bytes: at most {MAX_PACKET_SIZE} (the protocol's limit, 1 MiB)")
    for name in ("ack_timeout", "auth_timeout", "idle_timeout"):
        if values[name] < MIN_SECONDS:  # a timer that short would spin the hub, or time everyone out
            raise ConfigError(f"limits.{name}: at least {MIN_SECONDS} s")
    if values["max_recipients"] > MAX_RECIPIENTS:
        raise ConfigError(f"limits.max_recipients: at most {MAX_RECIPIENTS} (the protocol's limit)")

    ret = doc.get("retention", {})
    if not isinstance(ret, dict):
        raise ConfigError("retention: must be a table")
    _check_keys(ret, {"days"}, "retention")
    days = _positive(_typed(ret, "days", (int, float), "retention", 30), "retention.days")
    if days > MAX_RETENTION_DAYS:
        raise ConfigError(f"retention.days: at most {MAX_RETENTION_DAYS} (ten years)")
    interval = _positive(_typed(hub, "checkpoint_interval", (int, float), "hub", 1.0), "hub.checkpoint_interval")
    if interval < MIN_SECONDS:
        raise ConfigError(f"hub.checkpoint_interval: at least {MIN_SECONDS} s")
    verify_threads = _typed(hub, "verify_threads", int, "hub", 2)
    if not 0 <= verify_threads <= MAX_VERIFY_THREADS:
        raise ConfigError(f"hub.verify_threads: must be 0 (verify on the event loop) to {MAX_VERIFY_THREADS}")

    topics = doc.get("topics", {})
    if not isinstance(topics, dict):
        raise ConfigError("topics: must be a table")
    pub: dict[str, tuple[str, ...]] = {}
    sub: dict[str, tuple[str, ...]] = {}
    default_pub: tuple[str, ...] = DEFAULT_PUBLISH
    default_sub: tuple[str, ...] = DEFAULT_SUBSCRIBE
    for k, v in topics.items():
        if k == "publish":
            default_pub = _patterns(v, "topics.publish")
        elif k == "subscribe":
            default_sub = _patterns(v, "topics.subscribe")
        elif len(k) == 2 and k.isupper() and isinstance(v, dict):
            _check_keys(v, {"publish", "subscribe"}, f"topics.{k}")
            if "publish" in v:
                pub[k] = _patterns(v["publish"], f"topics.{k}.publish")
            if "subscribe" in v:
                sub[k] = _patterns(v["subscribe"], f"topics.{k}.subscribe")
        else:
            raise ConfigError(f"topics.{k}: expected publish, subscribe, or a [topics.CC] table for a nation")
    return HubConfig(
        listen_host=host, listen_port=int(port_s), key=path("key"), trust=path("trust"),  # type: ignore[arg-type]
        database=path("database"), tls_cert=tls_cert, tls_key=tls_key,  # type: ignore[arg-type]
        limits=Limits(**values), retention_seconds=int(days * 86400), publish=pub, subscribe=sub,
        default_publish=default_pub, default_subscribe=default_sub,
        verify_threads=verify_threads,
        checkpoint_interval=interval,
        log_level=log_level,
        control_socket=control_socket,
    )


def load_config(path: Path | str) -> HubConfig:
    p = Path(path)
    text = read_config(p)
    return parse_config(text, p.parent.resolve(), str(p))
