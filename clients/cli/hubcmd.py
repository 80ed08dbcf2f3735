"""``intelhub hub``: run the hub service."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("hub")
def hub() -> None:
    """Run the hub: the authenticated, durable relay (hub operator)."""


@hub.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_HUB_CONFIG", show_envvar=True, help="Hub configuration (TOML); see examples/hub.toml.")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the actual listening port here once serving (useful with port 0).")
@click.option("--check", is_flag=True, help="Validate the configuration and keys, then exit.")
def serve(config_path: Path, port_file: Path | None, check: bool) -> None:
    """Serve protocol v1 (WebSocket /v1/ws, HTTP /v1/publish, /healthz, /metrics) until SIGTERM."""
    import asyncio

    from hub.logs import setup_logging
    from hub.server.app import check_port_file, load_identity, tls_context
    from hub.server.app import serve as run
    from hub.server.config import load_config
    from hub.server.owner import OWNER_KEY, OWNER_KIND, LogOwner, check_owner
    from hub.server.sqlite_store import read_blob

    config = load_config(config_path)
    if port_file is not None:
        check_port_file(port_file, config, config_path)
    if check:
        # Everything serve checks before it listens, without writing anything.
        trust, _ = load_identity(config)
        tls_context(config)
        owner = read_blob(config.database, OWNER_KIND, OWNER_KEY)
        check_owner(LogOwner.decode(owner) if owner is not None else None, LogOwner.of(trust.roster))
        click.echo(f"{config_path}: OK; {len(trust.roster.nations)} nations, {len(trust.certs)} certificates, "
                   f"{'TLS' if config.tls_cert else 'plain HTTP on loopback'}, database {config.database}")
        return
    setup_logging(config.log_level)
    asyncio.run(run(config, port_file=port_file))


@hub.command("rotate-key")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="INTELHUB_HUB_CONFIG", show_envvar=True, help="Hub configuration (TOML); see examples/hub.toml.")
def rotate_key(config_path: Path) -> None:
    """Let the hub's database pass to a new hub key that a newer roster names (run with the hub stopped).

    The database's log keeps its leaves; the next checkpoint is signed by the new key. Refused
    unless the roster in the trust directory is newer than the one the database ran with, for
    the same federation and hub name, and names the key in hub.key.
    """
    import asyncio

    from hub.server.app import load_identity
    from hub.server.config import load_config
    from hub.server.owner import LogOwner, bind
    from hub.server.sqlite_store import SQLiteStorage

    config = load_config(config_path)
    trust, _ = load_identity(config)
    if not config.database.is_file():
        raise click.ClickException(f"hub.database: {config.database} does not exist; there is nothing to rotate")

    async def run() -> tuple[LogOwner | None, LogOwner]:
        storage = SQLiteStorage(config.database)
        try:
            return await bind(storage, trust.roster, rotate=True)
        finally:
            await storage.close()

    old, new = asyncio.run(run())
    click.echo(f"{config.database}: passed from {old.describe() if old else 'no recorded owner'} "
               f"to {new.describe()}; the next checkpoint is signed by the new key")
