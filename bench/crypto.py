"""Envelope cost against the cost of the same primitives called directly (the floor).

For a 1 KiB content and 7 recipients, per suite: seal and open per packet, the floor,
their ratio, and the envelope size per recipient. Goal: seal and open <= 1.3 x floor.
The floor is every primitive the envelope calls: for seal, AES-GCM, one HPKE wrap and one
SHA-256 per recipient, the ciphertext's SHA-256 and the signature; for verify, the SHA-256
digests the header holds and both signature checks; for open, that plus one HPKE unwrap,
AES-GCM and the commitment's SHA-256. Then, alone in a hot loop, the receiver's two main
Python steps: the strict packet parse and content validation.
Run: .venv/bin/python bench/crypto.py [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from hub.protocol import envelope  # noqa: E402
from hub.protocol.federation import G7, create_federation  # noqa: E402
from hub.protocol.keys import signing_input  # noqa: E402
from hub.protocol.suites import CLASSIC, HYBRID  # noqa: E402

NOW = 1_764_000_000


def paired_us(fn: Callable[[], Any], floor: Callable[[], Any], rounds: int) -> tuple[float, float, float]:
    """Median µs per call of ``fn`` and of ``floor``, and the median of their per-round ratio.

    The two alternate, 5 calls each per round: this machine's speed drifts by tens of percent
    over seconds (shared cores), which would skew a ratio of two separate medians."""
    ours, base, ratios = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(5):
            fn()
        a = (time.perf_counter() - t) / 5
        t = time.perf_counter()
        for _ in range(5):
            floor()
        b = (time.perf_counter() - t) / 5
        ours.append(a)
        base.append(b)
        ratios.append(a / b)
    return statistics.median(ours) * 1e6, statistics.median(base) * 1e6, statistics.median(ratios)


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
    print(f"intelhub envelope benchmark: 1 KiB content, {len(recips)} recipients, {args.rounds} rounds of 5 calls, "
          "each against its floor in turn (ratio: median of the per-round ratios)")
    print(f"{'suite':<12} {'op':<5} {'envelope µs':>12} {'floor µs':>10} {'ratio':>6}")
    for suite in (HYBRID, CLASSIC):
        raw = envelope.seal(content, signer=sender.officer, signer_cert=sender.officer_cert,
                            recipients=recips, topic="alerts.entity.smuggling", now=NOW, suite=suite)
        fr = fed.members["FR"]
        def seal() -> None:
            envelope.seal(content, signer=sender.officer, signer_cert=sender.officer_cert, recipients=recips,
                          topic="alerts.entity.smuggling", now=NOW, suite=suite)

        def opn() -> None:
            envelope.open_packet(raw, nation="FR", kem=fr.node_kem, trust=trust, now=NOW)

        def ver() -> None:
            envelope.verify(raw, trust, NOW)

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

        wraps = [wrapped] * len(recips)

        def floor_verify() -> None:
            # The header's digests of the ciphertext and of every wrapped key, then both signatures.
            hashlib.sha256(ct).digest()
            for w in wraps:
                hashlib.sha256(w).digest()
            pub.verify(msg, sig, mldsa_required=suite.mldsa)

        def floor_open() -> None:
            floor_verify()
            k = hp.decrypt(wrapped, sk, info=info)
            pt = AESGCM(k).decrypt(bytes(12), ct, header_like[:200])
            hashlib.sha256(pt).digest()  # the commitment to the content

        for op, ours, floor in (("seal", seal, floor_seal), ("open", opn, floor_open), ("verify", ver, floor_verify)):
            got, base, ratio = paired_us(ours, floor, args.rounds)
            print(f"{suite.id:<12} {op:<5} {got:>12.0f} {base:>10.0f} {ratio:>6.2f}")
        overhead = len(raw) - len(content_1k()["reason"])
        print(f"{suite.id:<12} size  {len(raw)} bytes total, {len(raw) / len(recips):.0f} bytes per recipient "
              f"({overhead} bytes of envelope over the 1 KiB content)")
    # The Python steps every receiver runs besides the primitives, alone in a hot loop (best of 5).
    from clients.scenario import french_freeze, italian_alert
    from hub.protocol.content import validate_content

    raw = envelope.seal(content, signer=sender.officer, signer_cert=sender.officer_cert, recipients=recips,
                        topic="alerts.entity.smuggling", now=NOW, suite=HYBRID)
    alert, freeze = validate_content(italian_alert()), validate_content(french_freeze())
    steps = (("parse_packet, hybrid, 7 recipients", lambda: envelope.parse_packet(raw)),
             ("validate_content, sample alert", lambda: validate_content(alert)),
             ("validate_content, sample freeze notice", lambda: validate_content(freeze)))
    for label, step in steps:
        best = min(timeit.repeat(step, number=200, repeat=5)) / 200
        print(f"{label:<40} {best * 1e6:7.1f} µs")


if __name__ == "__main__":
    main()
