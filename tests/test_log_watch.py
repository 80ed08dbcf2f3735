"""The node's LogWatcher against an honest hub: everything verifies and nothing is raised."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from clients.audit import logdb
from clients.node.store import NodeStore
from hub.protocol import envelope
from hub.protocol.federation import Federation

from .conftest import sample_alert
from .hubutil import collect, node_client, running_hub, seal_for
from .logutil import checkpoint_at_least, fast_config, watcher




async def test_live_deliveries_and_promises_are_proven(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with running_hub(fast_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr, \
                aiohttp.ClientSession() as s:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            it_store = tmp_path / "it.db"
            st = NodeStore(it_store)
            raws = [seal_for(fed, "IT", ["FR"]) for _ in range(5)]
            for raw in raws:
                r = await it.publish(raw)
                st.record_sent(raw=raw, header=envelope.parse_packet(raw).header, content=sample_alert(),
                               log_index=r.index, promise=r.promise, sent_at=0)
            st.close()
            receiver = watcher(fed, "FR", tmp_path / "fr.db", pin_interval=0)
            statuses = [receiver.on_delivery(d.index, d.packet, d.proof) for d in await collect(fr, 5)]
            assert set(statuses) <= {"pending", "verified"}
            await checkpoint_at_least(url, fed, 5)
            report = await receiver.poll(s, url)
            assert report.head is not None and report.head >= 5
            assert report.pending == 0 and not report.evidence
            assert all(receiver.status(i) == "verified" for i in range(5))
            publisher = watcher(fed, "IT", it_store)
            assert (await publisher.poll(s, url)).promises_kept == 5
            conn = logdb.connect(it_store)
            assert {r[0] for r in conn.execute("SELECT status FROM log_promises")} == {"kept"}
            conn.close()
            # A redelivery with a path to the pinned checkpoint is verified on the spot.
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 6)
            await receiver.poll(s, url)
            async with node_client(fed, "FR", url) as fr2:
                await fr2.wait_connected()
                await fr2.subscribe("again", [">"])
                again = await collect(fr2, 6)
            assert "verified" in [receiver.on_delivery(d.index, d.packet, d.proof) for d in again]
            receiver.close()
            publisher.close()


async def test_run_polls_until_stopped_and_cosigns_once_per_interval(fed: Federation, fed_dir: Path,
                                                                    tmp_path: Path) -> None:
    async with running_hub(fast_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        async with node_client(fed, "DE", url) as de, aiohttp.ClientSession() as s:
            await de.wait_connected()
            posted: list[bytes] = []

            async def post(kind: str, data: bytes) -> None:
                assert kind == "cosignature"
                posted.append(data)
                await de.post(kind, data)

            w = watcher(fed, "DE", tmp_path / "de.db", cosign_interval=3600)
            stop = asyncio.Event()
            task = asyncio.create_task(w.run(s, url, post=post, interval=0.05, stop=stop))
            await de.publish(seal_for(fed, "DE", ["FR"]))
            await asyncio.sleep(0.6)
            stop.set()
            await asyncio.wait_for(task, 5)
            assert w.head is not None and len(posted) == 1, "one cosignature per interval, however often it polls"
            assert not w.evidence()
            w.close()
