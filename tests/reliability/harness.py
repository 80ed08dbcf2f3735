"""The whole federation as real processes on 127.0.0.1: the fault tests' and the soak benchmark's harness.

- :func:`plan_stream`, :func:`seal_stream`: a reproducible stream of alerts, freezes, amendments and
  withdrawals on several topics, mostly to 1-3 nations, sealed in worker processes.
- :class:`Cluster`: the hub (``intelhub hub serve``) and seven ``intelhub node run`` processes, killed,
  stalled and restarted (the hub on the same port); a node armed with ``INTELHUB_FAULT`` exits
  abruptly around its N-th store commit (clients/node/service.py). Every fault is counted.
- :class:`Publisher`: one session per sender nation (and ``POST /v1/publish``), retrying each packet
  with the same bytes until the hub accepts it, and checking every answer names the same log index.
- :func:`read_hub`, :func:`read_store`, :func:`converge`, :func:`final_report`, :func:`audit_all`: what
  the log routed to each node (from the hub's database) against what each node's store holds, and
  the auditor's completeness proof (``intelhub audit completeness``) for every node.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from clients.connection import HubClient, http_publish
from clients.scenario import WALLET, french_freeze
from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir, write_federation
from hub.protocol import envelope
from hub.protocol.errors import ProtocolError
from hub.protocol.federation import G7, create_federation
from hub.protocol.suites import CLASSIC, HYBRID, get_suite
from hub.protocol.topics import any_match

from ..hubutil import ROOT, HubProcess, hub_toml
from ..nodeutil import NodeProcess, node_toml

NATIONS: Final = ("CA", "DE", "FR", "GB", "IT", "JP", "US")
CATEGORIES: Final = ("migrant_smuggling", "human_trafficking", "money_laundering", "document_fraud")
#: Packet types a node sends a *delivered* receipt for (clients/node/service.py RECEIPTED).
RECEIPTED: Final = frozenset({"alert", "freeze", "amend", "withdraw"})
#: Publish errors after which the same bytes are sent again (docs/protocol.md §8.6).
RETRY_CODES: Final = frozenset({"timeout", "unavailable", "closed", "unreachable", "rate_limited"})
FAULT_ENV: Final = "INTELHUB_FAULT"


def write_test_federation(out: Path, seed: bytes | None = None) -> Path:
    """A fresh federation allowing both suites, with unencrypted (example) keys, written to ``out``."""
    fed = create_federation(G7, now=int(time.time()), seed=seed, name="intelhub-reliability",
                            suites=(HYBRID.id, CLASSIC.id))
    write_federation(fed, out, None, example=True)
    return out


# -- the nodes --------------------------------------------------------------------------------

SINK_FREEZES: Final = """
[sinks.fiu]
type = "jsonl"
path = "{dir}/fiu.jsonl"

[[filters]]
name = "freezes-to-fiu"
packet_type = "freeze"
notify = "fiu"
"""

DROP_GREEN_LOW: Final = """
[[filters]]
name = "drop-green-low"
tlp = "GREEN"
severity = "low"
action = "drop"
"""


@dataclass(frozen=True)
class NodeSpec:
    nation: str
    subscriptions: tuple[tuple[str, tuple[str, ...]], ...] = (("main", (">",)),)
    window: int = 64
    receipts: bool = False
    #: ``[node] crypto_workers``: some nodes open packets in worker processes, so the faults reach that path too.
    workers: int = 0
    #: Extra TOML (filters, sinks); ``{dir}`` is replaced by the node's directory.
    extra: str = ""

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(p for _, ps in self.subscriptions for p in ps)

    def wants(self, topic: str) -> bool:
        return any_match(self.patterns, topic)

    def config(self, fed_dir: Path, url: str, d: Path) -> str:
        subs = "".join(f'[[subscriptions]]\nname = "{n}"\npatterns = {json.dumps(list(ps))}\n\n'
                       for n, ps in self.subscriptions)
        body = (f"window = {self.window}\ncrypto_workers = {self.workers}\n\n[receipts]\ndelivered = {str(self.receipts).lower()}\n\n"
                + subs + self.extra.replace("{dir}", str(d)))
        return node_toml(self.nation, fed_dir, url, d / "store.db", body)


def federation_specs() -> dict[str, NodeSpec]:
    """Seven nodes: some take every topic, some a subset; one has two overlapping subscriptions
    (the same packet arrives on both), one a window of 2, three send receipts, one drops by filter,
    one hands freezes to a JSONL sink, two open packets in worker processes."""
    specs = (
        NodeSpec("CA", workers=1),
        NodeSpec("DE", (("alerts", ("alerts.>",)), ("rest", ("notices.>", "control.>"))), receipts=True,
                 extra=SINK_FREEZES),
        NodeSpec("FR", receipts=True, extra=DROP_GREEN_LOW),
        NodeSpec("GB", (("main", ("alerts.entity.*", "control.>")),)),
        NodeSpec("IT", receipts=True, workers=2),
        NodeSpec("JP", (("main", ("notices.freeze", "control.withdraw")),), window=2),
        NodeSpec("US", (("smuggling", ("alerts.entity.migrant_smuggling", "alerts.entity.human_trafficking")),
                        ("all", ("alerts.>", "notices.>", "control.amend", "control.withdraw", "control.receipt"))),
                 window=16),
    )
    return {s.nation: s for s in specs}


# -- the stream -------------------------------------------------------------------------------

FIRST: Final = ("Mohammed", "Karim", "Ivan", "Chen", "Amina", "Omar", "Lucia", "Tariq", "Elena", "Yusuf")
LAST: Final = ("Al-Rashid", "Haddad", "Petrov", "Ming", "Okafor", "Benali", "Rossi", "Hakimi", "Novak", "Demir")


@dataclass(frozen=True)
class Planned:
    n: int
    sender: str
    to: tuple[str, ...]
    topic: str
    kind: str  # alert | freeze | amend | withdraw
    record: str  # alert | freeze: the type of the record it creates or changes
    suite: str
    pid: str
    content: dict[str, Any]
    via: str = "ws"  # ws | http


def _alert(i: int, rng: random.Random) -> dict[str, Any]:
    low = rng.random() < 0.08  # GREEN + low: FR's filter drops these
    entities: list[dict[str, Any]] = [{"id": "e1", "schema": "Person", "names": [f"{rng.choice(FIRST)} {rng.choice(LAST)}"],
                                       "nationality": [rng.choice(("LY", "SY", "AF", "NG", "AL", "TR"))]}]
    if rng.random() < 0.3:
        entities.append({"id": "e2", "schema": "CryptoWallet", "names": [f"Wallet {i}"],
                         "identifiers": [{"type": "crypto_wallet", "value": WALLET, "chain": "TRX"}]})
    return {"type": "alert", "title": f"Stream alert {i}", "category": rng.choice(CATEGORIES),
            "severity": "low" if low else rng.choice(("medium", "high", "critical")),
            "summary": f"Alert {i} of the reliability stream.", "entities": entities,
            "handling": {"tlp": "GREEN" if low else rng.choice(("AMBER", "AMBER+STRICT", "RED")), "codes": ["H2"],
                         "source": "B", "information": "2"}}


def _freeze(i: int, sender: str, lifted: bool = False) -> dict[str, Any]:
    f = french_freeze(lifted=("a2",) if lifted else ())
    f["authority"] = {"name": f"Court of {sender}", "country": sender}
    f["reference"] = f"{sender}-FRZ-{i}"
    return f


def _recipients(rng: random.Random, sender: str) -> tuple[str, ...]:
    k = rng.choices((1, 2, 3, 6), weights=(45, 33, 17, 5))[0]
    to = rng.sample([x for x in NATIONS if x != sender], k)
    if rng.random() < 0.03:  # an officer copying their own nation's node
        to.append(sender)
    return tuple(sorted(to))


def plan_stream(n: int, *, seed: int, hybrid_share: float = 0.25, http_share: float = 0.05) -> list[Planned]:
    """``n`` packets: ~55 % alerts on four topics, 15 % freezes, 18 % amendments, 12 % withdrawals.

    Amendments and withdrawals name an earlier original of the same sender and go to its
    recipients, on its topic or on ``control.amend`` / ``control.withdraw``.
    """
    rng = random.Random(seed)
    out: list[Planned] = []
    open_records: dict[str, list[Planned]] = {s: [] for s in NATIONS}
    for i in range(n):
        sender = rng.choice(NATIONS)
        r = rng.random()
        mine = open_records[sender]
        suite = HYBRID.id if rng.random() < hybrid_share else CLASSIC.id
        via = "http" if rng.random() < http_share else "ws"
        pid = str(uuid.UUID(bytes=envelope.new_packet_id(int(time.time() * 1000))))
        if not mine or r < 0.70:
            if r < (0.55 if mine else 0.80):
                content = _alert(i, rng)
                p = Planned(i, sender, _recipients(rng, sender), f"alerts.entity.{content['category']}", "alert",
                            "alert", suite, pid, content, via)
            else:
                p = Planned(i, sender, _recipients(rng, sender), "notices.freeze", "freeze", "freeze", suite, pid,
                            _freeze(i, sender), via)
            mine.append(p)
        elif r < 0.88:
            orig = rng.choice(mine[-50:])
            if orig.record == "alert":
                new = dict(orig.content, severity="critical", summary=orig.content["summary"] + " Amended.")
            else:
                new = _freeze(orig.n, sender, lifted=True)
            topic = orig.topic if rng.random() < 0.8 else "control.amend"
            p = Planned(i, sender, orig.to, topic, "amend", orig.record, suite, pid,
                        {"type": "amend", "ref": orig.pid, "reason": f"Amendment {i}", "content": new}, via)
        else:
            orig = mine.pop(rng.randrange(max(0, len(mine) - 50), len(mine)))
            topic = "control.withdraw" if rng.random() < 0.6 else orig.topic
            p = Planned(i, sender, orig.to, topic, "withdraw", orig.record, suite, pid,
                        {"type": "withdraw", "ref": orig.pid, "reason": f"Withdrawal {i}"}, via)
        out.append(p)
    return out


def _seal_chunk(args: tuple[str, list[Planned], int]) -> list[bytes]:
    fed_dir, items, now = Path(args[0]), args[1], args[2]
    trust = load_trust_dir(fed_dir)
    officers: dict[str, Any] = {}
    out = []
    for p in items:
        if p.sender not in officers:
            officers[p.sender] = (load_private_keys(fed_dir / p.sender / "officer.key").signing,
                                  load_certificate(fed_dir / p.sender / "officer.cert"))
        key, cert = officers[p.sender]
        out.append(envelope.seal(p.content, signer=key, signer_cert=cert, recipients=[trust.recipient(x, now) for x in p.to],
                                 topic=p.topic, now=now, suite=get_suite(p.suite), packet_id=uuid.UUID(p.pid).bytes))
    return out


def seal_stream(fed_dir: Path, plan: list[Planned], workers: int | None = None) -> list[bytes]:
    """Seal the plan in worker processes (spawned: safe from a process that runs threads)."""
    now = int(time.time())
    chunks = [plan[i:i + 100] for i in range(0, len(plan), 100)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count() or 2, mp_context=ctx) as ex:
        return [raw for sealed in ex.map(_seal_chunk, [(str(fed_dir), c, now) for c in chunks]) for raw in sealed]


def addressed(plan: list[Planned], spec: NodeSpec) -> list[Planned]:
    return [p for p in plan if spec.nation in p.to and spec.wants(p.topic)]


# -- the processes ----------------------------------------------------------------------------


class Cluster:
    """The hub and the nodes as processes; every fault goes through here and is counted in ``events``."""

    def __init__(self, fed_dir: Path, work: Path, specs: dict[str, NodeSpec], limits: dict[str, Any]) -> None:
        self.fed_dir, self.work, self.specs, self.limits = fed_dir, work, specs, limits
        (work / "hub").mkdir(parents=True, exist_ok=True)
        self.db = work / "hub" / "hub.db"
        self.hub_cfg = work / "hub" / "hub.toml"
        self.hub = HubProcess(self.hub_cfg, work / "hub" / "hub.log")
        self.url = ""
        self.dirs = {n: work / n for n in specs}
        self.nodes: dict[str, NodeProcess] = {}
        #: INTELHUB_FAULT values for a node's next starts, in order ("" = healthy).
        self.faults: dict[str, list[str]] = {n: [] for n in specs}
        self.armed: dict[str, str] = {}
        self.events: Counter[str] = Counter()
        #: Node exits nobody caused: each one is a bug.
        self.crashes: list[str] = []
        self._down: set[str] = set()
        self._stopped: set[int] = set()

    # hub

    def start_hub(self) -> str:
        """First start on a free port; later starts reuse it, so clients reconnect to the same address."""
        self.hub_cfg.write_text(hub_toml(self.fed_dir, self.db, limits=self.limits))
        self.url = self.hub.start()
        self.hub_cfg.write_text(hub_toml(self.fed_dir, self.db, listen=f"127.0.0.1:{self.hub.port}", limits=self.limits))
        return self.url

    def kill_hub(self) -> None:
        self.hub.kill()
        self.events["hub SIGKILL"] += 1

    def restart_hub(self) -> None:
        self.hub.start(timeout=60)

    @property
    def wal(self) -> Path:
        return self.db.with_name(self.db.name + "-wal")

    def disk_refuses(self, on: bool) -> None:
        """Make the hub's write-ahead log immutable (``chattr +i``), or writable again.

        Every commit then fails with an I/O error, as on a failing disk, while reads go on. Root
        ignores file permissions but not the immutable attribute, and on ext4 a descriptor opened
        before is refused too (not on tmpfs: see :func:`immutable_unsupported`). The -shm file is
        left alone: SQLite maps it, and a fault there is a SIGBUS.
        """
        subprocess.run(["chattr", "+i" if on else "-i", str(self.wal)], check=True, capture_output=True)
        if on:
            self.events["hub disk refuses writes"] += 1

    def stall(self, pid: int, on: bool) -> None:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)
        (self._stopped.add if on else self._stopped.discard)(pid)

    # nodes

    def start_nodes(self) -> None:
        for n, spec in self.specs.items():
            d = self.dirs[n]
            d.mkdir(exist_ok=True)
            (d / "node.toml").write_text(spec.config(self.fed_dir, self.url, d))
            self.nodes[n] = NodeProcess(d / "node.toml", d / "node.log")
            self.start_node(n)

    def start_node(self, n: str) -> None:
        fault = self.faults[n].pop(0) if self.faults[n] else ""
        self.armed[n] = fault
        self.nodes[n].start(env={FAULT_ENV: fault})
        self._down.discard(n)

    def kill_node(self, n: str) -> None:
        """SIGKILL at whatever the node is doing (mid-commit, mid-decrypt, between store and ack)."""
        self.reap()  # a node that just crashed by itself is counted (and restarted) first
        self._down.add(n)
        self.nodes[n].kill()
        self.events["node SIGKILL"] += 1
        if self.armed.get(n):  # its injected crash has not happened yet: arm the next start with it
            self.faults[n].insert(0, self.armed[n])

    def node_pid(self, n: str) -> int:
        proc = self.nodes[n].proc
        assert proc is not None
        return proc.pid

    def reap(self) -> list[str]:
        """Restart nodes that exited: an armed fault (exit 137) counts as injected, anything else as a crash."""
        restarted = []
        for n, p in self.nodes.items():
            if n in self._down or p.proc is None or p.proc.poll() is None:
                continue
            rc, fault = p.proc.returncode, self.armed.get(n, "")
            if rc == 137 and fault:
                self.events[f"node {fault.split(':')[0]}"] += 1
            else:
                self.crashes.append(f"{n} exited with {rc} (armed {fault!r}); see {p.log}")
            self.start_node(n)
            restarted.append(n)
        return restarted

    async def monitor(self) -> None:
        while True:
            self.reap()
            await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return all(p.proc is not None and p.proc.poll() is None for p in self.nodes.values())

    def stop_nodes(self, timeout: float = 30.0) -> None:
        """SIGTERM every node at once, then wait (each finishes its in-flight receipts first)."""
        self._down.update(self.nodes)
        procs = [p.proc for p in self.nodes.values() if p.proc is not None and p.proc.poll() is None]
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                self.crashes.append(f"pid {proc.pid} did not stop within {timeout:g} s of SIGTERM")

    def restart_nodes(self) -> None:
        for n in self.nodes:
            self.start_node(n)

    def close(self) -> None:
        """Leave nothing behind: the disk writable, nothing stopped, every process gone."""
        if self.wal.exists():
            subprocess.run(["chattr", "-i", str(self.wal)], capture_output=True)
        for pid in list(self._stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for p in self.nodes.values():
            p.kill()
        if self.hub.proc is not None and self.hub.proc.poll() is None:
            os.kill(self.hub.proc.pid, signal.SIGCONT)
            self.hub.stop()

    def rss(self) -> dict[str, int]:
        """Resident memory (bytes) of the hub and each node process."""
        out = {}
        procs = {"hub": self.hub.proc, **{n: p.proc for n, p in self.nodes.items()}}
        for name, proc in procs.items():
            if proc is not None and proc.poll() is None:
                out[name] = _rss(proc.pid)
        return out


def immutable_unsupported(directory: Path) -> str | None:
    """Why ``chattr +i`` cannot make a file in ``directory`` refuse writes (not root, a filesystem
    without the attribute), or None when it can: the disk fault needs it."""
    probe = directory / ".immutable-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        try:
            r = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        except FileNotFoundError:
            return "no chattr command"
        if r.returncode != 0:
            return f"chattr +i failed ({r.stderr.strip() or r.returncode})"
        try:
            os.write(fd, b"x")  # through a descriptor opened before, as SQLite holds its WAL
        except PermissionError:
            return None
        return "a file made immutable still accepted a write"
    finally:
        os.close(fd)
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- publishing -------------------------------------------------------------------------------


@dataclass
class PublishStats:
    #: packet id -> the log index the hub answered (every answer for it must agree)
    index: dict[str, int] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    conflicts: list[str] = field(default_factory=list)
    #: (monotonic time of the answer, seconds from the first attempt to ACCEPTED) per packet
    latency: list[tuple[float, float]] = field(default_factory=list)


def client_for(fed_dir: Path, nation: str, url: str, **kw: Any) -> HubClient:
    """A session of ``nation`` authenticated with its node key, as a node or a script would open one."""
    trust = load_trust_dir(fed_dir)
    return HubClient(url, signing=load_private_keys(fed_dir / nation / "node.key").signing,  # type: ignore[arg-type]
                     cert=load_certificate(fed_dir / nation / "node.cert"), roster_fp=trust.roster.fp,
                     hub_name=trust.roster.hub_name, **kw)


def drop_transport(client: HubClient) -> bool:
    """Shut the session's TCP connection under it: no WebSocket close frame, as when a link dies."""
    ws = client._ws  # HubClient has no public handle on its socket: this is fault injection
    sock = ws.get_extra_info("socket") if ws is not None else None
    if sock is None:
        return False
    sock.shutdown(socket.SHUT_RDWR)
    return True


class Publisher:
    """Publishes planned packets through each sender nation's own session (or HTTP) until accepted."""

    def __init__(self, fed_dir: Path, url: str, *, timeout: float = 2.0, quick_timeout: float = 0.003) -> None:
        self.url = url
        self.timeout, self.quick_timeout = timeout, quick_timeout
        self.clients = {n: client_for(fed_dir, n, url, backoff=(0.05, 1.0)) for n in NATIONS}
        self.stats = PublishStats()

    async def start(self) -> None:
        for c in self.clients.values():
            await c.start()
        for c in self.clients.values():
            await c.wait_connected(60)

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    async def attempt(self, p: Planned, raw: bytes, timeout: float) -> tuple[int, bool]:
        """One publish: (log index, duplicate), or ProtocolError."""
        self.stats.answers["attempts"] += 1
        if p.via == "http":
            r = await http_publish(self.url, raw, timeout=timeout)
            return int(r["index"]), bool(r["duplicate"])
        res = await self.clients[p.sender].publish(raw, timeout=timeout)
        return res.index, res.duplicate

    async def publish(self, p: Planned, raw: bytes, deadline: float, *, quick: bool = False) -> int:
        """Send ``raw`` until the hub accepts it; ``quick``: the first attempt times out almost at once,
        so the retry usually finds the packet already accepted (answered ``dup``, same index)."""
        first, t0 = True, time.monotonic()
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"packet {p.n} ({p.pid}) not accepted before the deadline; "
                                     f"answers so far {dict(self.stats.answers)}")
            timeout = self.quick_timeout if quick and first else self.timeout
            first = False
            try:
                index, dup = await self.attempt(p, raw, timeout)
            except ProtocolError as exc:
                if exc.code not in RETRY_CODES:
                    raise
                self.stats.answers[exc.code] += 1
                await asyncio.sleep(random.uniform(0.05, 0.25))
                continue
            self.record(p.pid, index, dup)
            self.stats.latency.append((time.monotonic(), time.monotonic() - t0))
            return index

    def record(self, pid: str, index: int, dup: bool) -> None:
        self.stats.answers["accepted (duplicate)" if dup else "accepted (new)"] += 1
        held = self.stats.index.setdefault(pid, index)
        if held != index:
            self.stats.conflicts.append(f"{pid}: answered index {held}, then {index}")


# -- what the hub routed and what the nodes hold ------------------------------------------------


@dataclass(frozen=True)
class Route:
    index: int
    pid: str
    topic: str
    nations: frozenset[str]


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def read_hub(db: Path) -> list[Route]:
    """Every packet in the hub's log with its recipients, in log order."""
    con = _ro(db)
    try:
        rows = con.execute("SELECT p.log_index, p.packet_id, p.topic, group_concat(r.nation) FROM packets p "
                           "JOIN packet_recipients r USING (log_index) GROUP BY p.log_index ORDER BY p.log_index").fetchall()
    finally:
        con.close()
    return [Route(i, str(uuid.UUID(bytes=pid)), topic, frozenset(ns.split(","))) for i, pid, topic, ns in rows]


def expected_for(routes: list[Route], spec: NodeSpec) -> set[str]:
    """What the node must hold: every logged packet addressed to its nation on a topic it subscribes to."""
    return {r.pid for r in routes if spec.nation in r.nations and spec.wants(r.topic)}


@dataclass
class StoreView:
    packets: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    types: dict[str, str] = field(default_factory=dict)
    senders: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    #: (ref, receipt sender, status) -> receipts held
    receipts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    outbox: int = 0
    #: packet ids whose delivered receipt is owed: queued in the outbox, not yet accepted by the hub
    owed: set[str] = field(default_factory=set)

    @property
    def ids(self) -> set[str]:
        return set(self.packets)


def read_store(path: Path, full: bool = False) -> StoreView:
    v = StoreView()
    if not path.exists():
        return v
    con = _ro(path)
    try:
        try:
            if full:
                for pid, kind, sender, action in con.execute("SELECT packet_id, type, sender, action FROM packets"):
                    v.packets[pid] += 1
                    v.types[pid], v.senders[pid] = kind, sender
                    if action == "drop":
                        v.dropped.add(pid)
                for ref, nation, status in con.execute("SELECT ref, nation, status FROM receipts"):
                    v.receipts[(ref, nation, status)] += 1
                v.outbox = con.execute("SELECT COUNT(*) FROM outbox WHERE sink = 'fiu'").fetchone()[0]
                v.owed = {r[0] for r in con.execute(
                    "SELECT packet_id FROM outbox WHERE sink = 'intelhub.receipt.delivered'")}
            else:
                v.packets.update(r[0] for r in con.execute("SELECT packet_id FROM packets"))
            v.quarantined = con.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # a store still being created
                raise
    finally:
        con.close()
    return v


async def converge(cluster: Cluster, timeout: float, *, stable: float = 3.0,
                   also: Callable[[list[Route]], bool] | None = None) -> list[Route]:
    """Wait until every node's store holds all the log routed to it and the log stopped growing."""
    deadline = time.monotonic() + timeout
    size, since = -1, time.monotonic()
    behind: dict[str, int] = {}
    while True:
        routes = await asyncio.to_thread(read_hub, cluster.db)
        if len(routes) != size:
            size, since = len(routes), time.monotonic()
        views = await asyncio.to_thread(lambda: {n: read_store(cluster.dirs[n] / "store.db") for n in cluster.specs})
        behind = {n: len(expected_for(routes, s) - views[n].ids) for n, s in cluster.specs.items()}
        if (not any(behind.values()) and cluster.alive() and time.monotonic() - since >= stable
                and (also is None or also(routes))):
            return routes
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged after {timeout:g} s: packets still missing per node {behind}; "
                                 f"node crashes {cluster.crashes}")
        await asyncio.sleep(0.5)


@dataclass
class NodeReport:
    nation: str
    expected: int
    stored: int
    missing: int
    unexpected: int
    duplicates: int
    quarantined: int


@dataclass
class FinalReport:
    log_size: int
    nodes: list[NodeReport]
    receipts: dict[str, int]
    sink: dict[str, int]
    problems: list[str]


def final_report(cluster: Cluster, plan: list[Planned] | None = None) -> FinalReport:
    """With the nodes stopped: each store against the log, receipts, and the JSONL sink."""
    routes = read_hub(cluster.db)
    problems: list[str] = []
    if [r.index for r in routes] != list(range(len(routes))):
        problems.append("the hub's log indexes are not gap-free")
    views = {n: read_store(cluster.dirs[n] / "store.db", full=True) for n in cluster.specs}
    nodes = []
    for n, spec in cluster.specs.items():
        want, v = expected_for(routes, spec), views[n]
        dups = sum(c - 1 for c in v.packets.values() if c > 1)
        rep = NodeReport(n, len(want), len(v.packets), len(want - v.ids), len(v.ids - want), dups, v.quarantined)
        nodes.append(rep)
        if rep.missing or rep.unexpected or rep.duplicates or rep.quarantined:
            problems.append(f"{n}: {rep}")
    # Receipts: every alert/freeze/amend/withdraw of another nation that a node sending receipts
    # stored (a packet its filters dropped gets none), should reach the originator's store once,
    # if the originator subscribes to control.receipt.
    rc: Counter[str] = Counter()
    for n, spec in cluster.specs.items():
        if not spec.receipts:
            continue
        for pid, kind in views[n].types.items():
            origin = views[n].senders[pid]
            if (kind not in RECEIPTED or origin == n or pid in views[n].dropped
                    or not cluster.specs[origin].wants("control.receipt")):
                continue
            rc["expected"] += 1
            held = views[origin].receipts.get((pid, n, "delivered"), 0)
            rc["held"] += min(held, 1)
            # Not yet held but durably owed (in the sender's outbox, sent on its next start) is not lost.
            rc["owed"] += held == 0 and pid in views[n].owed
            rc["missing"] += held == 0 and pid not in views[n].owed
            rc["duplicates"] += max(0, held - 1)
    if rc["duplicates"]:
        problems.append(f"{rc['duplicates']} receipts held twice")
    if rc["missing"]:
        problems.append(f"{rc['missing']} delivered receipts neither held by the originator nor owed")
    sink: dict[str, int] = {}
    for n, spec in cluster.specs.items():
        path = cluster.dirs[n] / "fiu.jsonl"
        if "[sinks.fiu]" not in spec.extra:
            continue
        lines = [json.loads(x)["packet_id"] for x in path.read_text().splitlines()] if path.exists() else []
        sink = {"lines": len(lines), "duplicates": len(lines) - len(set(lines)), "outbox": views[n].outbox}
        if plan is not None:
            freezes = {p.pid for p in plan if p.record == "freeze" and p.kind in ("freeze", "amend")}
            want = freezes & views[n].ids
            sink["expected"], sink["missing"] = len(want), len(want - set(lines))
            if sink["missing"]:
                problems.append(f"{n}: {sink['missing']} freezes never reached the sink")
        if sink["duplicates"] or sink["outbox"]:
            problems.append(f"{n}: sink {sink}")
    return FinalReport(len(routes), nodes, dict(rc), sink, problems)


# -- the auditor and the hub's counters ---------------------------------------------------------


async def wait_checkpoint(url: str, timeout: float = 30.0) -> int:
    """Wait until the hub's latest signed checkpoint covers its whole log; returns the size."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(url + "/healthz") as r:
                size = (await r.json())["log_size"]
            async with s.get(url + "/v1/log/checkpoint") as r:
                covered = int((await r.text()).splitlines()[1])
            if covered == size:
                return size
            if time.monotonic() > deadline:
                raise AssertionError(f"checkpoint covers {covered} of {size} leaves after {timeout:g} s")
            await asyncio.sleep(0.3)


async def audit_all(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """``intelhub audit completeness --node-config NODE --json --grace 0`` for every node, in parallel."""

    async def one(n: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients", "audit", "completeness", "--node-config", str(cluster.dirs[n] / "node.toml"),
            "--json", "--grace", "0", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        if proc.returncode not in (0, 1):
            raise AssertionError(f"audit of {n} failed ({proc.returncode}): {err.decode()[-2000:]}")
        return json.loads(out)

    results = await asyncio.gather(*(one(n) for n in cluster.specs))
    return dict(zip(cluster.specs, results))


class HubCounters:
    """Counters from the hub's /metrics, summed over its restarts (a SIGKILL loses at most the last scrape)."""

    NAMES: Final = {"intelhub_deliveries_total": "deliveries", "intelhub_redeliveries_total": "redeliveries after ack timeout",
                    'intelhub_packets_rejected_total{reason="unavailable"}': "rejected unavailable"}

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.done: Counter[str] = Counter()
        self.current: Counter[str] = Counter()
        self.pid = 0

    async def run(self, every: float = 0.5) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while True:
                proc = self.cluster.hub.proc
                try:
                    async with s.get(self.cluster.url + "/metrics") as r:
                        text = await r.text()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    text = ""
                if text and proc is not None:
                    if proc.pid != self.pid:
                        self.done.update(self.current)
                        self.current, self.pid = Counter(), proc.pid
                    for line in text.splitlines():
                        name, _, value = line.rpartition(" ")
                        if name in self.NAMES:
                            self.current[self.NAMES[name]] = int(float(value))
                await asyncio.sleep(every)

    def totals(self) -> Counter[str]:
        return self.done + self.current
