"""Node ingest: verify + decrypt + filter + store + ack, packets/s, against the receive floor.

A recorded stream of hybrid packets (alerts and freeze notices from six nations to FR)
is fed to the real NodeService.handle() — the code path of `intelhub node run` minus
the socket — with a real SQLite store. The floor is the same cryptography called
directly in the same run: the SHA-256 digests the header holds, both signature halves,
the HPKE unwrap, the AES-GCM decryption and the commitment's SHA-256. Goal: >= 1,500
packets/s and <= 1.5 x floor.

    .venv/bin/python bench/ingest.py [--packets 2000] [--workers N] [--rounds 3]

Two settings, crypto_workers = 0 (threads in the node process) and = N (processes; default
the number of cores), each run --rounds times; each run is compared with the floor measured
just before and just after it, as this machine's speed drifts by tens of percent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from clients.connection import Delivery  # noqa: E402
from clients.node.config import parse_node_config  # noqa: E402
from clients.node.service import NodeService  # noqa: E402
from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir  # noqa: E402
from hub.protocol import envelope  # noqa: E402
from hub.protocol.keys import signing_input  # noqa: E402

KEYS = ROOT / "keys" / "example"
SENDERS = ("CA", "DE", "GB", "IT", "JP", "US")


def _seal(args: tuple[int, int, int]) -> list[bytes]:
    from clients.scenario import french_freeze, italian_alert

    start, count, now = args
    trust = load_trust_dir(KEYS)
    fr = trust.recipient("FR", now)
    out = []
    for i in range(start, start + count):
        sender = SENDERS[i % len(SENDERS)]
        key = load_private_keys(KEYS / sender / "officer.key").signing
        cert = load_certificate(KEYS / sender / "officer.cert")
        if i % 5 == 4:
            content, topic = french_freeze(), "notices.freeze"
            content["reference"] = f"REF-{i}"
            content["authority"]["country"] = sender
        else:
            content, topic = italian_alert(), "alerts.entity.migrant_smuggling"
            content["entities"][0]["names"] = [f"Person {i} Al-Rashid"]
        out.append(envelope.seal(content, signer=key, signer_cert=cert, recipients=[fr], topic=topic, now=now))  # type: ignore[arg-type]
    return out


def stream(n: int) -> list[bytes]:
    now = int(time.time())
    chunk = 200
    with ProcessPoolExecutor(os.cpu_count() or 2) as ex:
        return [p for b in ex.map(_seal, [(i, min(chunk, n - i), now) for i in range(0, n, chunk)]) for p in b]


def floor_per_packet(packets: list[bytes]) -> float:
    """The receive floor: the primitives only, on the same packets (median per packet)."""
    trust = load_trust_dir(KEYS)
    kem = load_private_keys(KEYS / "FR" / "node.key").kem
    samples = []
    for raw in packets[:400]:
        p = envelope.parse_packet(raw)
        h = p.header
        cert = trust.certs[h.sender_cert]
        sk = kem.for_suite(h.suite)  # type: ignore[union-attr]
        sender = {"nation": h.sender, "cert": h.sender_cert}
        info = envelope._info(h.suite.id, h.id, sender, "FR", h.to[0].key)
        aad = envelope._aad({"v": 1, "suite": h.suite.id, "id": h.id, "sender": sender, "to": [{"nation": "FR"}],
                             "topic": h.topic, "created": h.created, "expires": h.expires})
        msg = signing_input("packet", h.raw)
        t = time.perf_counter()
        hashlib.sha256(p.ct).digest()  # the header's digests of the ciphertext and the wrapped key
        hashlib.sha256(p.keys[0]).digest()
        cert.signing.verify(msg, p.sig)
        key = h.suite.hpke().decrypt(p.keys[0], sk, info=info)
        pt = AESGCM(key).decrypt(bytes(12), p.ct, aad)
        hashlib.sha256(pt).digest()  # the commitment
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


async def ingest(packets: list[bytes], tmp: Path, workers: int) -> tuple[float, dict[str, int]]:
    cfg = tmp / "node.toml"
    cfg.write_text(f'[node]\nnation = "FR"\nhub = "http://127.0.0.1:9"\nkey = "{KEYS}/FR/node.key"\n'
                   f'crypto_workers = {workers}\n'
                   f'cert = "{KEYS}/FR/node.cert"\ntrust = "{KEYS}"\nstore = "{tmp}/store.db"\n'
                   '[receipts]\ndelivered = false\n'
                   '[[filters]]\nname = "drop-low"\nseverity = "low"\naction = "drop"\n')
    svc = NodeService(parse_node_config(cfg.read_text(), cfg))
    deliveries = [Delivery("main", i, raw, None, None) for i, raw in enumerate(packets)]

    async def source() -> AsyncIterator[Delivery]:
        for d in deliveries:
            yield d

    await svc.crypto.warm()
    t = time.perf_counter()
    # The service's own pipeline: concurrent verify/decrypt, group commits, an ack per packet
    # (queued on the client; there is no hub here).
    await svc.pipeline(asyncio.Event(), source())
    elapsed = time.perf_counter() - t
    svc.st.close()
    svc.watcher.close()
    svc.crypto.shutdown()
    svc.sealer.shutdown()
    return elapsed, dict(svc.counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="crypto_workers for the second run")
    ap.add_argument("--rounds", type=int, default=3, help="ingest runs per setting, each between two floor measurements")
    args = ap.parse_args()
    if args.packets < 1 or args.rounds < 1 or args.workers < 1:
        ap.error("--packets, --workers and --rounds must be at least 1")
    packets = stream(args.packets)
    size = statistics.mean(len(p) for p in packets)
    print(f"node ingest: {len(packets)} hybrid packets ({size:.0f} bytes; alerts and freezes from 6 nations) into one store, "
          f"{os.cpu_count()} cores; {args.rounds} rounds per setting, each against the floor measured just "
          "before and after it (this machine's speed drifts); medians")
    floors = [floor_per_packet(packets)]
    for workers in (0, args.workers):
        rates, ratios = [], []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="intelhub-ingest-") as d:
                elapsed, counts = asyncio.run(ingest(packets, Path(d), workers))
            floors.append(floor_per_packet(packets))
            per = elapsed / len(packets)
            rates.append(len(packets) / elapsed)
            ratios.append(per / statistics.mean(floors[-2:]))
        how = f"crypto_workers = {workers}" + (" (threads)" if not workers else " (processes)")
        print(f"  {how:<27} {statistics.median(rates):7.0f} packets/s ({min(rates):.0f}-{max(rates):.0f})   "
              f"ratio to the floor {statistics.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})   "
              f"(goals >= 1500/s, <= 1.5);  outcomes {dict(counts)}")
    floor = statistics.median(floors)
    print(f"  receive floor (the same crypto, direct, one core) {1 / floor:7.0f} packets/s   {floor * 1e6:6.0f} µs/packet "
          f"(median of {len(floors)}; {min(floors) * 1e6:.0f}-{max(floors) * 1e6:.0f})")


if __name__ == "__main__":
    main()
