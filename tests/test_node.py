"""National nodes against a real hub: filters, amend/withdraw, search, lookup, receipts, quarantine."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from clients.node.service import NodeService
from clients.scenario import IBAN_DE, ORGANISER, WALLET, french_freeze, french_lift, italian_alert, italian_amendment
from hub.protocol import codec, envelope
from hub.protocol.federation import Federation
from hub.protocol.suites import HYBRID
from hub.server.app import RELAY

from .hubutil import hub_config, node_client, running_hub, seal_for
from .nodeutil import make_node, running_nodes, shown, until




def stored(svc: NodeService) -> int:
    return svc.counts["stored"] + svc.counts["dropped"]


async def test_alert_freeze_amend_withdraw_search_lookup_receipts(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {n: make_node(n, fed_dir, url, tmp_path) for n in ("IT", "FR", "DE", "GB")}
        async with running_nodes(nodes), node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            alert = seal_for(fed, "IT", ["FR", "DE", "GB"], content=italian_alert())
            alert_id = envelope.parse_packet(alert).header.packet_id
            await it.publish(alert)
            freeze = seal_for(fed, "FR", ["GB", "DE"], topic="notices.freeze", content=french_freeze())
            freeze_id = envelope.parse_packet(freeze).header.packet_id
            await fr.publish(freeze)
            await until(lambda: stored(nodes["DE"]) == 2 and stored(nodes["GB"]) == 2, what="DE and GB store both")
            de = nodes["DE"].st.store
            # Cross-script and misspelled: the German analyst's spelling.
            for q in ("Muhammad al Rashid", "Mohamed Alrachid", "محمد الراشد", "Мухаммед Аль-Рашид"):
                hits = de.search(q)
                # Both the alert's organiser and the freeze's subject carry the name: both are found.
                found = {h.packet_id: h for h in hits}
                assert {alert_id, freeze_id} <= found.keys(), q
                assert found[alert_id].score >= 0.8 and found[alert_id].why, q
            # Identifier lookup after normalisation.
            assert any(r["packet_id"] == alert_id for r in de.lookup("wallet", WALLET))
            spaced = " ".join(IBAN_DE[i:i + 4] for i in range(0, len(IBAN_DE), 4)).lower()
            assert any(r["packet_id"] == freeze_id for r in de.lookup("IBAN", spaced))
            # Italy amends; France lifts one account.
            await it.publish(seal_for(fed, "IT", ["FR", "DE", "GB"], topic="control.amend",
                                      content=italian_amendment(alert_id)))
            await fr.publish(seal_for(fed, "FR", ["GB", "DE"], topic="control.amend", content=french_lift(freeze_id)))
            await until(lambda: len(shown(de, alert_id)["versions"]) == 2 and len(shown(de, freeze_id)["versions"]) == 2,
                        what="DE applies both amendments")
            rec = shown(de, alert_id)
            assert rec["status"] == "amended" and len(rec["versions"]) == 2
            assert rec["content"]["severity"] == "critical"
            active = de.freezes(active_only=True)
            assets = [a["status"] for f in active for a in f["assets"]]
            assert assets.count("lifted") == 1 and assets.count("frozen") == 2
            # Receipts: DE, FR and GB each sent "delivered" to Italy; Italy's node stored them.
            await until(lambda: len(nodes["IT"].st.store.receipts_for(alert_id)) >= 3, what="receipts reach IT")
            froms = {r["nation"] for r in nodes["IT"].st.store.receipts_for(alert_id)}
            assert froms == {"FR", "DE", "GB"}
            # Withdrawal removes the record from search everywhere, and show marks it.
            await it.publish(seal_for(fed, "IT", ["FR", "DE", "GB"], topic="control.withdraw",
                                      content={"type": "withdraw", "ref": alert_id, "reason": "Source retracted"}))
            await until(lambda: shown(de, alert_id)["status"] == "withdrawn", what="withdrawal")
            assert all(h.packet_id != alert_id for h in de.search(ORGANISER))
            assert shown(de, alert_id)["status"] == "withdrawn"


async def test_filters_route_drop_and_notify(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    sink = tmp_path / "fiu.jsonl"
    extra = f"""
[sinks.fiu]
type = "jsonl"
path = "{sink}"

[[filters]]
name = "drop-green-low"
tlp = "GREEN"
severity = "low"
action = "drop"

[[filters]]
name = "freezes-to-fiu"
packet_type = "freeze"
notify = ["fiu"]
processed = true
"""
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {"IT": make_node("IT", fed_dir, url, tmp_path), "FR": make_node("FR", fed_dir, url, tmp_path),
                 "GB": make_node("GB", fed_dir, url, tmp_path, extra)}
        async with running_nodes(nodes), node_client(fed, "IT", url) as it, node_client(fed, "FR", url) as fr:
            await it.wait_connected()
            await fr.wait_connected()
            low = italian_alert()
            low["severity"], low["handling"] = "low", {"tlp": "GREEN", "codes": [], "source": "C", "information": "3"}
            await it.publish(seal_for(fed, "IT", ["GB"], content=low))
            await fr.publish(seal_for(fed, "FR", ["GB"], topic="notices.freeze", content=french_freeze()))
            gb = nodes["GB"]
            await until(lambda: gb.counts["dropped"] == 1 and gb.counts["stored"] == 1, what="GB decisions")
            await until(lambda: sink.exists() and sink.read_text().count("\n") == 1, what="sink line")
            line = json.loads(sink.read_text())
            assert line["sink"] == "fiu" and line["payload"]["content"]["type"] == "freeze"
            assert gb.st.store.search(ORGANISER)[0].schema == "Person"  # the freeze subject, not the dropped alert
            # processed = true: France's node receives a "processed" receipt as well as "delivered".
            fid = line["packet_id"]
            await until(lambda: {r["status"] for r in nodes["FR"].st.store.receipts_for(fid)} == {"delivered", "processed"},
                        what="processed receipt")


async def test_corrupt_packets_are_quarantined_and_acknowledged(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """A packet the hub accepts (valid signature) but FR cannot decrypt: quarantined, counted, acked."""
    m = fed.members["IT"]
    now = int(time.time())
    good = seal_for(fed, "IT", ["FR"])
    p = codec.decode(good)
    h = codec.decode(p["header"])
    # IT wraps garbage for FR and signs honestly: the signature is valid, the key never opens.
    p["keys"] = [bytes(len(p["keys"][0]))]
    h["to"][0]["wrap"] = hashlib.sha256(p["keys"][0]).digest()
    h["id"] = envelope.new_packet_id(now * 1000)
    p["header"] = codec.encode(h)
    p["sig"] = m.officer.sign(b"intelhub/v1/packet\n" + p["header"], mldsa=HYBRID.mldsa)
    bad = codec.encode(p)
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {"FR": make_node("FR", fed_dir, url, tmp_path)}
        async with running_nodes(nodes), node_client(fed, "IT", url) as it:
            await it.wait_connected()
            await it.publish(bad)
            await it.publish(good)
            fr = nodes["FR"]
            await until(lambda: fr.counts["quarantined"] == 1 and fr.counts["stored"] == 1, what="quarantine")
            assert fr.st.store.stats()["quarantined"] == 1
            # Both were acknowledged to the hub, the quarantined one included: nothing blocks the queue.
            from hub.server.app import RELAY

            await until(lambda: app[RELAY].metrics.acked._value.get() >= 2, what="hub received both acks")


@pytest.mark.parametrize("fault", ["after_store:7", "before_store:7"])
async def test_node_killed_between_receive_and_ack_stores_each_packet_once(
        fed: Federation, fed_dir: Path, tmp_path: Path, fault: str) -> None:
    """The node process dies abruptly after committing (or just before committing) a packet it has
    not acknowledged; after restart every packet is in the store exactly once."""
    from .nodeutil import NodeProcess, node_toml

    n = 40
    config = hub_config(fed_dir, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        d = tmp_path / "FR"
        d.mkdir()
        cfg = d / "node.toml"
        cfg.write_text(node_toml("FR", fed_dir, url, d / "store.db"))
        node = NodeProcess(cfg, d / "node.log")
        async with node_client(fed, "IT", url) as it:
            await it.wait_connected()
            ids = []
            for _ in range(n):
                raw = seal_for(fed, "IT", ["FR"])
                ids.append(envelope.parse_packet(raw).header.packet_id)
                await it.publish(raw)
            node.start(env={"INTELHUB_FAULT": fault})
            await until(lambda: node.proc.poll() is not None, 60, "the injected crash")  # type: ignore[union-attr]
            assert node.proc.returncode == 137  # type: ignore[union-attr]
            node.start()  # again, healthy
            try:
                from clients.node.store import NodeStore

                def complete() -> bool:
                    if not (d / "store.db").exists():
                        return False
                    st = NodeStore(d / "store.db")
                    try:
                        return all(st.has_packet(i) for i in ids)
                    finally:
                        st.close()

                await until(complete, 60, "every packet stored after restart")
            finally:
                node.stop()
        import sqlite3

        con = sqlite3.connect(d / "store.db")
        rows = con.execute("SELECT packet_id, COUNT(*) FROM packets GROUP BY packet_id").fetchall()
        con.close()
        counts = {pid: c for pid, c in rows}
        assert all(counts.get(i) == 1 for i in ids), "a packet is missing or stored twice"
        print(f"\n{fault}: {n} packets, node killed once, each stored exactly once")


async def test_revocations_reach_running_nodes(fed_dir: Path, tmp_path: Path) -> None:
    """A revocation posted to the hub is pushed to every connected node, which then refuses
    packets the revoked certificate signs from that moment on."""
    import shutil

    from hub.keyfiles import load_private_keys, load_revocations
    from hub.protocol.roster import Revocation, sign_revocations

    own = tmp_path / "fed"
    shutil.copytree(fed_dir, own)
    now = int(__import__("time").time())
    config = hub_config(own, tmp_path / "hub.db")
    async with running_hub(config) as (url, app):
        nodes = {"FR": make_node("FR", own, url, tmp_path)}
        async with running_nodes(nodes):
            fr = nodes["FR"]
            cert = next(c for c in fr.me.trust.certs.values() if c.name == "IT/it-officer")
            root = load_private_keys(own / "IT" / "root.key").signing
            old = load_revocations(own / "IT" / "revocations.txt")
            rl = sign_revocations(root, nation="IT", serial=old.serial + 1, issued=now,  # type: ignore[arg-type]
                                  entries=[Revocation(cert.fp, now - 5, "key_compromise")])
            import aiohttp

            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/v1/revocations", data=rl.raw) as r:
                    assert r.status == 200, await r.text()
            await until(lambda: fr.me.trust.revoked_at(cert) == now - 5, what="FR learns the revocation")
            assert fr.me.trust.usable_at(cert, now) is not None


async def test_a_subscription_dropped_from_the_configuration_is_removed_at_the_hub(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """The node remembers the hub subscriptions it made; one no longer configured is removed at the
    hub when the node next starts, so that the hub stops keeping packets for it."""
    two = ('[[subscriptions]]\nname = "main"\npatterns = [">"]\n\n'
           '[[subscriptions]]\nname = "old"\npatterns = ["alerts.>"]\n')
    one = '[[subscriptions]]\nname = "main"\npatterns = [">"]\n'
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        storage = app[RELAY].storage
        async with running_nodes({"FR": make_node("FR", fed_dir, url, tmp_path, two)}) as nodes:
            assert storage.subscription_names("FR") == ["main", "old"]
            assert nodes["FR"].st.store.hub_subscriptions() == ["main", "old"]
        async with running_nodes({"FR": make_node("FR", fed_dir, url, tmp_path, one)}) as nodes:
            assert storage.subscription_names("FR") == ["main"]
            assert nodes["FR"].st.store.hub_subscriptions() == ["main"]


async def test_a_node_started_while_the_hub_is_down_waits_for_it_and_stops_when_told(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It neither gives up on the hub after a minute nor ignores a stop while it waits."""
    import asyncio
    import socket

    from clients.node import service as node_service

    monkeypatch.setattr(node_service, "START_WARN_EVERY", 0.3)  # several rounds of waiting, not one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    subs = '[[subscriptions]]\nname = "main"\npatterns = [">"]\n'

    # Stopped while waiting: it returns, promptly, without an error.
    waiting = make_node("DE", fed_dir, url, tmp_path / "a", subs)
    stop = asyncio.Event()
    run = asyncio.create_task(waiting.run(stop))
    await asyncio.sleep(1.0)
    assert not run.done()
    stop.set()
    await asyncio.wait_for(run, 10)

    # Left waiting: it connects and subscribes once the hub comes up.
    fr = make_node("FR", fed_dir, url, tmp_path / "b", subs)
    stop, ready = asyncio.Event(), asyncio.Event()
    run = asyncio.create_task(fr.run(stop, ready))
    try:
        await asyncio.sleep(1.5)
        assert not run.done() and not ready.is_set()
        async with running_hub(hub_config(fed_dir, tmp_path / "hub.db"), port=port) as (_, app):
            await asyncio.wait_for(ready.wait(), 30)
            assert app[RELAY].storage.subscription_names("FR") == ["main"]
            stop.set()
            await asyncio.wait_for(run, 10)
    finally:
        stop.set()
        if not run.done():
            run.cancel()


async def test_a_node_whose_subscription_the_hub_cannot_store_yet_backs_off(
        fed: Federation, fed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A hub whose disk refuses writes answers `unavailable`: the node asks again with backoff
    (not thousands of times a second), warns now and then, and subscribes once the disk is back."""
    import asyncio
    import logging

    from hub.protocol.errors import StoreError

    caplog.set_level(logging.WARNING, "intelhub.node")
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        storage = app[RELAY].storage
        real, calls = storage.subscribe, []

        async def failing_disk(*a: object, **kw: object) -> object:
            calls.append(time.monotonic())
            if len(calls) <= 6:
                raise StoreError("database or disk is full")
            return await real(*a, **kw)

        monkeypatch.setattr(storage, "subscribe", failing_disk)
        fr = make_node("FR", fed_dir, url, tmp_path, '[[subscriptions]]\nname = "main"\npatterns = [">"]\n')
        stop, ready = asyncio.Event(), asyncio.Event()
        run = asyncio.create_task(fr.run(stop, ready))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            assert len(calls) == 7 and storage.subscription_names("FR") == ["main"]
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
    warnings = [r for r in caplog.records if "not connected and subscribed yet" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]
    assert calls[-1] - calls[0] > 0.05, "no backoff between the attempts"  # none: a few ms
