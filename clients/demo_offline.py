"""The offline part of the demo: the packet format alone, no hub (``python -m clients.demo --offline``).

Italy seals an alert and France a freeze notice to three partners each; every
recipient opens them; a non-recipient and a tampered copy fail; an auditor
verifies every signature from public keys only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hub.keyfiles import load_certificate, load_private_keys, load_trust_dir
from hub.protocol import codec, envelope
from hub.protocol.content import content_summary
from hub.protocol.errors import IntelhubError

from .scenario import french_freeze, italian_alert

EXAMPLE = Path(__file__).resolve().parents[1] / "keys" / "example"


def run_offline(keys_dir: Path = EXAMPLE, say: Callable[[str], None] = print) -> int:
    """Returns the number of failed checks (0 on success)."""
    trust = load_trust_dir(keys_dir)
    now = int(time.time())
    failures = 0

    def check(ok: bool, text: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        say(f"  {'ok ' if ok else 'FAIL'} {text}")

    def officer(code: str) -> tuple[object, object]:
        keys = load_private_keys(keys_dir / code / "officer.key")
        return keys.signing, trust.add_certificate(load_certificate(keys_dir / code / "officer.cert").raw)

    packets = []
    for sender, to, content, topic in (
        ("IT", ("FR", "DE", "GB"), italian_alert(), "alerts.entity.migrant_smuggling"),
        ("FR", ("GB", "US", "DE"), french_freeze(), "notices.freeze"),
    ):
        signing, cert = officer(sender)
        raw = envelope.seal(content, signer=signing, signer_cert=cert,  # type: ignore[arg-type]
                            recipients=[trust.recipient(n, now) for n in to], topic=topic, now=now)
        h = envelope.parse_packet(raw).header
        say(f"\n{sender} seals {h.packet_id}: {content_summary(content)}")
        say(f"  suite {h.suite.id}, {len(raw)} bytes, to {', '.join(h.nations)}, topic {h.topic}")
        packets.append((sender, to, raw))
        for nation in to:
            kem = load_private_keys(keys_dir / nation / "node.key").kem
            o = envelope.open_packet(raw, nation=nation, kem=kem, trust=trust, now=now)  # type: ignore[arg-type]
            check(o.content == envelope.check_disclosure(o.header, o.salt, o.content_bytes),
                  f"{nation} opens it: signed by {o.signer.name}, commitment matches")
        outsider = next(n for n in ("JP", "CA", "US", "IT") if n not in to and n != sender)
        kem = load_private_keys(keys_dir / outsider / "node.key").kem
        try:
            envelope.open_packet(raw, nation=outsider, kem=kem, trust=trust, now=now)  # type: ignore[arg-type]
            check(False, f"{outsider} (not a recipient) must not open it")
        except IntelhubError as exc:
            check(True, f"{outsider}, not a recipient, cannot open it: {exc}")
        p = codec.decode(raw)
        p["ct"] = p["ct"][:-1] + bytes([p["ct"][-1] ^ 0x01])
        try:
            envelope.verify(codec.encode(p), trust, now)
            check(False, "a tampered copy must fail")
        except IntelhubError as exc:
            check(True, f"a copy with one ciphertext bit flipped fails: {exc}")

    say("\nAn auditor verifies every packet with public keys only (roster + certificates):")
    public = load_trust_dir(keys_dir)  # no private key is read for this step
    for sender, _, raw in packets:
        v = envelope.verify(raw, public, now)
        check(v.signer.nation == sender,
              f"{v.header.packet_id}: Ed25519 + ML-DSA-65 signatures valid, signer {v.signer.name}, "
              f"certificate serial {v.signer.serial}")
    return failures
