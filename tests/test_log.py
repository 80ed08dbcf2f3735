"""The hub's transparency log over real sockets: promises, checkpoints, proofs, leaves, cosignatures."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from clients.audit.fetch import LogClient
from clients.audit.tlog import (
    PROMISE_BATCH_HEADER, decode_leaf, hub_verifier, leaf_data, leaf_hash_for, log_origin, open_hub_checkpoint,
    open_promise, proof_from_wire,
)
from hub.migrations import migrate
from hub.protocol import codec, envelope
from hub.protocol.errors import LogError, ProtocolError
from hub.protocol.federation import Federation
from hub.protocol.merkle import root_from_leaf_hashes, verify_consistency
from hub.protocol.promise import PROMISE_HEADER, check_promise_kept
from hub.server import log as hublog

from .hubutil import collect, node_client, running_hub, seal_for
from .logutil import checkpoint_at_least, fast_config, watcher




@pytest.fixture()
def config(fed_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return fast_config(fed_dir, tmp_path / "hub.db")


def header_of(raw: bytes) -> bytes:
    return envelope.parse_packet(raw).header.raw


def test_leaf_format_is_the_hubs(fed: Federation) -> None:
    header = header_of(seal_for(fed, "IT", ["FR"]))
    assert leaf_data(header, 1764000000) == codec.encode({"header": header, "time": 1764000000, "v": 1})
    assert hublog.log_origin("hub") == log_origin("hub") == "hub/log"
    leaf = decode_leaf(3, leaf_data(header, 1764000000))
    assert (leaf.index, leaf.time, leaf.recipients, leaf.sender) == (3, 1764000000, ("FR",), "IT")
    with pytest.raises(LogError):
        decode_leaf(3, leaf_data(header, 1) + b"\x00")


def test_leaves_join_the_tree_in_index_order(fed: Federation) -> None:
    storage = SimpleNamespace(leaf_hashes=lambda: [], blobs=lambda kind: [], size=lambda: 0)
    relay = SimpleNamespace(storage=storage, trust=SimpleNamespace(roster=fed.roster),
                            metrics=SimpleNamespace(log_size=SimpleNamespace(set=lambda n: None)))
    hl = hublog.HubLog(relay, fed.hub_key)
    leaves = [bytes([i]) * 32 for i in range(5)]
    for i in (2, 0, 4, 1):
        hl.add_leaf(i, leaves[i])
    assert hl.tree.size == 3  # 3 has not completed: 4 waits behind it
    hl.add_leaf(3, leaves[3])
    assert hl.tree.size == 5 and hl.tree.root() == root_from_leaf_hashes(leaves)
    hl.add_leaf(1, leaves[1])  # a duplicate report changes nothing
    assert hl.tree.size == 5


def test_migrate_keeps_separate_version_tables(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    assert migrate(conn, ["CREATE TABLE a (x)"], "one") == 1
    assert migrate(conn, ["CREATE TABLE b (x)", "CREATE TABLE c (x)"], "two", table="log_schema_migrations") == 2
    assert migrate(conn, ["CREATE TABLE a (x)"], "one") == 1  # untouched by the second schema
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"a", "b", "c", "schema_migrations", "log_schema_migrations"} <= tables


async def test_accepted_carries_a_promise_that_is_kept(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            raw = seal_for(fed, "IT", ["FR", "DE"])
            r = await it.publish(raw)
            assert r.promise and r.promise.startswith(PROMISE_HEADER)
            promise = open_promise(r.promise, fed.roster, index=r.index, header=header_of(raw))
            assert promise.mmd == hublog.MAX_MERGE_DELAY
            with pytest.raises(LogError):  # bound to this packet and index
                open_promise(r.promise, fed.roster, index=r.index + 1, header=header_of(raw))
            cp, _ = await checkpoint_at_least(url, fed, r.index + 1)
            async with aiohttp.ClientSession() as s:
                proof = (await LogClient(s, url).inclusion([r.index], cp.size))[r.index]
            assert check_promise_kept(promise, cp, list(proof.path))


async def test_concurrent_publishes_share_batch_promises(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "FR", url) as fr:
            await fr.wait_connected()
            raws = [seal_for(fed, "FR", ["IT"]) for _ in range(40)]
            results = await asyncio.gather(*(fr.publish(raw) for raw in raws))
            notes = {r.promise for r in results}
            assert len(notes) < len(results), "promises are signed per batch, not per packet"
            assert any(n and n.startswith(PROMISE_BATCH_HEADER) for n in notes)
            for raw, r in zip(raws, results):
                open_promise(r.promise, fed.roster, index=r.index, header=header_of(raw))  # type: ignore[arg-type]
            cp, _ = await checkpoint_at_least(url, fed, 40)
            async with aiohttp.ClientSession() as s:
                proofs = await LogClient(s, url).inclusion([r.index for r in results], cp.size)
            for raw, r in zip(raws, results):
                proofs[r.index].verify(header_of(raw), cp)


async def test_checkpoints_proofs_and_leaves(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            first = [await it.publish(seal_for(fed, "IT", ["FR"])) for _ in range(3)]
            old, _ = await checkpoint_at_least(url, fed, 3)
            raws = [seal_for(fed, "IT", ["GB", "US"]) for _ in range(5)]
            for raw in raws:
                await it.publish(raw)
            new, note = await checkpoint_at_least(url, fed, 8)
            assert new.time >= old.time and note.startswith("hub/log\n")
            lc = LogClient(s, url)
            path = await lc.consistency(old.size, new.size)
            verify_consistency(old.size, new.size, old.root, new.root, list(path))
            leaves = await lc.leaves(0, new.size)
            assert root_from_leaf_hashes([x.hash for x in leaves]) == new.root
            assert [x.recipients for x in leaves[3:]] == [("GB", "US")] * 5
            by_id = await lc.inclusion_by_id(leaves[4].packet_id)
            assert by_id.index == 4 and by_id.time == leaves[4].time
            by_id.verify(header_of(raws[1]), new)
            assert first[0].index == 0
            # A checkpoint of a recent size is still served.
            async with s.get(url + "/v1/log/checkpoint", params={"size": str(new.size)}) as r:
                assert open_hub_checkpoint(await r.text(), fed.roster).root == new.root


@pytest.mark.parametrize("path, query, needle", [
    ("inclusion", {}, "give index"),
    ("inclusion", {"index": "01"}, "decimal"),
    ("inclusion", {"index": "-1"}, "decimal"),
    ("inclusion", {"index": "0", "id": "x"}, "not both"),
    ("inclusion", {"index": "5"}, "not in the tree"),
    ("inclusion", {"index": "0", "size": "99"}, "exceeds the log size"),
    ("inclusion", {"id": "not-a-uuid"}, "UUID"),
    ("inclusion", {"index": "0", "bogus": "1"}, "unknown parameter"),
    ("consistency", {}, "give old"),
    ("consistency", {"old": "3", "new": "1"}, "exceeds new"),
    ("consistency", {"old": "99999999999999999999"}, "decimal"),
    ("leaves", {"start": "0"}, "give start and end"),
    ("leaves", {"start": "1", "end": "1"}, "start < end"),
    ("leaves", {"start": "0", "end": "5000"}, "start < end"),
    ("checkpoint", {"size": "x"}, "decimal"),
    ("cosignatures", {"a": "b"}, "unknown parameter"),
])
async def test_log_endpoints_validate_parameters(fed: Federation, config, path: str, query: dict[str, str],  # type: ignore[no-untyped-def]
                                                 needle: str) -> None:
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 1)
            async with s.get(f"{url}/v1/log/{path}", params=query) as r:
                body = await r.json()
                assert r.status == 400, body
                assert body["code"] == "bad_request" and needle in body["reason"], body


async def test_deliveries_carry_time_and_proof_and_checkpoints_are_pushed(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            raws = [seal_for(fed, "IT", ["FR"]) for _ in range(3)]
            for raw in raws:
                await it.publish(raw)
            cp, _ = await checkpoint_at_least(url, fed, 3)
            await fr.wait_connected()
            await fr.subscribe("main", [">"])
            got = await collect(fr, 3)
            for d, raw in zip(got, raws):
                p = proof_from_wire(d.proof, d.index)
                assert p.size is not None, "the checkpoint covers these leaves: the path comes along"
                held, _ = await checkpoint_at_least(url, fed, p.size)
                if held.size == p.size:
                    p.verify(header_of(raw), held)
            # A new leaf makes the hub sign and push a checkpoint to the sessions.
            await it.publish(seal_for(fed, "IT", ["FR"]))
            kind, data = await asyncio.wait_for(fr.notices.get(), 5)
            while open_hub_checkpoint(data, fed.roster).size < 4:
                kind, data = await asyncio.wait_for(fr.notices.get(), 5)
            assert kind == "checkpoint"
            live = (await collect(fr, 1))[0]
            assert live.proof is not None and live.proof["time"] > 0


async def test_tree_is_rebuilt_on_restart(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            for _ in range(4):
                await it.publish(seal_for(fed, "IT", ["FR"]))
            before, _ = await checkpoint_at_least(url, fed, 4)
    async with running_hub(config) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            # The latest checkpoint survives the restart, and the rebuilt tree extends it.
            async with s.get(url + "/v1/log/checkpoint") as r:
                assert open_hub_checkpoint(await r.text(), fed.roster).root == before.root
            await it.publish(seal_for(fed, "IT", ["FR"]))
            after, _ = await checkpoint_at_least(url, fed, 5)
            path = await LogClient(s, url).consistency(before.size, after.size)
            verify_consistency(before.size, after.size, before.root, after.root, list(path))


async def test_lost_leaf_notifications_are_caught_up_from_the_store(fed: Federation, config) -> None:  # type: ignore[no-untyped-def]
    from hub.server.app import RELAY
    from hub.server.storage import NewPacket

    async with running_hub(config) as (url, app):
        relay = app[RELAY]
        raw = seal_for(fed, "IT", ["FR"])
        h = envelope.parse_packet(raw).header
        # Committed by the store, but its publish never reported back (as if cancelled).
        await relay.storage.append([NewPacket(h.id, h.sender, h.sender_cert, h.topic, h.nations, h.created,
                                              h.expires, h.raw, raw)], relay.now())
        cp, _ = await checkpoint_at_least(url, fed, 1)
        assert cp.size == 1 and relay.hub_log.tree.leaf(0) == leaf_hash_for(h.raw, relay.storage.read_leaves(0, 1)[0][2])
        assert relay.metrics.log_size._value.get() == 1  # the gauge follows leaves caught up too


async def test_cosignatures_are_verified_and_served(fed: Federation, config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with running_hub(config) as (url, app):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "DE", url) as de, \
                aiohttp.ClientSession() as s:
            await fr.wait_connected()
            await de.wait_connected()
            await fr.publish(seal_for(fed, "FR", ["DE"]))
            await checkpoint_at_least(url, fed, 1)
            w = watcher(fed, "FR", tmp_path / "fr.db")
            await w.poll(s, url, post=fr.post)
            entries = await LogClient(s, url).cosignatures()
            assert [e["nation"] for e in entries] == ["FR"] and entries[0]["size"] == w.head.size  # type: ignore[union-attr]
            # DE cannot pass FR's cosignature off as its own, nor post garbage.
            with pytest.raises(ProtocolError) as exc:
                await de.post("cosignature", w.cosign())  # type: ignore[arg-type]
            assert exc.value.code == "bad_cosignature"
            with pytest.raises(ProtocolError):
                await de.post("cosignature", b"not a note")
            w.close()


def test_hub_verifier_is_the_roster_key(fed: Federation) -> None:
    v = hub_verifier(fed.roster)
    assert v.name == "hub/log" and v.hybrid
    assert [k.public_bytes_raw() for _, _, k in v.keys()] == [fed.roster.hub_key.ed25519, fed.roster.hub_key.mldsa65]



@pytest.mark.parametrize("proof, needle", [
    ({"v": 1, "time": 5}, None),
    ({"v": 1, "time": 5, "size": 3, "path": ["A" * 43 + "="]}, None),
    ({"v": 2, "time": 5}, "version"),
    ({"v": 1}, "must hold"),
    ({"v": 1, "time": 5, "size": 3}, "must hold"),
    ({"v": 1, "time": 5, "extra": 1}, "must hold"),
    ({"v": 1, "time": -1}, "time"),
    ({"v": 1, "time": True}, "time"),
    ({"v": 1, "time": 5, "size": 3, "path": ["not base64!"]}, "base64"),
    ({"v": 1, "time": 5, "size": 3, "path": [b"\x00" * 32]}, "base64 text"),
    ({"v": 1, "time": 5, "index": 9}, "not 4"),
    ([1, 2], "map"),
])
def test_delivery_proofs_are_parsed_strictly(proof: object, needle: str | None) -> None:
    if needle is None:
        assert proof_from_wire(proof, 4).time == 5
    else:
        with pytest.raises(LogError, match=needle):
            proof_from_wire(proof, 4)


def test_batch_promises_are_parsed_strictly(fed: Federation) -> None:
    from hub.protocol.note import NoteSigner, sign_note

    header = header_of(seal_for(fed, "IT", ["FR"]))
    leaf = leaf_hash_for(header, 100)
    signer = NoteSigner("hub/log", fed.hub_key.ed25519, fed.hub_key.mldsa65)
    good = sign_note(hublog.batch_promise_body("hub/log", 101, 60, [(3, 100, leaf), (4, 100, b"\x01" * 32)]), signer)
    p = open_promise(good, fed.roster, index=3, header=header)
    assert (p.index, p.time, p.mmd, p.leaf_hash) == (3, 101, 60, leaf)
    with pytest.raises(LogError, match="different leaf"):
        open_promise(good, fed.roster, index=4, header=header)
    with pytest.raises(LogError, match="does not list"):
        open_promise(good, fed.roster, index=5, header=header)
    for body, needle in ((hublog.batch_promise_body("hub/log", 1, 60, [(4, 1, leaf), (3, 1, leaf)]), "increasing"),
                         (hublog.batch_promise_body("other/log", 1, 60, [(3, 1, leaf)]), "expected"),
                         (hublog.batch_promise_body("hub/log", 1, 7200, [(3, 100, leaf)]), "merge delay")):
        with pytest.raises(LogError, match=needle):
            open_promise(sign_note(body, signer), fed.roster, index=3, header=header)
    forged = good.replace(" 100 ", " 101 ", 1)
    with pytest.raises(LogError):
        open_promise(forged, fed.roster, index=3, header=header)


def test_bundles_are_parsed_strictly(fed: Federation) -> None:
    from clients.audit.bundle import MAGIC, Bundle, decode_bundle
    from hub.protocol import codec
    from hub.protocol.errors import DecodeError

    data = Bundle(fed.roster.raw, 1, "n").encode()
    assert decode_bundle(data).note == "n"
    body = codec.decode(data[len(MAGIC):])
    for change, needle in (({"v": 2}, "version"), ({"extra": 1}, "exactly"), ({"packets": [{"packet": b"x"}]}, "packets"),
                           ({"packets": [{"packet": b"x", "role": "subject", "index": "1"}]}, "index")):
        with pytest.raises(DecodeError, match=needle):
            decode_bundle(MAGIC + codec.encode({**body, **change}))
    with pytest.raises(DecodeError, match="magic"):
        decode_bundle(b"intelhub-evidence-bundle v2\n" + data[len(MAGIC):])
    with pytest.raises(DecodeError):
        decode_bundle(data + b"\x00")  # trailing bytes
