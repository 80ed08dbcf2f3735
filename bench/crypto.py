"""Envelope cost against the cost of the same primitives called directly (the floor).

For a 1 KiB content and 7 recipients, per suite: seal and open per packet, the floor,
their ratio, and the envelope size per recipient. Goal: seal and open <= 1.3 x floor.
Run: .venv/bin/python bench/crypto.py [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from hub.protocol import envelope  # noqa: E402
from hub.protocol.federation import G7, create_federation  # noqa: E402
from hub.protocol.keys import signing_input  # noqa: E402
from hub.protocol.suites import CLASSIC, HYBRID  # noqa: E402

NOW = 1_764_000_000


def median_us(fn: Callable[[], Any], rounds: int) -> float:
    """Median of per-call times over ``rounds`` batches of 5 calls (robust on a noisy machine)."""
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(5):
            fn()
        samples.append((time.perf_counter() - t) / 5)
    return statistics.median(samples) * 1e6


def content_1k() -> dict[str, Any]:
    return {
        "type": "withdraw",
        "ref": "0193a1b2-0000-7000-8000-000000000000",
        "reason": "x" * 960,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    fed = create_federation(G7, now=NOW, seed=b"bench", suites=(HYBRID.id, CLASSIC.id))
    trust = fed.trust()
    sender = fed.members["IT"]
    recips = [m.node_cert for c, m in fed.members.items() if c != "IT"] + [fed.members["IT"].node_cert]
    content = content_1k()
    print(f"intelhub envelope benchmark: 1 KiB content, {len(recips)} recipients, median of {args.rounds}x5 calls")
    print(f"{'suite':<12} {'op':<5} {'envelope µs':>12} {'floor µs':>10} {'ratio':>6}")
    for suite in (HYBRID, CLASSIC):
        raw = envelope.seal(content, signer=sender.officer, signer_cert=sender.officer_cert,
                            recipients=recips, topic="alerts.entity.smuggling", now=NOW, suite=suite)
        fr = fed.members["FR"]
        seal = median_us(lambda: envelope.seal(
            content, signer=sender.officer, signer_cert=sender.officer_cert, recipients=recips,
            topic="alerts.entity.smuggling", now=NOW, suite=suite), args.rounds)
        opn = median_us(lambda: envelope.open_packet(raw, nation="FR", kem=fr.node_kem, trust=trust, now=NOW), args.rounds)
        ver = median_us(lambda: envelope.verify(raw, trust, NOW), args.rounds)

        # The floor: the same primitives, called directly on the same sizes.
        hp = suite.hpke()
        pubs = [c.kem.for_suite(suite) for c in recips]  # type: ignore[union-attr]
        plaintext = os.urandom(len(raw) // 8 if False else 1100)
        header_like = os.urandom(400 + 70 * len(recips))
        msg = signing_input("packet", header_like)
        info = b"i" * 150

        def floor_seal() -> None:
            key = os.urandom(32)
            ct = AESGCM(key).encrypt(bytes(12), plaintext, header_like[:200])
            for pk in pubs:
                hashlib.sha256(hp.encrypt(key, pk, info=info)).digest()
            hashlib.sha256(ct).digest()
            sender.officer.sign(msg, mldsa=suite.mldsa)

        sig = sender.officer.sign(msg, mldsa=suite.mldsa)
        pub = sender.officer_cert.signing
        key = os.urandom(32)
        wrapped = hp.encrypt(key, fr.node_kem.public().for_suite(suite), info=info)
        ct = AESGCM(key).encrypt(bytes(12), plaintext, header_like[:200])
        sk = fr.node_kem.for_suite(suite)

        def floor_verify() -> None:
            pub.verify(msg, sig, mldsa_required=suite.mldsa)

        def floor_open() -> None:
            floor_verify()
            k = hp.decrypt(wrapped, sk, info=info)
            AESGCM(k).decrypt(bytes(12), ct, header_like[:200])

        f_seal = median_us(floor_seal, args.rounds)
        f_open = median_us(floor_open, args.rounds)
        f_ver = median_us(floor_verify, args.rounds)
        for op, got, floor in (("seal", seal, f_seal), ("open", opn, f_open), ("verify", ver, f_ver)):
            print(f"{suite.id:<12} {op:<5} {got:>12.0f} {floor:>10.0f} {got / floor:>6.2f}")
        overhead = len(raw) - len(content_1k()["reason"])
        print(f"{suite.id:<12} size  {len(raw)} bytes total, {len(raw) / len(recips):.0f} bytes per recipient "
              f"({overhead} bytes of envelope over the 1 KiB content)")


if __name__ == "__main__":
    main()
