"""The hub operator's subscription commands: `intelhub hub subscriptions` reads beside a serving hub;
`intelhub hub unsubscribe` removes a subscription nobody consumes, with the hub stopped."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hub.protocol.federation import Federation

from .hubutil import assert_refused, collect, hub_cli, hub_config, hub_toml, node_client, running_hub, seal_for


async def test_an_operator_finds_and_removes_a_subscription_nobody_consumes(fed: Federation, fed_dir: Path,
                                                                           tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, db))
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            # "old" was the subscription of an FR node that lost its store; "main" is consumed.
            await fr.subscribe("old", ["alerts.>"])
            await fr.subscribe("main", [">"])
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"]), timeout=10)
            got = await collect(fr, 6, ack=False)  # three each; only "main" acknowledges
            assert sorted(d.sub for d in got) == ["main"] * 3 + ["old"] * 3
            for d in got:
                if d.sub == "main":
                    await fr.ack(d.sub, d.index)
            # Read-only beside the serving hub (until the acks are on disk); removing needs it stopped.
            deadline = time.monotonic() + 10
            while True:
                r = hub_cli("subscriptions", cfg, "--json")
                assert r.returncode == 0, r.stderr
                by_name = {s["name"]: s for s in json.loads(r.stdout)["subscriptions"]}
                if by_name["main"]["owed"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        assert set(by_name) == {"main", "old"} and {s["nation"] for s in by_name.values()} == {"FR"}
        assert by_name["main"]["owed"] == 0 and by_name["main"]["acked_at"] >= int(time.time()) - 60
        assert by_name["old"]["owed"] == 3 and by_name["old"]["acked_at"] is None
        assert by_name["old"]["patterns"] == ["alerts.>"] and by_name["old"]["oldest_owed"] is not None
        assert_refused(hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old"), 5, "in use by another hub")

    r = hub_cli("subscriptions", cfg)
    assert r.returncode == 0, r.stderr
    header, _, *rows = r.stdout.splitlines()
    assert header.split()[:6] == ["NATION", "NAME", "PATTERNS", "ACKED", "TO", "OWED"]
    old = next(row for row in rows if row.split()[1] == "old")
    assert old.split()[4] == "3" and "never" in old

    r = hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old")
    assert r.returncode == 0 and "removed FR's subscription 'old'" in r.stdout, r.stderr
    after = json.loads(hub_cli("subscriptions", cfg, "--json", "--nation", "FR").stdout)
    assert [s["name"] for s in after["subscriptions"]] == ["main"]
    assert_refused(hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old"), 2, "no subscription named 'old'")
    assert_refused(hub_cli("subscriptions", cfg, "--nation", "fr"), 2, "not a nation code")
    assert hub_cli("subscriptions", cfg, "--nation", "DE").stdout.strip() == "no subscriptions of DE"


def test_listing_needs_a_database(fed_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, tmp_path / "missing.db"))
    assert_refused(hub_cli("subscriptions", cfg), 5, "no hub database there")
    assert not (tmp_path / "missing.db").exists()


async def test_a_database_whose_name_has_uri_characters_is_read_as_itself(fed: Federation, fed_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Read-only opens go through a file URI: "hub?x#1.db" is that file, not "hub" (which they created)."""
    db = tmp_path / "hub?x#1.db"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, db))
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        async with node_client(fed, "FR", url) as fr:
            await fr.wait_connected(10)
            await fr.subscribe("main", [">"])
    r = hub_cli("subscriptions", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)["subscriptions"]] == ["main"]
    assert hub_cli("serve", cfg, "--check").returncode == 0
    assert not (tmp_path / "hub").exists()


async def test_packets_a_feed_passes_by_are_not_held_for_it(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """FR subscribes to everything but the hub's topic rules let FR receive alerts only: the notices
    addressed to FR are passed by, and the subscription's cursor on disk moves past them even though
    FR acknowledges nothing, so they are neither owed to it nor kept for it."""
    from hub.server.admin import subscriptions
    from hub.server.app import RELAY

    db = tmp_path / "hub.db"
    config = hub_config(fed_dir, db, limits={"ack_timeout": 0.2},
                        topics='[topics.FR]\nsubscribe = ["alerts.>"]\n')
    async with running_hub(config) as (url, app):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            await fr.subscribe("main", [">"])
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"], topic="notices.general"), timeout=10)
            deadline = time.monotonic() + 10
            while (s := subscriptions(db, int(time.time()), "FR")[0]).owed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert s.owed == 0 and s.cursor == 2 and s.acked_at is None, s  # passed by, not acknowledged
            cfg = tmp_path / "hub.toml"
            cfg.write_text(hub_toml(fed_dir, db))
            [row] = hub_cli("subscriptions", cfg).stdout.splitlines()[2:]
            assert "never" in row and "unknown" not in row, row
            assert fr.deliveries.empty()
            assert await app[RELAY].storage.purge(int(time.time()), 0) == 3
