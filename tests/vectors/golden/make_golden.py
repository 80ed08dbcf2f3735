"""Regenerate the golden packets (run only when the format deliberately changes to a new version).

    .venv/bin/python tests/vectors/golden/make_golden.py

Keys are deterministic from SEED (test-only), the clock is fixed at NOW. The
packets themselves contain fresh randomness (content key, salt, HPKE, ML-DSA), so
regenerating gives different bytes: the point of the files is that packets made
by an earlier version keep decoding, verifying and opening.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))

from hub.protocol import envelope  # noqa: E402
from hub.protocol.armor import armor  # noqa: E402
from hub.protocol.content import validate_content  # noqa: E402
from hub.protocol.federation import G7, create_federation  # noqa: E402
from hub.protocol.suites import CLASSIC, HYBRID  # noqa: E402

SEED = b"intelhub-golden-v1"
NOW = 1_764_000_000
RECIPIENTS = ("DE", "FR", "GB")


def examples() -> dict[str, dict]:
    text = (HERE.parents[2] / "docs" / "content.md").read_text()
    out: dict[str, dict] = {}
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        c = validate_content(json.loads(block))
        out.setdefault(c["type"], c)
    return out


def main() -> None:
    fed = create_federation(G7, now=NOW, seed=SEED, name="intelhub-golden", suites=(HYBRID.id, CLASSIC.id))
    (HERE / "roster.txt").write_text(armor("ROSTER", fed.roster.raw, ("golden test vectors: public roster",)))
    for code in ("IT", *RECIPIENTS):
        m = fed.members[code]
        (HERE / f"{code}-node.cert").write_text(armor("CERTIFICATE", m.node_cert.raw))
        (HERE / f"{code}-officer.cert").write_text(armor("CERTIFICATE", m.officer_cert.raw))
    it = fed.members["IT"]
    expected = {}
    for kind, content in examples().items():
        for suite in (HYBRID, CLASSIC):
            raw = envelope.seal(content, signer=it.officer, signer_cert=it.officer_cert,
                                recipients=[fed.members[c].node_cert for c in RECIPIENTS],
                                topic="alerts.golden", now=NOW, suite=suite)
            name = f"{kind}-{suite.id.lower()}.ihp"
            (HERE / name).write_bytes(raw)
            expected[name] = {"header": envelope.parse_packet(raw).header.to_json(), "content": content}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(expected)} golden packets to {HERE}")


if __name__ == "__main__":
    main()
