"""The hub as an aiohttp application: lifecycle, routes, and ``serve`` (``intelhub hub serve``)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import ssl
import sys
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from hub.aio import stop_requested
from hub.keyfiles import load_private_keys, load_trust_dir
from hub.protocol import codec, frames
from hub.protocol.errors import ConfigError, DecodeError, IntelhubError, KeyFileError, ProtocolError
from hub.protocol.keys import SigningKey
from hub.protocol.trust import Trust

from .config import HubConfig
from .control import start as start_control
from .metrics import Metrics
from .owner import LogOwner, decide, record
from .relay import Relay
from .session import Session
from .sqlite_store import SQLiteStorage

#: Seconds a session gets to take its close frame at shutdown before its connection is cut.
SHUTDOWN_CLOSE_TIMEOUT = 2.0
#: Seconds the hub still reads a request body it already answered (so the answer is not lost to a reset).
LINGERING_TIME = 1.0

log = logging.getLogger("intelhub.hub")

RELAY = web.AppKey("relay", Relay)
CONFIG = web.AppKey("config", HubConfig)
SESSIONS: web.AppKey[Any] = web.AppKey("sessions", weakref.WeakSet)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


_HTTP_STATUS = {"rate_limited": 429, "too_large": 413, "timeout": 408, "unavailable": 503, "conflict": 409,
                "untrusted_signer": 403, "invalid_packet": 403, "wrong_nation": 403, "forbidden_topic": 403}


def _error(exc: ProtocolError) -> web.Response:
    return _json({"code": exc.code, "reason": str(exc)}, _HTTP_STATUS.get(exc.code, 400))


async def ws_handler(request: web.Request) -> web.StreamResponse:
    # No aiohttp heartbeat (it restarts on every byte, so a peer dripping one frame forever would
    # never be closed): Session.watchdog pings on a fixed clock and closes silent peers.
    # + 1: aiohttp refuses a message of max_msg_size bytes or more; MAX_FRAME itself is allowed.
    ws = web.WebSocketResponse(max_msg_size=frames.MAX_FRAME + 1, heartbeat=None, autoping=False, compress=False)
    await ws.prepare(request)
    session = Session(request.app[RELAY], ws, request.remote or "?")
    request.app[SESSIONS].add(session)
    try:
        await session.run()
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug must cost one session, never the hub
        log.exception("session %s failed", session.id)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        if not ws.closed:
            await ws.close()
    return ws


async def _read_body(request: web.Request) -> bytes:
    """A request body of a declared, bounded length, read within a deadline (no HTTP slow-loris)."""
    length = request.content_length
    if length is None:
        raise ProtocolError("send a Content-Length (chunked bodies are not accepted)", "bad_request")
    if length > frames.MAX_FRAME:
        raise ProtocolError(f"body of {length} bytes is over the limit of {frames.MAX_FRAME}", "too_large")
    try:
        async with asyncio.timeout(request.app[CONFIG].limits.auth_timeout):
            return await request.read()
    except TimeoutError:
        raise ProtocolError("the request body did not arrive in time", "timeout") from None
    except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. a Content-Encoding it is not in
        raise ProtocolError(f"the request body cannot be read ({exc})", "bad_request") from None


async def publish_handler(request: web.Request) -> web.Response:
    """One-shot publish for the officer's CLI, authenticated by the packet's own signature."""
    relay = request.app[RELAY]
    try:
        body = await _read_body(request)
        f = codec.decode(body, max_size=frames.MAX_FRAME)
        if type(f) is not dict or not {"packet"} <= f.keys() <= {"packet", "cert"} \
                or type(f["packet"]) is not bytes or type(f.get("cert", b"")) is not bytes:
            raise DecodeError("body must be a map of packet (bytes) and optionally cert (bytes)")
        a = await relay.publish(f["packet"], nation=None, cert=f.get("cert"), address=request.remote or "unknown")
    except DecodeError as exc:
        return _json({"code": "malformed", "reason": str(exc)}, 400)
    except ProtocolError as exc:
        return _error(exc)
    return _json({"index": a.index, "id": str(__import__("uuid").UUID(bytes=a.packet_id)),
                  "duplicate": a.duplicate, "accepted_at": a.accepted_at, "promise": a.promise})


async def directory_handler(request: web.Request) -> web.Response:
    """The key directory: roster, every known certificate, every nation's latest revocation list."""
    trust = request.app[RELAY].trust
    body = codec.encode({
        "roster": trust.roster.raw,
        "certs": [c.raw for c in trust.certs.values()],
        "revocations": [r.raw for r in trust.revocations.values()],
    })
    return web.Response(body=body, content_type="application/msgpack")


async def revocations_handler(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    try:
        rl = await relay.learn_revocations(await _read_body(request))
    except ProtocolError as exc:
        return _error(exc)
    return _json({"nation": rl.nation, "serial": rl.serial})


async def healthz(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    sessions = sum(len(s) for s in relay.sessions_by_nation.values())  # authenticated ones
    return _json({"status": "ok", "log_size": relay.storage.size(), "sessions": sessions})


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[RELAY].metrics.render(), content_type="text/plain")


def create_app(config: HubConfig, *, relay_factory: type[Relay] = Relay, log_factory: Any = None) -> web.Application:
    app = web.Application(client_max_size=frames.MAX_FRAME)
    app[CONFIG] = config
    app[SESSIONS] = weakref.WeakSet()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        trust, signing = load_identity(config)
        metrics = Metrics()
        from .log import HubLog

        # Before the database is opened for writing: a refused one is left exactly as it was.
        _, owner = owner_decision(config, trust, signing)
        storage = SQLiteStorage(config.database)
        control: web.AppRunner | None = None
        try:
            storage.on_commit = metrics.on_commit
            relay = relay_factory(config, trust, storage, metrics)
            relay.load_directory()
            relay.hub_log = (log_factory or HubLog)(relay, signing, sessions=app[SESSIONS])
            if config.control_socket is not None:
                control = await start_control(relay, config.control_socket)
            if owner is not None:  # once the rest has started: a failed start records nothing
                await record(storage, owner)
        except BaseException:
            if control is not None:
                await control.cleanup()
            await storage.close()  # releases the database for the next start
            raise
        app[RELAY] = relay
        tasks = [asyncio.create_task(relay.hub_log.run()), asyncio.create_task(_purge_loop(relay))]
        try:
            yield
        finally:
            if control is not None:  # before the storage closes (it serves on while the sessions drain)
                await control.cleanup()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await relay.close()
            await storage.close()

    async def on_shutdown(app: web.Application) -> None:
        # All at once: one peer that stopped reading must not hold up the others' close, or the exit.
        await asyncio.gather(*(s.close_within(SHUTDOWN_CLOSE_TIMEOUT, WSCloseCode.GOING_AWAY, b"hub shutting down")
                               for s in list(app[SESSIONS])))

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/v1/ws", ws_handler)
    app.router.add_post("/v1/publish", publish_handler)
    app.router.add_get("/v1/directory", directory_handler)
    app.router.add_post("/v1/revocations", revocations_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    from .log import add_log_routes

    add_log_routes(app, RELAY)
    return app


async def _purge_loop(relay: Relay) -> None:
    while True:
        await asyncio.sleep(60)
        try:
            n = await relay.storage.purge(relay.now(), relay.config.retention_seconds)
            if n:
                log.info("purged %d packet bodies past retention", n)
        except IntelhubError as exc:
            log.warning("purge failed: %s", exc)


def load_identity(config: HubConfig) -> tuple[Trust, SigningKey]:
    """The trust directory and the hub's signing key, checked against each other and the topic rules."""
    trust = load_trust_dir(config.trust)
    config.check_nations(trust.roster.nations)
    keys = load_private_keys(config.key)
    if keys.signing is None or keys.signing.public().key_id != trust.roster.hub_key.key_id:
        raise KeyFileError(f"{config.key}: not the hub key named in the roster")
    return trust, keys.signing


def owner_decision(config: HubConfig, trust: Trust, signing: SigningKey, *,
                   rotate: bool = False) -> tuple[LogOwner | None, LogOwner | None]:
    """:func:`~hub.server.owner.decide` for this hub's database, roster and key (start, --check, rotate-key)."""
    from .log import checkpoint_opener

    return decide(config.database, trust.roster, checkpoint_opener(trust.roster.hub_name, signing), rotate=rotate)


def tls_context(config: HubConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP on loopback; a bad pair is a ConfigError."""
    if not (config.tls_cert and config.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"hub.tls_cert / hub.tls_key: cannot load {config.tls_cert} with {config.tls_key} "
                          f"({exc.__class__.__name__}: {exc}); give a PEM certificate and its own PEM private key") \
            from None
    return ctx


def check_port_file(port_file: Path, config: HubConfig, config_path: Path | None = None) -> None:
    """Refuse a --port-file that would overwrite something: it may only replace an earlier port file."""
    target = port_file.resolve()
    named = {config.database, config.key, config.trust, config.tls_cert, config.tls_key, config_path}
    if any(p is not None and p.resolve() == target for p in named):
        raise ConfigError(f"--port-file {port_file}: that is a file the hub's configuration names")
    if not port_file.name or not target.parent.is_dir():
        raise ConfigError(f"--port-file {port_file}: give a file in an existing directory")
    if port_file.exists():
        try:
            old = port_file.read_bytes() if port_file.is_file() and port_file.stat().st_size <= 8 else None
        except OSError:
            old = None
        if old is None or not old.strip().isdigit():
            raise ConfigError(f"--port-file {port_file}: exists and is not a port file; it is not overwritten")


async def serve(config: HubConfig, *, port_file: Path | None = None, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: close every session with 1001 and stop."""
    # Short GIL turns: the event loop gives the GIL up on every socket write and hash, and must not
    # then wait a whole default 5 ms slice behind a verification thread to get it back.
    sys.setswitchinterval(0.0002)
    if port_file:
        check_port_file(port_file, config)
    ctx = tls_context(config)  # before the database is opened: a bad pair leaves nothing behind
    app = create_app(config)
    # lingering_time: how long aiohttp reads on after answering a request whose body did not all
    # come (a 408 after auth_timeout, a 413): by default 10 s more of a slow sender's connection.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, lingering_time=LINGERING_TIME)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"hub.listen: cannot listen on {config.listen_host}:{config.listen_port} "
                              f"({exc.strerror or exc}); choose a free port on an address of this machine") from None
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr, attr-defined]
        port = sockets[0].getsockname()[1] if sockets else config.listen_port
        if port_file:
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(str(port))
            tmp.replace(port_file)
    except BaseException:
        await runner.cleanup()
        raise
    scheme = "https" if ctx else "http"
    log.info("hub listening on %s://%s:%d", scheme, config.listen_host, port)
    try:
        await _serve_until_stopped(runner, ready)
    finally:
        if port_file:
            _remove_port_file(port_file, port)


def _remove_port_file(port_file: Path, port: int) -> None:
    try:
        if port_file.read_text().strip() == str(port):  # still ours
            port_file.unlink()
    except OSError:
        pass


async def _serve_until_stopped(runner: web.AppRunner, ready: asyncio.Event | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    early = stop_requested()
    if early is not None:
        log.info("hub told to stop (signal %d) while starting", early)
        stop.set()
    # Everything loaded so far (modules, the trust store, the app) lives as long as the process:
    # out of the collector's sight, a full collection scans only what serving creates. Measured
    # at 500 packets/s, collections of the whole heap stalled the event loop 20-40 ms each.
    gc.freeze()
    if ready:
        ready.set()
    started = time.monotonic()
    await stop.wait()
    log.info("hub draining after %.0f s", time.monotonic() - started)
    await runner.cleanup()
