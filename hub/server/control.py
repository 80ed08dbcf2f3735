"""The operator's control socket: changes to a running hub that only this machine's operator makes.

A Unix socket (``[hub] control_socket``), mode 0600 in a directory only the hub's user may
write to; where the system tells (Linux), the peer must run as the hub's user or root. Nothing
on it is reachable from the network, and the nodes' protocol never carries it. HTTP on the
socket, JSON both ways. ``intelhub hub unsubscribe`` uses it while the hub runs
(docs/protocol.md §8.8).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from hub import lockfile
from hub.protocol.certs import check_nation
from hub.protocol.errors import ConfigError, IntelhubError, StoreError
from hub.protocol.frames import MAX_NAME

log = logging.getLogger("intelhub.hub.control")

#: Longest socket path: sun_path holds 108 bytes on Linux (104 on BSDs), the last a NUL.
MAX_PATH_BYTES: Final = 103
#: Longest request body: a nation and a subscription name.
MAX_BODY: Final = 1024
UNSUBSCRIBE: Final = "/control/v1/unsubscribe"


def check_name(name: object) -> str:
    """A subscription name as the protocol allows it: 1-MAX_NAME characters of valid Unicode."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"a subscription name has 1-{MAX_NAME} characters")
    try:
        name.encode()
    except UnicodeEncodeError:  # a lone surrogate: a JSON escape, or bytes a shell could not decode
        raise ValueError("not valid Unicode") from None
    return name


def check_path(path: Path, field: str = "hub.control_socket") -> Path:
    if len(os.fsencode(str(path))) > MAX_PATH_BYTES:
        raise ConfigError(f"{field}: {path} is longer than the {MAX_PATH_BYTES} bytes a Unix socket path may "
                          "have; choose a shorter path (e.g. /run/intelhub/hub.control)")
    return path


#: Links followed on the way to the socket's directory before the path is refused (as Linux's MAXSYMLINKS).
MAX_LINKS: Final = 40


def _swappable(st: os.stat_result, serving: bool) -> bool:
    """Whether another user could replace what is in a directory with ``st``: others may write to
    it, unless it is sticky and root's (like /tmp); or, ``serving``, it is owned by someone other
    than root or the hub's user (the owner may rename what is in it)."""
    shared = st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and st.st_uid == 0)
    return bool(shared) or (serving and st.st_uid not in (0, os.geteuid()))


def _walk(directory: Path, serving: bool) -> Path | None:
    """Follow ``directory`` from / a name at a time, as the kernel does, links included; the first
    directory or link on the way that another user could swap (:func:`_swappable`), or None.
    ConfigError if a name is missing or not a directory."""
    todo = list(reversed((Path.cwd() / directory).parts[1:]))  # ".." kept: the kernel, not the text, says where it leads
    here = Path("/")
    if _swappable(os.stat(here), serving):
        return here
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":  # ``here`` is always a real directory: its parent is the one ".." names
            here = here.parent
            continue
        step = here / name
        try:
            st = os.lstat(step)
        except OSError:
            where = "" if step == directory else f" ({step} is missing)"
            raise ConfigError(f"hub.control_socket: directory {directory} does not exist{where}; "
                              "create it (mode 0700) first") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise ConfigError(f"hub.control_socket: more than {MAX_LINKS} links on the way to {directory} "
                                  "(a loop?); give the socket's real directory")
            # A link's mode means nothing; in a sticky directory its owner may replace it.
            if serving and st.st_uid not in (0, os.geteuid()):
                return step
            target = os.readlink(step)
            if os.path.isabs(target):
                here = Path("/")
            todo.extend(reversed(Path(target).parts[1:] if os.path.isabs(target) else Path(target).parts))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"hub.control_socket: {step}, on the way to the socket, is not a directory; "
                              "give a directory (mode 0700) for the socket")
        if todo and _swappable(st, serving):  # the socket's own directory has the stricter rule below
            return step
        here = step
    return None


def check_place(path: Path, *, serving: bool = True) -> bool:
    """Whether a socket is at ``path`` now; refuses a missing directory, one that another user may
    write to, or swap (any directory or link on the way to it, see :func:`_walk`), and another
    kind of file at ``path``. Not ``serving`` (``--check``, perhaps as another user): owners are
    not compared."""
    _check_directory(path, serving)
    return _socket_there(path)


def _check_directory(path: Path, serving: bool) -> None:
    on_the_way = _walk(path.parent, serving)
    if on_the_way is not None:
        raise ConfigError(f"hub.control_socket: {on_the_way}, on the way to the socket's directory, may be changed "
                          "by other users, who could swap that directory for theirs; use directories (and links) "
                          "owned by root or the hub's user that only their owner can write to (chmod go-w), "
                          "e.g. /run/intelhub")
    st = os.stat(path.parent)
    if st.st_mode & 0o022 or (serving and st.st_uid not in (0, os.geteuid())):
        raise ConfigError(f"hub.control_socket: directory {path.parent} may be written to by other users; put the "
                          "socket in a directory of the hub's user that only it can write to (chmod go-w)")


def _socket_there(path: Path) -> bool:
    if not os.path.lexists(path):
        return False
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError(f"hub.control_socket: {path} exists and is not a socket; it is not replaced")
    return True


def _bind(path: Path) -> tuple[socket.socket, _Held]:
    """A listening-ready socket at ``path``, mode 0600, and what this hub then holds: the socket
    file and ``<socket>.lock``. The lock is held for as long as the hub serves: two hubs started
    at once on one path would both find an old socket dead, and the later would remove the
    earlier's live socket. A socket left by a hub that was killed is replaced; a live one, or
    any other file, is not."""
    _check_directory(path, serving=True)  # before the lock file is made there
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock = lockfile.hold(lock_path, follow=False)
    except OSError as exc:
        raise ConfigError(f"hub.control_socket: cannot lock {lock_path} ({exc.strerror or exc}); put the socket on "
                          "a local file system (e.g. /run/intelhub)") from None
    if lock is None:
        raise ConfigError(f"hub.control_socket: another hub serves {path} (it holds {lock_path}); "
                          "give each hub its own control socket")
    try:
        sock, ident = _bind_locked(path)
    except BaseException:
        os.close(lock)
        raise
    return sock, _Held(path, ident, lock)


def _bind_locked(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    if _socket_there(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except ConnectionRefusedError:  # nobody listens any more
            try:
                os.unlink(path)
            except OSError as exc:
                raise ConfigError(f"hub.control_socket: cannot remove the old socket {path} "
                                  f"({exc.strerror or exc})") from None
        except OSError as exc:  # busy, or not ours to try: it is left alone
            raise ConfigError(f"hub.control_socket: {path} is there and cannot be told dead "
                              f"({exc.strerror or exc}); remove it if no hub uses it") from None
        else:
            raise ConfigError(f"hub.control_socket: a running process already listens on {path} (another hub?); "
                              "give each hub its own control socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen: until then a connect is refused, whatever the mode
        st = os.lstat(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"hub.control_socket: cannot create {path} ({exc.strerror or exc})") from None
    return sock, (st.st_dev, st.st_ino)


def _peer_allowed(request: web.Request) -> bool:
    """The peer runs as the hub's user or root (Linux peer credentials; elsewhere the file mode decides)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return False
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid in (0, os.geteuid())


def _refused(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"code": code, "reason": reason}, status=status)


class _Held:
    """The socket file this hub made and the lock it holds; :meth:`release` gives both up, once."""

    def __init__(self, path: Path, ident: tuple[int, int], lock: int) -> None:
        self.path, self.ident, self.lock = path, ident, lock

    def release(self) -> None:
        if self.lock < 0:
            return
        _unlink(self.path, self.ident)
        os.close(self.lock)  # after: the next hub may take the path only once the socket is gone
        self.lock = -1


def create_control_app(relay: Any, held: _Held) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)

    async def remove_socket(_: web.Application) -> None:
        held.release()

    async def unsubscribe(request: web.Request) -> web.Response:
        if not _peer_allowed(request):
            return _refused(403, "forbidden", "only the hub's own user (or root) may use its control socket")
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or set(body) != {"nation", "name"}:
                raise ValueError("the fields are nation and name, and only they")
            nation, name = check_nation(body["nation"], "nation"), body["name"]
            check_name(name)
        except (ValueError, IntelhubError) as exc:
            return _refused(400, "bad_request", f"give {{\"nation\": \"FR\", \"name\": \"...\"}} ({exc})")
        if relay.feeding(nation, name):
            return _refused(409, "in_use", f"a connected session of {nation} is fed {name!r}: stop that node, or "
                                           "remove the subscription from its configuration (the node then unsubs it)")
        try:
            removed = await relay.storage.unsubscribe(nation, name)
        except StoreError as exc:
            return _refused(503, "store", str(exc))
        if not removed:
            return _refused(404, "unknown_subscription", f"{nation} has no subscription named {name!r}")
        # A session that subscribed the name during the removal feeds a subscription no longer on
        # disk: it is closed, and its node subscribes afresh when it reconnects.
        await relay.end_session_feeding(nation, name, "subscription removed by the hub operator")
        log.warning("the operator removed %s's subscription %r (control socket)", nation, name)
        return web.json_response({"removed": True})

    app.router.add_post(UNSUBSCRIBE, unsubscribe)
    app.on_cleanup.append(remove_socket)
    return app


async def start(relay: Any, path: Path) -> web.AppRunner:
    """Serve the control socket at ``path`` until the returned runner is cleaned up (which also
    removes the socket file)."""
    sock, held = _bind(path)
    runner = web.AppRunner(create_control_app(relay, held), handle_signals=False, access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        held.release()
        raise
    return runner


def _unlink(path: Path, ident: tuple[int, int]) -> None:
    """Remove the socket file, if it is still the one this hub made."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except OSError:
        pass


class ControlUnavailable(Exception):
    """No hub listens on the control socket (it is stopped, or runs without one)."""


async def call(path: Path, route: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the hub's control socket: (HTTP status, JSON answer)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ControlUnavailable(str(path))
    except FileNotFoundError:
        raise ControlUnavailable(str(path)) from None
    except OSError as exc:  # a directory this user may not enter: not to be taken for a stopped hub
        raise StoreError(f"hub.control_socket {path}: cannot reach it ({exc.strerror or exc}); run this as the "
                         "hub's user") from None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)),
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post("http://hub" + route, json=body) as r:
                text = (await r.read()).decode(errors="replace")
                try:
                    answer = json.loads(text)
                except ValueError:
                    answer = {"reason": f"{r.status} {r.reason}: {text.strip()[:200]}"}
                return r.status, answer if isinstance(answer, dict) else {"reason": str(answer)[:200]}
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, (ConnectionRefusedError, FileNotFoundError)):
            raise ControlUnavailable(str(path)) from exc  # a socket left by a hub that stopped
        raise StoreError(f"hub.control_socket {path}: cannot connect ({exc.os_error.strerror or exc.os_error}); "
                         "run this as the hub's user") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StoreError(f"hub.control_socket {path}: no answer from the hub ({exc.__class__.__name__}: {exc}); "
                         "see the hub's log") from None
