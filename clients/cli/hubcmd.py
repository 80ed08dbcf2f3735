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
    from hub.server.sqlite_store import check_database

    config = load_config(config_path)
    if port_file is not None:
        check_port_file(port_file, config, config_path)
    if check:
        # Everything serve checks before it listens, without writing anything.
        trust, _ = load_identity(config)
        tls_context(config)
        check_database(config.database)
        click.echo(f"{config_path}: OK; {len(trust.roster.nations)} nations, {len(trust.certs)} certificates, "
                   f"{'TLS' if config.tls_cert else 'plain HTTP on loopback'}, database {config.database}")
        return
    setup_logging(config.log_level)
    asyncio.run(run(config, port_file=port_file))
