"""Entry point of the ``intelhub`` command.

Sub-command modules are imported only when used, so ``intelhub --help`` and a
dry-run publish start fast. This is the one place that maps intelhub errors to a
message and an exit code (documented in README.md, "Exit codes").
"""

from __future__ import annotations

import importlib
from typing import Any, Final

import click

#: command name -> (module, attribute, one-line help shown by ``intelhub --help``)
COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "alert": ("clients.cli.officer", "alert", "Publish an entity alert, or print a template (liaison officer)."),
    "freeze": ("clients.cli.officer", "freeze", "Issue an asset-freeze notice, or print a template."),
    "amend": ("clients.cli.officer", "amend", "Publish a new version of one of your packets."),
    "withdraw": ("clients.cli.officer", "withdraw", "Withdraw one of your packets from every recipient."),
    "status": ("clients.cli.officer", "status", "Receipts per recipient nation, and log status, of your packet."),
    "keys": ("clients.cli.keys", "keys", "Create a federation, issue and revoke certificates, show fingerprints."),
    "packet": ("clients.cli.packet", "packet", "Seal, open and verify packet files offline."),
    "audit": ("clients.cli.auditor", "audit", "Verify packets, stores and evidence bundles; prove completeness (auditors)."),
    "hub": ("clients.cli.hubcmd", "hub", "Run the hub: the authenticated, durable relay (hub operator)."),
    "node": ("clients.cli.node", "node", "Run a national node and look after its store (node operator)."),
    "search": ("clients.cli.node", "search", "Find entities by name across scripts and spellings."),
    "lookup": ("clients.cli.node", "lookup", "Exact identifier lookup: IBAN, wallet, IMO, passport, phone."),
    "show": ("clients.cli.node", "show", "A record with its history and receipts."),
    "freezes": ("clients.cli.node", "freezes", "Asset-freeze notices and their current status."),
}

#: Exit codes by error code; anything else that is an IntelhubError exits 1.
EXIT_CODES: Final[dict[str, int]] = {
    "invalid_packet": 3,
    "untrusted_signer": 3,
    "clock_skew": 3,  # a packet dated beyond every verifier's future bound (FutureSkew)
    "malformed": 3,
    "invalid_content": 2,
    "bad_config": 2,
    "bad_key_file": 2,
    "protocol": 4,
    "store": 5,
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        # The one place intelhub errors become a message and an exit code.
        from hub.protocol.errors import IntelhubError

        try:
            return super().invoke(ctx)
        except IntelhubError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_CODES.get(exc.code, 1))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="intelhub")
def cli() -> None:
    """intelhub: end-to-end signed and encrypted intelligence sharing for G7 partners.

    \b
    Exit codes: 0 success; 1 failure (a check did not pass);
    2 bad input (the message names the field); 3 a packet or signer failed
    verification; 4 the hub refused or could not be reached; 5 local store error.
    """


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="intelhub")


if __name__ == "__main__":
    main()
