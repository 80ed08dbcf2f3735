"""The seven-nation demo: a hub and seven national nodes on 127.0.0.1, driven by the real CLI.

Every step runs the same `intelhub` command a person would type, and prints it
with its output. Processes are started, watched and stopped here; nothing is left
running unless ``--keep-running`` is given.
"""

from __future__ import annotations

import json
import os
import sqlite3
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audit import storeread
from .scenario import WALLET, french_freeze, french_lift, italian_alert, italian_amendment

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "keys" / "example"
NATIONS = ("CA", "DE", "FR", "GB", "IT", "JP", "US")


class Federation:
    """A hub and seven nodes as child processes, with their configuration under ``run_dir``."""

    def __init__(self, run_dir: Path, say: Callable[[str], None] = print) -> None:
        self.dir = run_dir
        self.say = say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""

    # -- set-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "logs").mkdir(parents=True)
        (self.dir / "hub.toml").write_text(
            "# demo hub: plain HTTP on 127.0.0.1 with the EXAMPLE ONLY keys\n"
            f'[hub]\nlisten = "127.0.0.1:0"\nkey = "{KEYS}/hub/hub.key"\ntrust = "{KEYS}"\n'
            f'database = "{self.dir}/hub.db"\nverify_threads = 2\ncheckpoint_interval = 0.5\n'
            '[limits]\nack_timeout = 10\n')

    def start_hub(self) -> None:
        port_file = self.dir / "hub.port"
        self._spawn("hub", ["hub", "serve", "--config", str(self.dir / "hub.toml"), "--port-file", str(port_file)])
        self._wait(lambda: port_file.exists(), 30, "the hub to listen")
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def start_nodes(self) -> None:
        for n in NATIONS:
            d = self.dir / n
            d.mkdir()
            (d / "node.toml").write_text(
                f'# {n} national node (demo)\n[node]\nnation = "{n}"\nhub = "{self.url}"\n'
                f'key = "{KEYS}/{n}/node.key"\ncert = "{KEYS}/{n}/node.cert"\ntrust = "{KEYS}"\n'
                f'store = "{d}/store.db"\n\n[[subscriptions]]\nname = "main"\npatterns = [">"]\n')
            (d / "officer.toml").write_text(
                f'# {n} liaison officer / analyst CLI settings (demo)\n[officer]\nnation = "{n}"\n'
                f'hub = "{self.url}"\nkey = "{KEYS}/{n}/officer.key"\ncert = "{KEYS}/{n}/officer.cert"\n'
                f'trust = "{KEYS}"\nstore = "{d}/store.db"\n\n[defaults]\ntlp = "AMBER"\nhandling = ["H2"]\n')
            self._spawn(f"node-{n}", ["node", "run", "--config", str(d / "node.toml")])
        self._wait(lambda: self.health().get("sessions", 0) >= len(NATIONS), 60, "seven nodes to connect")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / "logs" / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "clients", *args], cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {self.dir}/logs/{name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except OSError:
            return {}

    def stop(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- the CLI ------------------------------------------------------------------------------

    def cli(self, nation: str, *args: str, show: bool = True, json_out: bool = False, check: bool = True) -> Any:
        """Run `intelhub ARGS` as ``nation``'s officer/analyst; print the command and its output."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "INTELHUB_CONFIG": str(self.dir / nation / "officer.toml")}
        cmd = ["intelhub", *args] + (["--json"] if json_out else [])
        if show:  # paths shown relative to the repository, as a person would type them
            shown = " ".join(_quote(a.replace(f"{ROOT}/", "")) for a in cmd)
            self.say(f"\n  [{nation}] $ {shown}")
        r = subprocess.run([sys.executable, "-m", "clients", *cmd[1:]], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0 and (check or not r.stdout.strip()):
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stdout.strip()} {r.stderr.strip()}")
        if json_out:
            return json.loads(r.stdout)
        if show:
            for line in r.stdout.rstrip().splitlines():
                self.say(f"    {line}")
        return r.stdout

    def unproven(self, nation: str) -> int:
        """Packets in ``nation``'s store whose log inclusion its watcher has not proven yet."""
        conn = storeread.open_readonly(self.dir / nation / "store.db")
        try:
            return int(conn.execute(
                "SELECT COUNT(*) FROM packets WHERE log_index IS NOT NULL AND log_index NOT IN "
                "(SELECT log_index FROM log_inclusion WHERE status = 'verified')").fetchone()[0])
        except sqlite3.Error:  # the watcher's tables are not there yet
            return -1
        finally:
            conn.close()

    def store_stats(self, nation: str) -> dict[str, Any]:
        return self.cli(nation, "node", "stats", show=False, json_out=True)  # type: ignore[no-any-return]


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./:,=+@" for c in a) else json.dumps(a, ensure_ascii=False)


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


def run_network(run_dir: Path, *, keep_running: bool = False, say: Callable[[str], None] = print) -> int:
    fed = Federation(run_dir, say)
    fed.prepare()
    started = time.monotonic()
    try:
        say("\n== 2. A hub and seven national nodes on 127.0.0.1 ==")
        fed.start_hub()
        say(f"  hub listening on {fed.url} (plain HTTP on loopback; EXAMPLE ONLY keys)")
        fed.start_nodes()
        say(f"  7 nodes connected and subscribed: {', '.join(NATIONS)}")
        files = run_dir / "files"
        files.mkdir()

        say("\n== 3. Italy publishes an entity alert to all partners ==")
        (files / "alert.json").write_text(json.dumps(italian_alert(), ensure_ascii=False, indent=1))
        a = fed.cli("IT", "alert", "publish", "--file", str(files / "alert.json"), "--to", "all", json_out=True)
        alert_id = a["id"]
        say(f"  [IT] published {alert_id} at log index {a['index']} to {', '.join(a['to'])}")

        say("\n== 4. France issues an asset-freeze notice to GB, US and DE ==")
        (files / "freeze.json").write_text(json.dumps(french_freeze(), ensure_ascii=False, indent=1))
        f = fed.cli("FR", "freeze", "issue", "--file", str(files / "freeze.json"), "--to", "GB,US,DE", json_out=True)
        freeze_id = f["id"]
        say(f"  [FR] published {freeze_id} at log index {f['index']} to {', '.join(f['to'])}")
        _wait_for(lambda: sum(fed.store_stats("DE")["packets"].values()) >= 2, 30, "DE to store both")

        say("\n== 5. A German analyst searches another spelling; the US looks the wallet up ==")
        fed.cli("DE", "search", "Muhammad al Rashid", "--limit", "3")
        fed.cli("DE", "search", "محمد الراشد", "--limit", "3")
        fed.cli("US", "lookup", "wallet", WALLET)

        say("\n== 6. Italy amends the alert; France lifts one account from the freeze ==")
        (files / "alert-v2.json").write_text(json.dumps(italian_amendment(alert_id)["content"], ensure_ascii=False))
        fed.cli("IT", "amend", alert_id, "--file", str(files / "alert-v2.json"), "--reason",
                "New alias and a second departure point")
        (files / "freeze-v2.json").write_text(json.dumps(french_lift(freeze_id)["content"], ensure_ascii=False))
        fed.cli("FR", "amend", freeze_id, "--file", str(files / "freeze-v2.json"), "--reason",
                "Account a2 released by court order")
        _wait_for(lambda: "critical" in fed.cli("GB", "show", alert_id, show=False), 30, "GB to apply the amendment")
        fed.cli("GB", "freezes", "--active")

        say("\n== 7. Receipts come back to the originators ==")
        fed.cli("DE", "node", "mark-processed", alert_id)
        _wait_for(lambda: all(r["delivered"] for r in fed.cli("IT", "status", alert_id, show=False, json_out=True)["recipients"])
                  and any(r["processed"] for r in fed.cli("IT", "status", alert_id, show=False, json_out=True)["recipients"]),
                  30, "receipts from every partner")
        fed.cli("IT", "status", alert_id)
        fed.cli("FR", "status", freeze_id)

        # Each node proves a packet's inclusion once a checkpoint covers it (within a second or two):
        # the audit below requires every proof, so wait for the watchers to have them all.
        _wait_for(lambda: all(fed.unproven(n) == 0 for n in NATIONS), 30,
                  "every node's log watcher to prove the inclusion of what it stored")
        say("\n== 8. An auditor verifies every packet from public keys only, and the log ==")
        failures = 0
        fed.cli("DE", "audit", "verify", str(run_dir / "DE" / "store.db"), "--trust", str(KEYS), "--hub", fed.url,
                "--require-log")
        for n in NATIONS:
            v = fed.cli(n, "audit", "verify", str(run_dir / n / "store.db"), "--trust", str(KEYS), "--hub", fed.url,
                        "--require-log", show=False, json_out=True, check=False)
            c = fed.cli(n, "audit", "completeness", "--node-config", str(run_dir / n / "node.toml"), show=False,
                        json_out=True, check=False)
            packets = v.get("packets", [])
            logged = sum(1 for p in packets if str(p.get("log", "")).startswith("included"))
            bad = sum(1 for p in packets if not p.get("ok")) + len(v.get("problems", []))
            missing = len(c.get("missing", []))
            failures += bad + missing + (0 if v.get("ok") else 1) + (0 if c.get("complete") else 1)
            say(f"  {n}: {len(packets)} packet(s): signatures and certificates OK {len(packets) - bad}, "
                f"in the hub's log {logged}; completeness against checkpoint {c.get('checkpoint', {}).get('size', '?')}: "
                f"{c.get('addressed', '?')} addressed to {n}, {missing} missing" + ("" if not bad else f"  ({bad} FAILED)"))

        say("\n== Summary ==")
        rows = []
        for n in NATIONS:
            s = fed.store_stats(n)
            stored = sum(s["packets"].values())
            received = stored + s["dropped"] + s["quarantined"]
            rows.append((n, received, stored, s.get("receipts_sent", 0), s["quarantined"]))
        from clients.cli.common import table

        say(table(rows, ["nation", "packets received", "stored", "receipts sent", "quarantined"]))
        say(f"\nfinished in {time.monotonic() - started:.0f} s; stores and logs are under {run_dir}/")
        say(f"  explore: INTELHUB_CONFIG={run_dir}/DE/officer.toml intelhub search \"Mohamed Alrachid\"")
        if keep_running:
            say(f"\nThe federation keeps running (hub {fed.url}). Press Ctrl-C to stop it.")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return failures
    finally:
        fed.stop()
