"""The auditor's tool end to end: real hub, real nodes, then `intelhub audit` over their stores and bundles."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from clients.audit.bundle import MAGIC, decode_bundle
from clients.audit.completeness import audit_completeness
from clients.audit.fetch import LogClient
from clients.cli.auditor import audit
from clients.node.store import NodeStore
from hub.protocol import codec, envelope
from hub.protocol.federation import Federation

from .hubutil import node_client, running_hub, seal_for
from .logutil import checkpoint_at_least, fast_config, watcher
from .nodeutil import make_node, running_nodes, until

SUBS = '[[subscriptions]]\nname = "main"\npatterns = ["alerts.>", "receipts.>"]\n'




@dataclass
class Scene:
    url: str
    store: Path
    alerts: list[str]
    notice: str


async def cli(*args: Any) -> Result:
    """Run `intelhub audit ...` on a thread: it runs its own event loop (asyncio.run), as from a shell."""
    return await asyncio.to_thread(CliRunner().invoke, audit, [str(a) for a in args], catch_exceptions=False)


def stored_ids(store: Path) -> set[str]:
    st = NodeStore(store)
    try:
        return {envelope.parse_packet(raw).header.packet_id for _, raw in st.raw_packets()}
    finally:
        st.close()


@asynccontextmanager
async def scene(fed: Federation, fed_dir: Path, tmp_path: Path, *, watch: bool = True) -> AsyncIterator[Scene]:
    """IT publishes three alerts and a freeze notice to FR; FR's node (subscribed to alerts only) stores them."""
    async with running_hub(fast_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        node = make_node("FR", fed_dir, url, tmp_path, SUBS)
        store = tmp_path / "FR" / "store.db"
        async with running_nodes({"FR": node}), node_client(fed, "IT", url) as it:
            await it.wait_connected()
            alerts = []
            for _ in range(3):
                raw = seal_for(fed, "IT", ["FR"])
                await it.publish(raw)
                alerts.append(envelope.parse_packet(raw).header.packet_id)
            raw = seal_for(fed, "IT", ["FR"], topic="notices.freeze")
            await it.publish(raw)
            notice = envelope.parse_packet(raw).header.packet_id
            await until(lambda: set(alerts) <= stored_ids(store), what="FR stores the alerts")
        await checkpoint_at_least(url, fed, 4)
        if watch:
            # The node's own watcher tracked them while running; a final poll proves what is left.
            w = watcher(fed, "FR", store, pin_interval=0)
            st = NodeStore(store)
            w.backfill(st.raw_packets())
            st.close()
            async with aiohttp.ClientSession() as s:
                report = await w.poll(s, url)
            assert not report.evidence
            w.close()
        else:
            # A store whose node never watched the log (an older node): no log state at all.
            con = sqlite3.connect(store)
            for table in ("log_inclusion", "log_checkpoints", "log_head", "log_promises", "log_witnesses"):
                con.execute(f"DELETE FROM {table}")
            con.commit()
            con.close()
        yield Scene(url, store, alerts, notice)


async def test_verify_a_store_offline(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path) as sc:
        pass
    r = await cli("verify", sc.store, "--trust", fed_dir)  # the hub is gone: everything needed is in the store
    assert r.exit_code == 0, r.output
    assert "3 packet(s), 0 failed" in r.output and "OK" in r.output.splitlines()[-1]
    data = json.loads((await cli("verify", sc.store, "--trust", fed_dir, "--json")).output)
    assert data["ok"] and {p["ed25519"] for p in data["packets"]} == {"ok"}
    assert {p["mldsa65"] for p in data["packets"]} == {"ok"}
    assert all(p["log"].startswith("included") for p in data["packets"]), [p["log"] for p in data["packets"]]


async def test_an_unwatched_store_verifies_but_does_not_prove_the_log(fed: Federation, fed_dir: Path,
                                                                      tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path, watch=False) as sc:
        pass
    assert (await cli("verify", sc.store, "--trust", fed_dir)).exit_code == 0
    r = await cli("verify", sc.store, "--trust", fed_dir, "--require-log")
    assert r.exit_code == 1 and "log inclusion not proven" in r.output


async def test_export_a_bundle_that_verifies_offline_and_detects_tampering(fed: Federation, fed_dir: Path,
                                                                          tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path) as sc:
        bundle = tmp_path / "case.bundle"
        r = await cli("export", sc.alerts[0], sc.alerts[2], "-o", bundle, "--store", sc.store, "--trust", fed_dir,
                "--note", "case 2025/117")
        assert r.exit_code == 0, r.output
    b = decode_bundle(bundle.read_bytes())
    assert [p.role for p in b.packets] == ["subject", "subject"] and all(p.content for p in b.packets)
    assert b.note == "case 2025/117" and b.checkpoints
    # Offline, with nothing but the file (the roster fingerprint is shown to compare by hand) ...
    r = await cli("verify", bundle)
    assert r.exit_code == 0, r.output
    assert "roster fingerprint" in r.output and "disclosed" not in r.output
    data = json.loads((await cli("verify", bundle, "--json")).output)
    assert [p["disclosure"][:2] for p in data["packets"]] == ["ok", "ok"]
    assert all(p["log"].startswith("included") for p in data["packets"]), [p["log"] for p in data["packets"]]
    # ... or pinned to the federation's roster.
    assert (await cli("verify", bundle, "--trust", fed_dir)).exit_code == 0
    # Any change to a packet, a proof or a checkpoint is caught.
    d = codec.decode(bundle.read_bytes()[len(MAGIC):], max_size=1 << 30, max_items=1 << 20)
    def flip(b: bytes) -> bytes:
        return b[:-1] + bytes([b[-1] ^ 1])

    for mutate in (lambda d: d["packets"][0].update(packet=flip(d["packets"][0]["packet"])),
                   lambda d: d["packets"][1].update(time=d["packets"][1]["time"] + 1),
                   lambda d: d["packets"][0].update(content=d["packets"][0]["content"] + b" "),
                   lambda d: d["packets"][1].update(path=[flip(d["packets"][1]["path"][0])]
                                                    + d["packets"][1]["path"][1:]),
                   lambda d: d.update(checkpoints=[c.replace("time ", "time 1") for c in d["checkpoints"]])):
        tampered = codec.decode(codec.encode(d), max_size=1 << 30, max_items=1 << 20)
        mutate(tampered)
        path = tmp_path / "tampered.bundle"
        path.write_bytes(MAGIC + codec.encode(tampered))
        r = await cli("verify", path)
        assert r.exit_code == 1, r.output


async def test_completeness_lists_missing_and_unsubscribed(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path) as sc:
        # While FR's node is down, IT sends FR another alert: in the log, not in FR's store.
        async with node_client(fed, "IT", sc.url) as it:
            await it.wait_connected()
            raw = seal_for(fed, "IT", ["FR", "DE"])
            await it.publish(raw)
            missing = envelope.parse_packet(raw).header.packet_id
            last = await it.publish(seal_for(fed, "IT", ["DE"]))  # not FR's business
        await checkpoint_at_least(sc.url, fed, last.index + 1)
        async with aiohttp.ClientSession() as s:
            st = NodeStore(sc.store)
            report = await audit_completeness(LogClient(s, sc.url), fed.roster, sc.store, "FR",
                                              patterns=("alerts.>", "receipts.>"), grace=0,
                                              has_packet=st.has_packet)
            st.close()
        assert report.leaves >= 6 and (report.addressed, report.received) == (5, 3)  # leaves: receipts to IT too
        assert [x.packet_id for x in report.missing] == [missing]
        assert [x.packet_id for x in report.not_subscribed] == [sc.notice]
        assert not report.complete and not report.problems
        r = await cli("completeness", "--store", sc.store, "--trust", fed_dir, "--hub", sc.url, "--nation", "FR",
                "--subscribe", "alerts.>", "--grace", "0")
        assert r.exit_code == 1 and "MISSING" in r.output and missing in r.output and "INCOMPLETE" in r.output
        data = json.loads((await cli("completeness", "--store", sc.store, "--trust", fed_dir, "--hub", sc.url,
                              "--nation", "FR", "--grace", "0", "--json")).output)
        assert {x["id"] for x in data["missing"]} == {missing, sc.notice}  # no patterns: every topic counts


async def test_completeness_of_a_complete_store(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path) as sc:
        r = await cli("completeness", "--store", sc.store, "--trust", fed_dir, "--hub", sc.url, "--nation", "fr",
                "--subscribe", "alerts.>")
        assert r.exit_code == 0, r.output
        assert "COMPLETE" in r.output and "1 not subscribed" in r.output
        # The node's own configuration gives store, keys, hub, nation and subscriptions.
        r = await cli("completeness", "--node-config", tmp_path / "FR" / "node.toml", "--json")
        data = json.loads(r.output)
        assert r.exit_code == 0 and data["complete"] and [x["id"] for x in data["not_subscribed"]] == [sc.notice]


openssl = shutil.which("openssl")


def _openssl_verify(key: Path, data: Path, sig: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([openssl or "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(key), "-rawin",
                           "-in", str(data), "-sigfile", str(sig)], capture_output=True, timeout=30)


@pytest.mark.skipif(openssl is None, reason="openssl is not installed")
async def test_openssl_alone_verifies_an_exported_signature(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path, watch=False) as sc:
        pass
    out = tmp_path / "sig"
    r = await cli("export-signature", sc.alerts[1], "--out", out, "--store", sc.store, "--trust", fed_dir)
    assert r.exit_code == 0, r.output
    ok = _openssl_verify(out / "pub.pem", out / "signed.bin", out / "sig.bin")
    assert ok.returncode == 0 and b"Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
    chain = _openssl_verify(out / "root-pub.pem", out / "cert-signed.bin", out / "cert-sig.bin")
    assert chain.returncode == 0, chain.stdout + chain.stderr
    assert (out / "mldsa65.sig").stat().st_size == 3309 and "openssl pkeyutl" in (out / "README.txt").read_text()
    tampered = out / "tampered.bin"
    data = bytearray((out / "signed.bin").read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    bad = _openssl_verify(out / "pub.pem", tampered, out / "sig.bin")
    assert bad.returncode != 0 and b"Signature Verified Successfully" not in bad.stdout
    # The same export from a packet file, with no store.
    st = NodeStore(sc.store)
    raw = next(raw for _, raw in st.raw_packets())
    st.close()
    (tmp_path / "p.bin").write_bytes(raw)
    assert (await cli("export-signature", tmp_path / "p.bin", "--out", tmp_path / "sig2", "--trust", fed_dir)).exit_code == 0


async def test_verify_packet_files_with_and_without_the_hub(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with scene(fed, fed_dir, tmp_path, watch=False) as sc:
        st = NodeStore(sc.store)
        raw = next(raw for _, raw in st.raw_packets())
        st.close()
        f = tmp_path / "p.bin"
        f.write_bytes(raw)
        r = await cli("verify", f, "--trust", fed_dir, "--hub", sc.url, "--json")
        data = json.loads(r.output)
        assert r.exit_code == 0 and data["packets"][0]["log"].startswith("included"), r.output
    r = await cli("verify", f, "--trust", fed_dir)
    assert r.exit_code == 0 and "not proven" in r.output
    tampered = bytearray(raw)
    tampered[-5] ^= 1
    f.write_bytes(bytes(tampered))
    r = await cli("verify", f, "--trust", fed_dir, "--json")
    assert r.exit_code == 1 and not json.loads(r.output)["ok"]


def test_every_audit_command_has_help() -> None:
    for cmd in ("verify", "completeness", "export", "export-signature"):
        r = CliRunner().invoke(audit, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output and len(r.output) > 300


async def test_watcher_catches_up_after_a_day_offline(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """A watcher that last saw size n checks one consistency proof to the hub's current size."""
    async with running_hub(fast_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        async with node_client(fed, "IT", url) as it, aiohttp.ClientSession() as s:
            await it.wait_connected()
            await it.publish(seal_for(fed, "IT", ["FR"]))
            await checkpoint_at_least(url, fed, 1)
            w = watcher(fed, "FR", tmp_path / "fr.db")
            await w.poll(s, url)
            w.close()
            await asyncio.gather(*(it.publish(seal_for(fed, "IT", ["DE"])) for _ in range(30)))
            await checkpoint_at_least(url, fed, 31)
            w = watcher(fed, "FR", tmp_path / "fr.db")  # restarted: the head survived
            assert w.head is not None and w.head.size == 1
            report = await w.poll(s, url)
            assert report.head == 31 and not report.evidence
            w.close()
