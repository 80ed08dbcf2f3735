"""``intelhub hub``: run the hub service."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .common import emit_json, fail, json_option, table


F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def config_option(f: F) -> F:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
                        envvar="INTELHUB_HUB_CONFIG", show_envvar=True,
                        help="Hub configuration (TOML); see examples/hub.toml.")(f)


def _offline(database: Path, op: Callable[[Any], Awaitable[T]]) -> T:
    """``op(storage)`` on the hub's database, with the hub stopped (the database lock refuses
    otherwise, naming it)."""
    import asyncio

    from hub.server.sqlite_store import SQLiteStorage

    try:
        found = database.is_file()
    except OSError as exc:  # a directory this user may not enter
        raise click.ClickException(f"hub.database: cannot reach {database} ({exc.strerror or exc}); "
                                   "run this as the hub's user") from None
    if not found:
        raise click.ClickException(f"hub.database: {database} does not exist")

    async def run() -> T:
        storage = SQLiteStorage(database)
        try:
            return await op(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


@click.group("hub")
def hub() -> None:
    """Run the hub: the authenticated, durable relay (hub operator)."""


@hub.command("serve")
@config_option
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the actual listening port here once serving (useful with port 0).")
@click.option("--check", is_flag=True, help="Validate the configuration and keys, then exit.")
def serve(config_path: Path, port_file: Path | None, check: bool) -> None:
    """Serve protocol v1 (WebSocket /v1/ws, HTTP /v1/publish, /healthz, /metrics) until SIGTERM."""
    import asyncio

    from hub.aio import defer_stop_signals

    if not check:
        defer_stop_signals()

    from hub.logs import setup_logging
    from hub.server.app import check_port_file, load_identity, owner_decision, tls_context
    from hub.server.app import serve as run
    from hub.server.config import load_config

    config = load_config(config_path)
    if port_file is not None:
        check_port_file(port_file, config, config_path)
    if check:
        # Everything serve checks before it listens, without writing anything.
        trust, signing = load_identity(config)
        tls_context(config)
        owner_decision(config, trust, signing)
        if config.control_socket is not None:
            from hub.server.control import check_place

            check_place(config.control_socket, serving=False)
        click.echo(f"{config_path}: OK; {len(trust.roster.nations)} nations, {len(trust.certs)} certificates, "
                   f"{'TLS' if config.tls_cert else 'plain HTTP on loopback'}, database {config.database}")
        return
    setup_logging(config.log_level)
    asyncio.run(run(config, port_file=port_file))


@hub.command("rotate-key")
@config_option
def rotate_key(config_path: Path) -> None:
    """Let the hub's database pass to a new hub key that a newer roster names (run with the hub stopped).

    The database's log keeps its leaves; the next checkpoint is signed by the new key. Refused
    unless the roster in the trust directory is newer than the one the database ran with, for
    the same federation and hub name, and names the key in hub.key.
    """
    from hub.server.app import load_identity, owner_decision
    from hub.server.config import load_config
    from hub.server.owner import record

    config = load_config(config_path)
    trust, signing = load_identity(config)
    if not config.database.is_file():
        raise click.ClickException(f"hub.database: {config.database} does not exist; there is nothing to rotate")
    old, new = owner_decision(config, trust, signing, rotate=True)
    assert old is not None and new is not None  # a rotation is from a recorded owner, and always writes
    _offline(config.database, lambda storage: record(storage, new))
    click.echo(f"{config.database}: passed from {old.describe()} "
               f"to {new.describe()}; the next checkpoint is signed by the new key")


def _ago(now: int, t: int | None) -> str:
    if t is None:
        return "never"
    s = max(0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


@hub.command("subscriptions")
@config_option
@click.option("--nation", default=None, help="Only this nation's subscriptions (e.g. FR).")
@json_option
def subscriptions(config_path: Path, nation: str | None, as_json: bool) -> None:
    """List the durable subscriptions and the packets each holds (read-only; the hub may be running).

    A subscription keeps every packet it matches until it acknowledges it or the packet
    expires. ACKED TO: every matching packet up to this log index was acknowledged (the node
    resumes after it). One that nobody consumes any more (a node gone, or its store lost) shows here
    with an old last acknowledgement and a growing OWED: remove it with `unsubscribe`.
    """
    from hub.protocol.certs import check_nation
    from hub.server.admin import subscriptions as report
    from hub.server.config import load_config

    config = load_config(config_path)
    if nation is not None:
        check_nation(nation, "--nation")
    now = int(time.time())
    subs = report(config.database, now, nation)
    if as_json:
        emit_json({"now": now, "subscriptions": [s.as_dict() for s in subs]})
        return
    if not subs:
        click.echo("no subscriptions" + (f" of {nation}" if nation else ""))
        return
    # acked_at 0: it acknowledged before its hub recorded when (schema 3).
    click.echo(table([(s.nation, s.name, " ".join(s.patterns), s.cursor if s.cursor >= 0 else "-", s.owed,
                       _ago(now, s.oldest_owed) if s.owed else "",
                       "unknown" if s.acked_at == 0 else _ago(now, s.acked_at), _ago(now, s.created)) for s in subs],
                     ("NATION", "NAME", "PATTERNS", "ACKED TO", "OWED", "OLDEST OWED", "LAST ACK", "CREATED")))


@hub.command("unsubscribe")
@config_option
@click.option("--nation", required=True, help="The subscription's nation (e.g. FR).")
@click.option("--name", required=True, help="The subscription's name (see `intelhub hub subscriptions`).")
def unsubscribe(config_path: Path, nation: str, name: str) -> None:
    """Remove a subscription for good: the packets it held are then kept only for the nation's other
    subscriptions. A node that subscribes again under the name starts afresh.

    \b
    While the hub runs, through its control socket ([hub] control_socket; refused while a node
    is connected to the subscription); with the hub stopped, on its database directly."""
    import asyncio

    from hub.protocol.certs import check_nation
    from hub.protocol.errors import StoreError
    from hub.server.config import load_config
    from hub.server.control import UNSUBSCRIBE, ControlUnavailable, call, check_name

    config = load_config(config_path)
    check_nation(nation, "--nation")
    try:
        check_name(name)
    except ValueError as exc:
        fail(f"--name: {exc}", 2)
    missing = (f"{nation} has no subscription named {name!r}; `intelhub hub subscriptions --nation {nation}` "
               "lists them")
    if config.control_socket is not None:
        try:
            status, answer = asyncio.run(call(config.control_socket, UNSUBSCRIBE, {"nation": nation, "name": name}))
        except ControlUnavailable:
            pass  # the hub is stopped: on the database below
        else:
            if status == 404:
                fail(missing, 2)
            if status != 200:
                fail(f"the hub refused: {answer.get('reason', answer)}", 2 if status in (400, 409) else 5)
            click.echo(f"removed {nation}'s subscription {name!r} (from the running hub)")
            return
    try:
        removed = _offline(config.database, lambda storage: storage.unsubscribe(nation, name))
    except StoreError as exc:
        hint = "" if config.control_socket else "; or set [hub] control_socket to do this while it runs"
        raise StoreError(f"{exc}{hint}") from None
    if not removed:
        fail(missing, 2)
    click.echo(f"removed {nation}'s subscription {name!r}")
