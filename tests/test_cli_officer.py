"""The liaison officer's CLI against a real hub and real nodes: publish, amend, withdraw, status, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from clients.cli.main import cli
from clients.scenario import french_freeze, italian_alert
from hub.protocol.federation import Federation
from hub.server.app import RELAY

from .hubutil import hub_config, running_hub
from .nodeutil import make_node, running_nodes, shown, until




def officer_config(tmp: Path, fed_dir: Path, nation: str, url: str) -> Path:
    p = tmp / f"{nation}-officer.toml"
    p.write_text(f'[officer]\nnation = "{nation}"\nhub = "{url}"\nkey = "{fed_dir}/{nation}/officer.key"\n'
                 f'cert = "{fed_dir}/{nation}/officer.cert"\ntrust = "{fed_dir}"\nstore = "{tmp}/{nation}/store.db"\n'
                 '[defaults]\ntlp = "AMBER"\nhandling = ["H2"]\n')
    return p


def _invoke(config: Path, args: tuple[str, ...]) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), env={"INTELHUB_CONFIG": str(config)}, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


async def run(config: Path, *args: str) -> tuple[int, str, str]:
    # On a thread: the CLI runs its own event loop, and this test's loop serves the hub and nodes.
    return await asyncio.to_thread(_invoke, config, args)


async def as_json(config: Path, *args: str) -> Any:
    code, out, err = await run(config, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def until_async(cond: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_publish_amend_withdraw_status(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        nodes = {n: make_node(n, fed_dir, url, tmp_path) for n in ("IT", "FR", "DE")}
        it = officer_config(tmp_path, fed_dir, "IT", url)
        fr = officer_config(tmp_path, fed_dir, "FR", url)
        async with running_nodes(nodes):
            # From flags.
            a = await as_json(it, "alert", "publish", "--name", "Mohammed Al-Rashid", "--alias", "محمد الراشد",
                        "--identifier", "passport:LY4471203", "--nationality", "LY", "--to", "FR,DE",
                        "--note", "Organises departures from Zuwara.")
            assert a["to"] == ["DE", "FR"] and a["index"] == 0 and a["promise"]
            # From a file.
            f = tmp_path / "freeze.json"
            f.write_text(json.dumps(french_freeze(), ensure_ascii=False))
            b = await as_json(fr, "freeze", "issue", "--file", str(f), "--to", "DE")
            assert b["topic"] == "notices.freeze"
            de = nodes["DE"].st.store
            await until(lambda: de.show(a["id"]) is not None and de.show(b["id"]) is not None, what="DE stores both")
            # Amend from a file: goes to the original's recipients.
            new = italian_alert()
            new["severity"] = "critical"
            nf = tmp_path / "amended.json"
            nf.write_text(json.dumps(new, ensure_ascii=False))
            c = await as_json(it, "amend", a["id"], "--file", str(nf), "--reason", "More detail")
            assert c["to"] == ["DE", "FR"]
            await until(lambda: shown(de, a["id"])["status"] == "amended", what="the amendment")
            # Status: receipts from both recipients.
            async def receipts() -> bool:
                return all(r["delivered"] for r in (await as_json(it, "status", a["id"]))["recipients"])

            await until_async(receipts, what="delivered receipts")
            st = await as_json(it, "status", a["id"])
            assert {r["nation"] for r in st["recipients"]} == {"DE", "FR"}
            code, out, _ = await run(it, "status", a["id"])
            assert code == 0 and "delivered" in out and "DE" in out
            # Only the originator may withdraw (France tries Italy's alert).
            code, _, err = await run(fr, "withdraw", a["id"], "--reason", "not mine", "--to", "DE")
            assert code == 2 and "only the originator" in err  # refused before anything is sealed
            assert shown(de, a["id"])["status"] == "amended"
            # Italy withdraws.
            w = await as_json(it, "withdraw", a["id"], "--reason", "Source retracted")
            assert w["to"] == ["DE", "FR"]
            await until(lambda: shown(de, a["id"])["status"] == "withdrawn", what="the withdrawal")


async def test_dry_run_sends_nothing(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        it = officer_config(tmp_path, fed_dir, "IT", url)
        code, out, err = await run(it, "alert", "publish", "--name", "Test Person", "--to", "all", "--dry-run")
        assert code == 0, err
        assert "DRY RUN" in out and "What the hub sees" in out and '"suite": "IH1-HYBRID"' in out
        assert "Test Person" in out  # what recipients will read
        view = await as_json(it, "alert", "publish", "--name", "Test Person", "--to", "FR", "--dry-run")
        assert view["dry_run"] and view["header (what the hub sees)"]["to"][0]["nation"] == "FR"
        assert app[RELAY].storage.size() == 0


async def test_input_errors_name_the_field_and_send_nothing(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    async with running_hub(hub_config(fed_dir, tmp_path / "hub.db")) as (url, app):
        it = officer_config(tmp_path, fed_dir, "IT", url)
        bad_file = tmp_path / "bad.json"
        bad = italian_alert()
        bad["entities"][0]["nationality"] = ["XX"]
        bad_file.write_text(json.dumps(bad))
        cases = [
            (("alert", "publish", "--name", "X", "--to", "FR,ZZ"), "ZZ", 2),
            (("alert", "publish", "--to", "FR"), "--name", 2),
            (("alert", "publish", "--name", "X", "--identifier", "iban:FR7630006000011234567890188", "--to", "FR"),
             "entities[0].identifiers[0].value", 2),
            (("alert", "publish", "--name", "X", "--identifier", "passport", "--to", "FR"), "KIND:VALUE", 2),
            (("alert", "publish", "--name", "X", "--to", "FR", "--severity", "huge"), "severity", 2),
            (("alert", "publish", "--name", "X", "--to", "FR", "--tlp", "WHITE"), "tlp", 2),
            (("alert", "publish", "--file", str(bad_file), "--to", "FR"), "entities[0].nationality[0]", 2),
            (("freeze", "issue", "--authority", "X", "--to", "FR"), "--legal-basis", 2),
            (("freeze", "issue", "--authority", "Court", "--legal-basis", "Art 1", "--reference", "R1",
              "--subject", "X Y", "--asset", "iban:DE89370400440532013000:12,5:EUR", "--to", "FR"),
             "assets[0].amount", 2),
            (("amend", "not-a-uuid", "--file", str(bad_file), "--reason", "x"), "not a packet id", 2),
            (("status", "01a22648-6706-7726-9bba-1a9f5850315b"), "does not exist", 2),
        ]
        for args, needle, code in cases:
            got, out, err = await run(it, *args)
            assert got == code, (args, got, out, err)
            assert needle in err, (args, err)
        missing_cfg = tmp_path / "nokey.toml"
        missing_cfg.write_text(f'[officer]\nhub = "{url}"\ntrust = "{fed_dir}"\ncert = "{fed_dir}/IT/officer.cert"\n')
        got, _, err = await run(missing_cfg, "alert", "publish", "--name", "X", "--to", "FR")
        assert got == 2 and "no key configured" in err and "INTELHUB_KEY" in err
        assert app[RELAY].storage.size() == 0  # nothing was sent by any of it
