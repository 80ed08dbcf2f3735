"""`intelhub keys` and `intelhub packet`: real files, real keys, click's runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clients.cli.main import cli
from clients.scenario import italian_alert

EXAMPLE = Path(__file__).resolve().parents[1] / "keys" / "example"


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture()
def alert_file(tmp_path: Path) -> Path:
    p = tmp_path / "alert.json"
    p.write_text(json.dumps(italian_alert(), ensure_ascii=False))
    return p


def test_federation_create_encrypted_and_show(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    code, stdout, _ = run("keys", "federation", "create", "--out", str(out), "--nations", "FR,DE",
                          env={"INTELHUB_PASSPHRASE": "correct horse"})
    assert code == 0 and "2 nations" in stdout
    text = (out / "FR" / "officer.key").read_text()
    assert "ENCRYPTED PRIVATE KEY" in text and "EXAMPLE ONLY" not in text
    assert (out / "FR" / "officer.key").stat().st_mode & 0o077 == 0
    code, stdout, _ = run("keys", "show", str(out / "FR" / "officer.key"), "--json",
                          env={"INTELHUB_PASSPHRASE": "correct horse"})
    assert code == 0 and json.loads(stdout)[0]["signing_key_id"]
    code, _, err = run("keys", "show", str(out / "FR" / "officer.key"), env={"INTELHUB_PASSPHRASE": "wrong"})
    assert code == 2 and "wrong passphrase" in err
    code, _, err = run("keys", "federation", "create", "--out", str(out), "--example")
    assert code == 2 and "already holds a federation" in err
    code, _, err = run("keys", "federation", "create", "--out", str(tmp_path / "x"), "--nations", "FR,XX", "--example")
    assert code == 2 and "XX" in err and "alpha-2" in err


def test_unencrypted_key_not_marked_example_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "officer.key"
    key.write_text("\n".join(l for l in (EXAMPLE / "FR" / "officer.key").read_text().splitlines()
                             if not l.startswith("#")) + "\n")
    code, _, err = run("keys", "show", str(key))
    assert code == 2 and "not encrypted" in err


def test_seal_verify_open_round_trip(tmp_path: Path, alert_file: Path) -> None:
    pkt = tmp_path / "alert.ihp"
    code, stdout, err = run("packet", "seal", "--file", str(alert_file), "--key", str(EXAMPLE / "IT" / "officer.key"),
                            "--cert", str(EXAMPLE / "IT" / "officer.cert"), "--trust", str(EXAMPLE),
                            "--to", "FR,DE", "-o", str(pkt), "--json")
    assert code == 0, err
    header = json.loads(stdout)["header"]
    assert [r["nation"] for r in header["to"]] == ["DE", "FR"] and header["topic"] == "alerts.entity.migrant_smuggling"
    code, stdout, _ = run("packet", "verify", str(pkt), "--trust", str(EXAMPLE), "--json")
    assert code == 0 and json.loads(stdout)[0]["signer"] == "IT/it-officer"
    code, stdout, _ = run("packet", "open", str(pkt), "--key", str(EXAMPLE / "FR" / "node.key"), "--nation", "FR",
                          "--trust", str(EXAMPLE), "--json")
    assert code == 0 and json.loads(stdout)["content"]["entities"][0]["names"] == ["Mohammed Al-Rashid"]
    code, _, err = run("packet", "open", str(pkt), "--key", str(EXAMPLE / "JP" / "node.key"), "--nation", "JP",
                       "--trust", str(EXAMPLE))
    assert code == 3 and "packet failed verification" in err
    data = bytearray(pkt.read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.ihp"
    bad.write_bytes(bytes(data))
    code, stdout, _ = run("packet", "verify", str(bad), "--trust", str(EXAMPLE))
    assert code == 3 and "FAIL" in stdout


def test_seal_input_errors_name_the_field_and_write_nothing(tmp_path: Path, alert_file: Path) -> None:
    base = ["packet", "seal", "--key", str(EXAMPLE / "IT" / "officer.key"), "--cert", str(EXAMPLE / "IT" / "officer.cert"),
            "--trust", str(EXAMPLE), "-o", str(tmp_path / "out.ihp")]
    bad = dict(italian_alert())
    bad["entities"] = [dict(bad["entities"][0], nationality=["XX"])]
    bad["links"] = []
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    code, _, err = run(*base, "--file", str(f), "--to", "FR")
    assert code == 2 and "entities[0].nationality[0]" in err
    code, _, err = run(*base, "--file", str(alert_file), "--to", "FR,ZZ")
    assert code == 2 and "ZZ" in err and "--to" in err
    code, _, err = run(*[a if a != str(EXAMPLE / "IT" / "officer.key") else str(EXAMPLE / "FR" / "officer.key") for a in base],
                       "--file", str(alert_file), "--to", "FR")
    assert code == 2 and "does not hold the signing key" in err
    assert not (tmp_path / "out.ihp").exists()


def test_issue_and_revoke_then_packets_fail(tmp_path: Path, alert_file: Path) -> None:
    fed = tmp_path / "fed"
    shutil.copytree(EXAMPLE, fed)
    env = {"INTELHUB_PASSPHRASE": "s3cret passphrase"}
    code, stdout, err = run("keys", "issue", "--root", str(fed / "FR" / "root.key"), "--trust", str(fed), "--nation", "FR",
                            "--role", "officer", "--subject", "fr-officer-dupont", "--out", str(fed / "FR" / "dupont"),
                            "--json", env=env)
    assert code == 0, err
    info = json.loads(stdout)
    assert info["nation"] == "FR" and info["role"] == "officer" and info["serial"] == 3
    pkt = tmp_path / "p.ihp"
    code, _, err = run("packet", "seal", "--file", str(alert_file), "--key", str(fed / "FR" / "dupont.key"),
                       "--cert", str(fed / "FR" / "dupont.cert"), "--trust", str(fed), "--to", "DE", "-o", str(pkt), env=env)
    assert code == 0, err
    assert run("packet", "verify", str(pkt), "--trust", str(fed))[0] == 0
    # Wrong root for the nation.
    code, _, err = run("keys", "revoke", "--root", str(fed / "DE" / "root.key"), "--trust", str(fed),
                       "--cert", str(fed / "FR" / "dupont.cert"))
    assert code == 2 and "not the root key of FR" in err
    code, stdout, _ = run("keys", "revoke", "--root", str(fed / "FR" / "root.key"), "--trust", str(fed),
                          "--cert", str(fed / "FR" / "dupont.cert"), "--at", "1")
    assert code == 0 and "revoked" in stdout
    code, stdout, _ = run("packet", "verify", str(pkt), "--trust", str(fed))
    assert code == 3 and "revoked" in stdout


def test_a_packet_dated_beyond_every_verifiers_future_bound_fails_verification(tmp_path: Path) -> None:
    """Exit 3, as any packet that fails verification (its code is clock_skew, not untrusted_signer)."""
    import time

    from hub.keyfiles import load_certificate, load_private_keys
    from hub.protocol import envelope

    key = load_private_keys(EXAMPLE / "IT" / "officer.key").signing
    assert key is not None
    raw = envelope.seal(italian_alert(), signer=key, signer_cert=load_certificate(EXAMPLE / "IT" / "officer.cert"),
                        recipients=[load_certificate(EXAMPLE / "FR" / "node.cert")],
                        topic="alerts.entity.migrant_smuggling", now=int(time.time()) + 1000)
    pkt = tmp_path / "future.ihp"
    pkt.write_bytes(raw)
    code, _, err = run("packet", "open", str(pkt), "--key", str(EXAMPLE / "FR" / "node.key"), "--nation", "FR",
                       "--trust", str(EXAMPLE))
    assert code == 3 and "in the future" in err, err
    code, stdout, _ = run("packet", "verify", str(pkt), "--trust", str(EXAMPLE))
    assert code == 3 and "FAIL" in stdout
