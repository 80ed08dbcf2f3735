"""A hub that lies about its log is caught, with evidence saved: drops, reorders, rewrites, split views.

Each dishonest hub is the real hub with a test-only :class:`HubLog` subclass (``log_factory``);
detection is by the nodes' :class:`LogWatcher`, driven here with real deliveries and HTTP.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.audit import logdb
from clients.audit.bundle import Bundle
from clients.node.store import NodeStore
from hub.protocol import envelope
from hub.protocol.federation import Federation
from hub.protocol.merkle import MerkleTree, leaf_hash
from hub.server.log import HubLog

from .conftest import sample_alert
from .hubutil import collect, node_client, running_hub, seal_for
from .logutil import checkpoint_at_least, fast_config, watcher




@pytest.fixture()
def config(fed_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return fast_config(fed_dir, tmp_path / "hub.db")


DECOY = leaf_hash(b"not the packet that was accepted")


class DroppingLog(HubLog):
    """Accepts (and promises) leaf 1, but logs something else in its place."""

    def add_leaf(self, index: int, leaf: bytes) -> None:
        super().add_leaf(index, DECOY if index == 1 else leaf)


class ReorderingLog(HubLog):
    """Logs leaves 0 and 1 in each other's place."""

    def add_leaf(self, index: int, leaf: bytes) -> None:
        super().add_leaf({0: 1, 1: 0}.get(index, index), leaf)


class RewritingLog(HubLog):
    """Honest until told to rewrite an old leaf."""

    def rewrite(self, index: int, leaf: bytes) -> None:
        hashes = [self.tree.leaf(i) for i in range(self.tree.size)]
        hashes[index] = leaf
        self.tree = MerkleTree.from_leaf_hashes(hashes)


class SplitLog(HubLog):
    """Keeps a second tree, without leaf 0, and shows whichever view it is told to."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.other = MerkleTree()

    def add_leaf(self, index: int, leaf: bytes) -> None:
        super().add_leaf(index, leaf)
        if index == self.other.size:
            self.other.append(DECOY if index == 0 else leaf)

    async def show_other_view(self) -> None:
        self.tree, self.other = self.other, self.tree
        self._latest = None
        await self.sign_checkpoint_if_due()


def evidence_kinds(store: Path) -> list[str]:
    conn = logdb.connect(store)
    try:
        return [e.kind for e in logdb.evidence(conn)]
    finally:
        conn.close()


def record_sent(store: Path, raw: bytes, index: int, promise: str | None) -> None:
    st = NodeStore(store)
    try:
        st.record_sent(raw=raw, header=envelope.parse_packet(raw).header, content=sample_alert(), log_index=index,
                       promise=promise, sent_at=0)
    finally:
        st.close()


async def test_a_dropped_packet_breaks_its_promise(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config, log_factory=DroppingLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            store = tmp_path / "it.db"
            for _ in range(3):
                raw = seal_for(fed, "IT", ["FR"])
                r = await it.publish(raw)
                record_sent(store, raw, r.index, r.promise)
            await checkpoint_at_least(url, fed, 3)
            w = watcher(fed, "IT", store)
            report = await w.poll(s, url)
            assert report.promises_kept == 2
            assert [e.kind for e in report.evidence] == ["broken_promise"]
            ev = report.evidence[0].data
            assert ev["promise"] and ev["checkpoints"] and ev["inclusion"]["index"] == 1
            w.close()
            assert evidence_kinds(store) == ["broken_promise"]


async def test_a_packet_delivered_past_its_promise_deadline_unlogged(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class StallingLog(HubLog):
        def add_leaf(self, index: int, leaf: bytes) -> None:  # never logs anything
            pass

    async with running_hub(config, log_factory=functools.partial(StallingLog, mmd=0)) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            store = tmp_path / "it.db"
            raw = seal_for(fed, "IT", ["FR"])
            r = await it.publish(raw)
            record_sent(store, raw, r.index, r.promise)
            hl = app[__import__("hub.server.app", fromlist=["RELAY"]).RELAY].hub_log
            hl._latest = None
            await hl.sign_checkpoint_if_due()  # size 0, dated at or after the promise's deadline
            w = watcher(fed, "IT", store)
            report = await w.poll(s, url)
            assert [e.kind for e in report.evidence] == ["broken_promise"]
            assert "missing from a tree of size 0" in report.evidence[0].summary
            w.close()


async def test_reordered_leaves_fail_inclusion_and_promises(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config, log_factory=ReorderingLog) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr, \
                aiohttp.ClientSession() as s:
            await it.wait_connected()
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            it_store, fr_store = tmp_path / "it.db", tmp_path / "fr.db"
            for _ in range(3):
                raw = seal_for(fed, "IT", ["FR"])
                r = await it.publish(raw)
                record_sent(it_store, raw, r.index, r.promise)
            receiver = watcher(fed, "FR", fr_store)
            for d in await collect(fr, 3):
                receiver.on_delivery(d.index, d.packet, d.proof)
            await checkpoint_at_least(url, fed, 3)
            report = await receiver.poll(s, url)
            assert sorted(e.data["inclusion"]["index"] for e in report.evidence) == [0, 1]
            assert {e.kind for e in report.evidence} == {"bad_inclusion"}
            assert receiver.status(2) == "verified" and receiver.status(0) == "failed"
            publisher = watcher(fed, "IT", it_store)
            assert [e.kind for e in (await publisher.poll(s, url)).evidence] == ["broken_promise"] * 2
            receiver.close()
            publisher.close()


async def test_a_rewritten_old_leaf_is_an_inconsistent_checkpoint(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hub.server.app import RELAY

    async with running_hub(config, log_factory=RewritingLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            for _ in range(4):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 4)
            w = watcher(fed, "DE", tmp_path / "de.db")
            await w.poll(s, url)
            assert w.head is not None and w.head.size == 4
            app[RELAY].hub_log.rewrite(1, DECOY)
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 5)
            report = await w.poll(s, url)
            assert [e.kind for e in report.evidence] == ["inconsistent"]
            ev = report.evidence[0].data
            assert len(ev["checkpoints"]) == 2 and ev["consistency"]["old"] == 4
            assert w.head.size == 4, "an inconsistent checkpoint never becomes the head"
            w.close()
            assert evidence_kinds(tmp_path / "de.db") == ["inconsistent"]


async def test_a_split_view_is_caught_by_comparing_cosignatures(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hub.server.app import RELAY

    async with running_hub(config, log_factory=SplitLog) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr, \
                node_client(fed, "DE", url) as de, aiohttp.ClientSession() as s:
            for c in (it, fr, de):
                await c.wait_connected()
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR", "DE"]))
            await checkpoint_at_least(url, fed, 3)
            w_fr, w_de = watcher(fed, "FR", tmp_path / "fr.db"), watcher(fed, "DE", tmp_path / "de.db")
            assert (await w_fr.poll(s, url, post=fr.post)).cosigned  # FR sees, and cosigns, the true log
            await app[RELAY].hub_log.show_other_view()
            report = await w_de.poll(s, url, post=de.post)  # DE is shown the other one
            assert w_de.head.size == w_fr.head.size and w_de.head.root != w_fr.head.root  # type: ignore[union-attr]
            assert [e.kind for e in report.evidence] == ["fork"]
            assert len(report.evidence[0].data["checkpoints"]) == 2
            # FR learns of DE's cosigned view (and is now shown it too): it holds evidence as well.
            assert {e.kind for e in (await w_fr.poll(s, url)).evidence} == {"fork"}
            w_fr.close()
            w_de.close()
            assert set(evidence_kinds(tmp_path / "fr.db")) == set(evidence_kinds(tmp_path / "de.db")) == {"fork"}


async def test_two_checkpoints_of_one_size_are_a_fork_at_once(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hub.server.app import RELAY

    async with running_hub(config, log_factory=SplitLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            await it.publish(seal_for(fed, "IT", ["FR"]))
            _, note_a = await checkpoint_at_least(url, fed, 1)
            w = watcher(fed, "FR", tmp_path / "fr.db")
            await w.poll(s, url)
            hl = app[RELAY].hub_log
            await hl.show_other_view()
            w.on_checkpoint(hl.latest[1])  # as if pushed by a notice
            assert [e.kind for e in w.alarms] == ["fork"]
            w.close()


# -- the auditor's tool catches them too ------------------------------------------------------


async def audit_cli(*args: Any) -> Any:
    import asyncio

    from click.testing import CliRunner

    from clients.cli.auditor import audit

    return await asyncio.to_thread(CliRunner().invoke, audit, [str(a) for a in args], catch_exceptions=False)


async def test_auditor_finds_the_split_view_in_two_stores_offline(fed: Federation, fed_dir: Path, config,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    from hub.server.app import RELAY

    async with running_hub(config, log_factory=SplitLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            for _ in range(2):
                await it.publish(seal_for(fed, "IT", ["FR", "DE"]))
            await checkpoint_at_least(url, fed, 2)
            w_fr = watcher(fed, "FR", tmp_path / "fr.db")
            await w_fr.poll(s, url)
            await app[RELAY].hub_log.show_other_view()
            w_de = watcher(fed, "DE", tmp_path / "de.db")
            await w_de.poll(s, url)  # no cosignatures posted: each node alone sees nothing wrong
            assert not w_fr.alarms and not w_de.alarms
            w_fr.close()
            w_de.close()
    r = await audit_cli("verify", tmp_path / "fr.db", tmp_path / "de.db", "--trust", fed_dir)
    assert r.exit_code == 1 and "fork: the hub signed different roots for tree size 2" in r.output, r.output


async def test_auditor_confirms_a_broken_promise_saved_in_a_store(fed: Federation, fed_dir: Path, config,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    async with running_hub(config, log_factory=DroppingLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            store = tmp_path / "it.db"
            for _ in range(2):
                raw = seal_for(fed, "IT", ["FR"])
                r = await it.publish(raw)
                record_sent(store, raw, r.index, r.promise)
            await checkpoint_at_least(url, fed, 2)
            w = watcher(fed, "IT", store)
            await w.poll(s, url)
            w.close()
            # The hub serves its true leaves, which do not hash to the root it signed.
            c = await audit_cli("completeness", "--store", store, "--trust", fed_dir, "--hub", url, "--nation", "FR")
            assert c.exit_code == 1 and "do not hash to its signed root" in c.output, c.output
    r = await audit_cli("verify", store, "--trust", fed_dir)
    assert r.exit_code == 1
    assert "evidence it.db (broken_promise): CONFIRMED" in r.output, r.output


async def test_auditor_with_the_hub_finds_a_rewritten_log(fed: Federation, fed_dir: Path, config,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    from hub.server.app import RELAY

    async with running_hub(config, log_factory=RewritingLog) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 3)
            w = watcher(fed, "FR", tmp_path / "fr.db")
            await w.poll(s, url)
            w.close()
            app[RELAY].hub_log.rewrite(0, DECOY)
            await it.publish(seal_for(fed, "IT", ["FR"]))
            _, note = await checkpoint_at_least(url, fed, 4)
            # The hub's current checkpoint, as an auditor might be handed it.
            (tmp_path / "now.bundle").write_bytes(Bundle(fed.roster.raw, 0, checkpoints=[note]).encode())
            r = await audit_cli("verify", tmp_path / "fr.db", tmp_path / "now.bundle", "--trust", fed_dir,
                                "--hub", url)
            assert r.exit_code == 1 and "are not consistent" in r.output, r.output
