"""The hub operator's subscription commands: `intelhub hub subscriptions` reads beside a serving hub;
`intelhub hub unsubscribe` removes a subscription nobody consumes, through the hub's control socket
while it runs, or on its database with it stopped."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from hub.protocol.errors import ConfigError
from hub.protocol.federation import Federation
from hub.server.app import RELAY
from hub.server.control import UNSUBSCRIBE, call

from .hubutil import assert_refused, collect, hub_cli, hub_config, hub_toml, node_client, running_hub, seal_for


def _cfg(tmp_path: Path, fed_dir: Path, db: Path, sock: Path | None = None) -> Path:
    """The hub.toml the CLI reads for a test's hub."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(hub_toml(fed_dir, db, control=sock))
    return cfg


async def test_an_operator_finds_and_removes_a_subscription_nobody_consumes(fed: Federation, fed_dir: Path,
                                                                           tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    cfg = _cfg(tmp_path, fed_dir, db)
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            # "old" was the subscription of an FR node that lost its store; "main" is consumed.
            await fr.subscribe("old", ["alerts.>"])
            await fr.subscribe("main", [">"])
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"]), timeout=10)
            got = await collect(fr, 6, ack=False)  # three each; only "main" acknowledges
            assert sorted(d.sub for d in got) == ["main"] * 3 + ["old"] * 3
            for d in got:
                if d.sub == "main":
                    await fr.ack(d.sub, d.index)
            # Read-only beside the serving hub (until the acks are on disk); removing needs it stopped.
            deadline = time.monotonic() + 10
            while True:
                r = hub_cli("subscriptions", cfg, "--json")
                assert r.returncode == 0, r.stderr
                by_name = {s["name"]: s for s in json.loads(r.stdout)["subscriptions"]}
                if by_name["main"]["owed"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        assert set(by_name) == {"main", "old"} and {s["nation"] for s in by_name.values()} == {"FR"}
        assert by_name["main"]["owed"] == 0 and by_name["main"]["acked_at"] >= int(time.time()) - 60
        assert by_name["old"]["owed"] == 3 and by_name["old"]["acked_at"] is None
        assert by_name["old"]["patterns"] == ["alerts.>"] and by_name["old"]["oldest_owed"] is not None
        r = hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old")
        assert_refused(r, 5, "in use by another hub")
        assert "set [hub] control_socket to do this while it runs" in r.stderr

    r = hub_cli("subscriptions", cfg)
    assert r.returncode == 0, r.stderr
    header, _, *rows = r.stdout.splitlines()
    assert header.split()[:6] == ["NATION", "NAME", "PATTERNS", "ACKED", "TO", "OWED"]
    old = next(row for row in rows if row.split()[1] == "old")
    assert old.split()[4] == "3" and "never" in old

    r = hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old")
    assert r.returncode == 0 and "removed FR's subscription 'old'" in r.stdout, r.stderr
    after = json.loads(hub_cli("subscriptions", cfg, "--json", "--nation", "FR").stdout)
    assert [s["name"] for s in after["subscriptions"]] == ["main"]
    assert_refused(hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "old"), 2, "no subscription named 'old'")
    assert_refused(hub_cli("subscriptions", cfg, "--nation", "fr"), 2, "not a nation code")
    assert hub_cli("subscriptions", cfg, "--nation", "DE").stdout.strip() == "no subscriptions of DE"


def test_listing_needs_a_database(fed_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, fed_dir, tmp_path / "missing.db")
    assert_refused(hub_cli("subscriptions", cfg), 5, "no hub database there")
    assert not (tmp_path / "missing.db").exists()


async def test_a_database_whose_name_has_uri_characters_is_read_as_itself(fed: Federation, fed_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Read-only opens go through a file URI: "hub?x#1.db" is that file, not "hub" (which they created)."""
    db = tmp_path / "hub?x#1.db"
    cfg = _cfg(tmp_path, fed_dir, db)
    async with running_hub(hub_config(fed_dir, db)) as (url, _):
        async with node_client(fed, "FR", url) as fr:
            await fr.wait_connected(10)
            await fr.subscribe("main", [">"])
    r = hub_cli("subscriptions", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert [s["name"] for s in json.loads(r.stdout)["subscriptions"]] == ["main"]
    assert hub_cli("serve", cfg, "--check").returncode == 0
    assert not (tmp_path / "hub").exists()


async def test_packets_a_feed_passes_by_are_not_held_for_it(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """FR subscribes to everything but the hub's topic rules let FR receive alerts only: the notices
    addressed to FR are passed by, and the subscription's cursor on disk moves past them even though
    FR acknowledges nothing, so they are neither owed to it nor kept for it."""
    from hub.server.admin import subscriptions
    from hub.server.app import RELAY

    db = tmp_path / "hub.db"
    config = hub_config(fed_dir, db, limits={"ack_timeout": 0.2},
                        topics='[topics.FR]\nsubscribe = ["alerts.>"]\n')
    async with running_hub(config) as (url, app):
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            await fr.subscribe("main", [">"])
            for _ in range(3):
                await it.publish(seal_for(fed, "IT", ["FR"], topic="notices.general"), timeout=10)
            deadline = time.monotonic() + 10
            while (s := subscriptions(db, int(time.time()), "FR")[0]).owed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert s.owed == 0 and s.cursor == 2 and s.acked_at is None, s  # passed by, not acknowledged
            cfg = _cfg(tmp_path, fed_dir, db)
            [row] = hub_cli("subscriptions", cfg).stdout.splitlines()[2:]
            assert "never" in row and "unknown" not in row, row
            assert fr.deliveries.empty()
            assert await app[RELAY].storage.purge(int(time.time()), 0) == 3


# -- the control socket: removing a subscription while the hub runs ---------------------------------------


async def test_an_operator_removes_a_subscription_while_the_hub_runs(fed: Federation, fed_dir: Path,
                                                                     tmp_path: Path) -> None:
    db, sock = tmp_path / "hub.db", tmp_path / "hub.control"
    cfg = _cfg(tmp_path, fed_dir, db, sock)
    async with running_hub(hub_config(fed_dir, db, control=sock)) as (url, _):
        assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.lstat().st_mode) == 0o600
        async with node_client(fed, "FR", url) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            await fr.subscribe("old", ["alerts.>"])
            await fr.subscribe("main", [">"])
            await it.publish(seal_for(fed, "IT", ["FR"]), timeout=10)
            assert len(await collect(fr, 2, ack=False)) == 2
            # A subscription a connected node is fed is not pulled from under it.
            r = await asyncio.to_thread(hub_cli, "unsubscribe", cfg, "--nation", "FR", "--name", "old")
            assert_refused(r, 2, "a connected session of FR is fed 'old'")
        # The FR node is gone; the hub still runs.
        r = await asyncio.to_thread(hub_cli, "unsubscribe", cfg, "--nation", "FR", "--name", "old")
        assert r.returncode == 0 and "removed FR's subscription 'old' (from the running hub)" in r.stdout, r.stderr
        r = await asyncio.to_thread(hub_cli, "subscriptions", cfg, "--json")
        assert [s["name"] for s in json.loads(r.stdout)["subscriptions"]] == ["main"]
        r = await asyncio.to_thread(hub_cli, "unsubscribe", cfg, "--nation", "FR", "--name", "old")
        assert_refused(r, 2, "no subscription named 'old'")
        # What the socket takes is checked like any other entry point.
        for body in (b"not json", b'{"nation": "fr", "name": "main"}', b'{"nation": "FR", "name": ""}',
                     b'{"nation": "FR", "name": "a\\udcff"}',
                     b'{"nation": "FR", "name": "main", "x": 1}', b"[]"):
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
                async with s.post("http://hub" + UNSUBSCRIBE, data=body) as resp:
                    assert resp.status == 400 and (await resp.json())["code"] == "bad_request", body
        status, answer = await call(sock, UNSUBSCRIBE, {"nation": "FR", "name": "x" * 2000})  # over 1 KiB
        assert status == 413 and answer["reason"].startswith("413 Request Entity Too Large"), answer
        r = await asyncio.to_thread(hub_cli, "subscriptions", cfg, "--json")  # "main" untouched by all that
        [main] = json.loads(r.stdout)["subscriptions"]
        assert main["name"] == "main" and main["owed"] == 1
    assert not sock.exists(), "the hub left its control socket behind"
    # Stopped: the command goes to the database itself.
    r = hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "main")
    assert r.returncode == 0 and "removed FR's subscription 'main'" in r.stdout and "running" not in r.stdout, r.stderr


async def test_a_control_socket_path_is_taken_only_when_nobody_uses_it(fed: Federation, fed_dir: Path,
                                                                     tmp_path: Path) -> None:
    sock = tmp_path / "hub.control"
    # Left by a hub that was killed: replaced.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
        r = await asyncio.to_thread(hub_cli, "subscriptions", _cfg(tmp_path, fed_dir, tmp_path / "a.db", sock))
        assert r.returncode == 0, r.stderr
        # A second hub (its own database) pointed at the live socket does not start, and leaves it be.
        with pytest.raises(ConfigError, match="another hub serves .*hub.control.lock"):
            async with running_hub(hub_config(fed_dir, tmp_path / "b.db", control=sock)):
                pass
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        status, answer = await call(sock, UNSUBSCRIBE, {"nation": "FR", "name": "none"})
        assert status == 404 and answer["code"] == "unknown_subscription"
    # Another program listening there (it holds no lock) is not displaced either.
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(sock))
    other.listen()
    try:
        with pytest.raises(ConfigError, match="already listens on"):
            async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
                pass
        assert stat.S_ISSOCK(sock.lstat().st_mode)
    finally:
        other.close()
    # Any other file is not replaced; --check says so too.
    sock.unlink()
    sock.write_text("notes")
    assert_refused(hub_cli("serve", _cfg(tmp_path, fed_dir, tmp_path / "a.db", sock), "--check"), 2,
                   "exists and is not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
            pass
    assert sock.read_text() == "notes"
    with pytest.raises(ConfigError, match="directory .* does not exist"):
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=tmp_path / "no" / "hub.control")):
            pass
    with pytest.raises(ConfigError, match="hub.control_socket: .* longer than the 103 bytes"):
        hub_config(fed_dir, tmp_path / "a.db", control=tmp_path / ("x" * 120))
    # A directory others may write to: they could swap the socket for a file or a link of theirs.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written to by other users"):
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=shared / "hub.control")):
            pass
    assert not (shared / "hub.control").exists()


async def test_two_hubs_starting_at_once_on_one_control_socket_do_not_take_it_from_each_other(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """Both would find a killed hub's socket dead; the later then removed the earlier's live socket.
    The lock beside the socket lets only one through: here the test holds it, as a hub that has
    just found the old socket dead would."""
    sock = tmp_path / "hub.control"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    ident = sock.lstat().st_ino
    with open(tmp_path / "hub.control.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another hub serves"):
            async with running_hub(hub_config(fed_dir, tmp_path / "b.db", control=sock)):
                pass
        assert sock.lstat().st_ino == ident, "the socket of the hub holding the lock was replaced"
    # Released (that hub stopped): the next start takes the path.
    async with running_hub(hub_config(fed_dir, tmp_path / "b.db", control=sock)):
        status, _ = await call(sock, UNSUBSCRIBE, {"nation": "FR", "name": "none"})
        assert status == 404
    assert not sock.exists() and (tmp_path / "hub.control.lock").exists()


async def test_a_control_socket_under_a_directory_others_could_swap_is_refused(fed: Federation, fed_dir: Path,
                                                                               tmp_path: Path) -> None:
    """Whoever may write to a directory on the way to the socket's (or owns it, or owns a link on
    the way) can put a directory of theirs in its place; a sticky one of root's (like /tmp) is safe."""
    cfg = _cfg(tmp_path, fed_dir, tmp_path / "a.db")

    async def refused(sock: Path, culprit: Path) -> None:
        lock_before = os.path.lexists(str(sock) + ".lock")  # a hub that served there before leaves it
        with pytest.raises(ConfigError, match=f"{culprit}, on the way to the socket's directory, may be changed"):
            async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
                pass
        assert not os.path.lexists(sock) and os.path.lexists(str(sock) + ".lock") == lock_before

    shared = tmp_path / "shared"
    inner = shared / "run"
    inner.mkdir(parents=True)
    inner.chmod(0o700)
    sock = inner / "hub.control"
    for mode in (0o777, 0o775):
        shared.chmod(mode)
        await refused(sock, shared)
        cfg.write_text(hub_toml(fed_dir, tmp_path / "a.db", control=sock))
        assert_refused(hub_cli("serve", cfg, "--check"), 2, "on the way to the socket's directory, may be changed")
    # Through links, and a link to a link: every directory a name is looked up in counts, as the
    # kernel looks it up (the hub and the CLI reach the socket by the path as written).
    (tmp_path / "link").symlink_to(inner, target_is_directory=True)
    await refused(tmp_path / "link" / "hub.control", shared)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    (safe / "real").mkdir(mode=0o700)
    (shared / "hop").symlink_to(safe / "real", target_is_directory=True)
    (tmp_path / "via").symlink_to(shared / "hop", target_is_directory=True)
    await refused(tmp_path / "via" / "hub.control", shared)
    (safe / "up").symlink_to(Path("..") / "shared" / "run", target_is_directory=True)  # climbs with ..
    await refused(safe / "up" / "hub.control", shared)
    (safe / "loop").symlink_to(safe / "loop")
    with pytest.raises(ConfigError, match="more than 40 links on the way to"):
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=safe / "loop" / "hub.control")):
            pass
    # A safe link is followed: the socket is made where it leads, and the CLI finds it there.
    (safe / "ok").symlink_to(safe / "real", target_is_directory=True)
    async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=safe / "ok" / "hub.control")):
        assert stat.S_ISSOCK((safe / "real" / "hub.control").lstat().st_mode)
        r = await asyncio.to_thread(hub_cli, "unsubscribe", _cfg(tmp_path, fed_dir, tmp_path / "a.db",
                                                                 safe / "ok" / "hub.control"),
                                    "--nation", "FR", "--name", "none")
        assert_refused(r, 2, "no subscription named 'none'")
    shared.chmod(0o1777)
    if os.geteuid() == 0:  # sticky and root's
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
            assert stat.S_ISSOCK(sock.lstat().st_mode)
        # In it, a link owned by another user: they may replace it.
        theirs = shared / "theirs"
        theirs.symlink_to(safe / "real", target_is_directory=True)
        os.lchown(theirs, 65534, 65534)
        await refused(theirs / "hub.control", theirs)
        os.lchown(theirs, 0, 0)
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=theirs / "hub.control")):
            assert stat.S_ISSOCK((safe / "real" / "hub.control").lstat().st_mode)
        # A directory owned by another user: they may rename what is in it, sticky or not.
        shared.chmod(0o755)
        os.chown(shared, 65534, 65534)
        await refused(sock, shared)
        # --check may run as another user than the hub's: it compares modes only.
        r = hub_cli("serve", cfg, "--check")
        assert r.returncode == 0, r.stderr


# Run as another user: asks the socket to remove FR's "keep"; prints the answer's status line or the error.
_PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    body = b'{"nation": "FR", "name": "keep"}'
    s.sendall(b"POST /control/v1/unsubscribe HTTP/1.1\\r\\nHost: hub\\r\\nContent-Type: application/json\\r\\n"
              b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s" % (len(body), body))
    print(s.recv(4096).split(b"\\r\\n")[0].decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="runs a peer as another user: needs root and a system python3")
async def test_another_user_may_not_use_the_control_socket(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    # Under /tmp itself: the user must reach the socket's directory to be refused by the socket.
    base = Path(tempfile.mkdtemp(prefix="intelhub-ctl-", dir="/tmp"))
    try:
        base.chmod(0o755)
        sock = base / "hub.control"
        async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)) as (url, app):
            async with node_client(fed, "FR", url) as fr:
                await fr.wait_connected(10)
                await fr.subscribe("keep", [">"])

            def as_nobody() -> str:
                r = subprocess.run(["/usr/bin/python3", "-c", _PEER, str(sock)], user=65534, group=65534,
                                   extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
                assert r.returncode == 0, r.stderr
                return r.stdout.strip()

            assert await asyncio.to_thread(as_nobody) == "PermissionError"  # the file's mode, 0600
            sock.chmod(0o666)  # were the mode lost, the peer's user is still checked
            assert await asyncio.to_thread(as_nobody) == "HTTP/1.1 403 Forbidden"
            assert app[RELAY].storage.subscription_names("FR") == ["keep"]
            status, _ = await call(sock, UNSUBSCRIBE, {"nation": "FR", "name": "keep"})  # the hub's own user may
            assert status == 200 and app[RELAY].storage.subscription_names("FR") == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_hub_removes_only_its_own_control_socket(fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    sock = tmp_path / "hub.control"
    async with running_hub(hub_config(fed_dir, tmp_path / "a.db", control=sock)):
        sock.unlink()  # someone put another socket there meanwhile
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(sock))
    try:
        assert stat.S_ISSOCK(sock.lstat().st_mode), "the hub removed a socket that was not its own"
    finally:
        other.close()
    cfg = _cfg(tmp_path, fed_dir, tmp_path / "a.db", sock)
    assert_refused(hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "x" * 65), 2, "has 1-64 characters")
    # Bytes the shell could not decode: refused before they reach the hub's writer.
    assert_refused(hub_cli("unsubscribe", cfg, "--nation", "FR", "--name", "a\udcff"), 2, "--name: not valid Unicode")



async def test_a_session_that_subscribes_during_a_removal_is_closed_and_its_node_subscribes_afresh(
        fed: Federation, fed_dir: Path, tmp_path: Path) -> None:
    """The control socket removes only subscriptions no session is fed; one a node subscribed while
    the removal was on its way to disk is no longer on disk, so its session is closed (1012) and the
    node, reconnecting, subscribes it again: it is fed anew, and its acknowledgements are kept."""
    from hub.server.admin import subscriptions
    from hub.server.app import RELAY

    db = tmp_path / "hub.db"
    async with running_hub(hub_config(fed_dir, db)) as (url, app):
        async with node_client(fed, "FR", url, backoff=(0.05, 0.2)) as fr, node_client(fed, "IT", url) as it:
            await asyncio.gather(fr.wait_connected(10), it.wait_connected(10))
            await fr.subscribe("x", [">"])
            relay = app[RELAY]
            assert relay.feeding("FR", "x")
            assert await relay.storage.unsubscribe("FR", "x")  # as the control socket's removal would
            await relay.end_session_feeding("FR", "x", "subscription removed by the hub operator")
            deadline = time.monotonic() + 10
            while fr.connects < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert fr.connects == 2
            await fr.wait_connected(10)
            await it.publish(seal_for(fed, "IT", ["FR"]), timeout=10)
            [d] = await collect(fr, 1)
            assert d.sub == "x"
            while (s := subscriptions(db, int(time.time()), "FR")[0]).cursor < d.index and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert s.name == "x" and s.cursor == d.index
