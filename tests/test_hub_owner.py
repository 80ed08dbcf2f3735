"""A hub database belongs to one hub of one federation: another hub's database is refused, a rotated
hub key is taken over only through ``intelhub hub rotate-key``, and a rolled-back roster is refused."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from hub.keyfiles import save_private_keys, write_federation
from hub.protocol.armor import armor
from hub.protocol.errors import ConfigError
from hub.protocol.federation import G7, Federation, create_federation
from hub.protocol.keys import PrivateKeys, SigningKey
from hub.protocol.roster import Roster, roster_tbs, sign_roster
from hub.server.app import RELAY
from hub.server.log import checkpoint_opener
from hub.server.owner import OWNER_KEY, OWNER_KIND, LogOwner, check_owner

from .conftest import NOW
from .hubutil import HubProcess, assert_refused, hub_cli, hub_config, hub_toml, node_client, running_hub, seal_for

A = LogOwner("intelhub-test", "hub", b"\x01" * 32, 3)


@pytest.mark.parametrize("stored, current, rotate, outcome", [
    (None, A, False, A),  # a new database takes this hub
    (A, A, False, None),  # nothing to write
    (A, LogOwner(A.federation, A.hub, A.key_id, 4), False, LogOwner(A.federation, A.hub, A.key_id, 4)),
    (A, LogOwner("other-fed", A.hub, A.key_id, 3), False, "holds the log of hub 'hub' of federation 'intelhub-test'"),
    (A, LogOwner(A.federation, "hub2", A.key_id, 3), False, "holds the log of"),
    (A, LogOwner(A.federation, A.hub, A.key_id, 2), False, "older than serial 3"),
    (A, LogOwner(A.federation, A.hub, b"\x02" * 32, 3), False, "must come in a newer roster"),
    (A, LogOwner(A.federation, A.hub, b"\x02" * 32, 4), False, "intelhub hub rotate-key"),
    (A, LogOwner(A.federation, A.hub, b"\x02" * 32, 4), True, LogOwner(A.federation, A.hub, b"\x02" * 32, 4)),
    (A, LogOwner(A.federation, A.hub, b"\x02" * 32, 2), True, "older than serial 3"),
    (A, A, True, "nothing to rotate"),
])
def test_owner_rules(stored: LogOwner | None, current: LogOwner, rotate: bool, outcome: object) -> None:
    if isinstance(outcome, str):
        with pytest.raises(ConfigError, match=outcome.replace("(", r"\(")):
            check_owner(stored, current, rotate=rotate)
    else:
        assert check_owner(stored, current, rotate=rotate) == outcome


def test_owner_record_round_trips_and_a_damaged_one_is_named() -> None:
    assert LogOwner.decode(A.encode()) == A
    for bad in (b"\xc1", b"\x80"):
        with pytest.raises(ConfigError, match="owner record"):
            LogOwner.decode(bad)


async def _publish_one(fed: Federation, url: str) -> int:
    c = node_client(fed, "IT", url)
    await c.start()
    try:
        await c.wait_connected(10)
        return (await c.publish(seal_for(fed, "IT", ["FR"]), timeout=10)).index
    finally:
        await c.close()


def _other_federation(tmp_path: Path) -> Path:
    other = create_federation(G7, now=NOW, seed=b"another-federation", name="other-federation")
    d = tmp_path / "other-fed"
    write_federation(other, d, None, example=True)
    return d


def _files(db: Path) -> tuple[bytes, bytes]:
    """What the database holds: the file and its write-ahead log (a reader may leave an empty one,
    and the shared-memory index, which hold nothing)."""
    wal = Path(f"{db}-wal")
    return db.read_bytes(), wal.read_bytes() if wal.exists() else b""


async def test_a_hub_refuses_another_federations_database(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        assert await _publish_one(fed, url) == 0
    other_dir = _other_federation(tmp_path)
    other = hub_config(other_dir, db)
    before = _files(db)
    with pytest.raises(ConfigError, match="holds the log of hub 'hub' of federation 'intelhub-test'"):
        async with running_hub(other):
            pass
    assert _files(db) == before, "a refused database was written to"
    # A database from before owner records: its checkpoint tells whose log it is.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM blobs WHERE kind = ?", (OWNER_KIND,))
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE kind = 'checkpoint'").fetchone()[0] == 1
    conn.close()
    before = _files(db)
    with pytest.raises(ConfigError, match="whose checkpoint this hub's key did not sign"):
        async with running_hub(other):
            pass
    assert _files(db) == before, "a refused database was written to"
    cfg = tmp_path / "other.toml"
    cfg.write_text(hub_toml(other_dir, db))
    assert_refused(hub_cli("serve", cfg, "--check"), 2, "whose checkpoint this hub's key did not sign")
    # rotate-key is from a recorded owner only: it cannot be used to take an unrecorded log.
    assert_refused(hub_cli("rotate-key", cfg), 2, "records no owner yet")
    assert _files(db) == before
    # Refusals leave it as it was: its own hub takes it back, log and all.
    async with running_hub(hub_config(fed_dir, db)) as (url, app):
        assert app[RELAY].storage.size() == 1
    conn = sqlite3.connect(db)
    [[raw]] = conn.execute("SELECT data FROM blobs WHERE kind = ? AND key = ?", (OWNER_KIND, OWNER_KEY)).fetchall()
    conn.close()
    assert LogOwner.decode(raw) == LogOwner.of(fed.roster)


def _rotated(fed: Federation, fed_dir: Path, out: Path) -> tuple[Path, SigningKey]:
    """The federation's trust directory with a roster of serial 2 that names a new hub key."""
    shutil.copytree(fed_dir, out)
    key = SigningKey.generate()
    r = fed.roster
    tbs = roster_tbs(federation=r.federation, serial=r.serial + 1, issued=NOW + 60,
                     nations=[(c, n.name, n.root) for c, n in r.nations.items()], hub_name=r.hub_name,
                     hub_key=key.public(), suites=list(r.suites))
    raw = sign_roster(tbs, {c: m.root for c, m in fed.members.items()})
    Roster.parse(raw).verify()
    (out / "roster.txt").write_text(armor("ROSTER", raw, ("EXAMPLE ONLY: test federation",)))
    (out / "hub" / "hub.key").unlink()
    save_private_keys(out / "hub" / "hub.key", PrivateKeys(signing=key), None, example=True)
    return out, key


async def test_a_rotated_hub_key_is_taken_over_only_by_rotate_key(fed: Federation, fed_dir: Path,
                                                                   tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        await _publish_one(fed, url)
    new_dir, new_key = _rotated(fed, fed_dir, tmp_path / "rotated")
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(new_dir, db).replace("[hub]\n", "[hub]\ncheckpoint_interval = 0.1\n"))
    assert_refused(hub_cli("serve", cfg), 2, "run `intelhub hub rotate-key --config <hub.toml>` once")
    assert_refused(hub_cli("serve", cfg, "--check"), 2, "intelhub hub rotate-key")

    r = hub_cli("rotate-key", cfg)
    assert r.returncode == 0, r.stderr
    assert "roster serial 1" in r.stdout and "roster serial 2" in r.stdout
    assert hub_cli("serve", cfg, "--check").returncode == 0
    assert_refused(hub_cli("rotate-key", cfg), 2, "nothing to rotate")

    hub = HubProcess(cfg, tmp_path / "hub.log")
    url = hub.start()
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 10
            while True:  # the new key signs a checkpoint over the leaf the old key accepted
                async with s.get(f"{url}/v1/log/checkpoint") as resp:
                    if resp.status == 200:
                        cp = checkpoint_opener(fed.hub_name, new_key)(await resp.text())
                        if cp.size == 1:
                            break
                assert time.monotonic() < deadline, "no checkpoint of the old leaf under the new key"
                time.sleep(0.1)
    finally:
        assert hub.stop() == 0
    # The old trust directory (roster serial 1) is a rollback now.
    old = tmp_path / "old.toml"
    old.write_text(hub_toml(fed_dir, db))
    assert_refused(hub_cli("serve", old), 2, "older than serial 2")


def test_check_refuses_a_database_of_a_newer_schema(fed_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, db))
    hub = HubProcess(cfg, tmp_path / "hub.log")
    hub.start()
    assert hub.stop() == 0
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'future')")
    conn.close()
    for command in (("serve",), ("serve", "--check")):
        assert_refused(hub_cli(*command[:1], cfg, *command[1:]), 5, "schema version 99, newer than this intelhub")
