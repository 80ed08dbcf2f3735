"""Sinks: hand what the filters route to national systems, from the store's durable outbox.

The node's store adds an outbox row for each (packet, sink) in the same transaction that
stores the packet, so nothing routed is lost; :class:`SinkRunner` drains those rows with
retries and exponential backoff and marks them done only once a sink has them safely.
Delivery is at least once: every record carries its outbox id as ``delivery_id`` so a
consumer can drop repeats. docs/node.md ("Sinks") is the operator's description.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import random
import re
import ssl
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp

from hub.confpath import config_path, exists
from hub.protocol.errors import ConfigError

__all__ = ["JsonlSink", "Outbox", "OutboxItem", "Outcome", "PARKED_RETRY_AT", "Sink", "SinkRunner",
           "WebhookSink", "delivery_record", "sinks_from_config"]

log = logging.getLogger("intelhub.node.sinks")

#: ``retry_at`` of an item given up on (9999-12-31T23:59:59Z): the store never offers it
#: again, and it stays in the outbox with its last error until an operator requeues it.
PARKED_RETRY_AT: Final[int] = 253_402_300_799
DEFAULT_MAX_ATTEMPTS: Final[int] = 20
DEFAULT_MAX_BACKOFF: Final[float] = 300.0
BASE_BACKOFF: Final[float] = 1.0
DEFAULT_BATCH: Final[int] = 100
MAX_BATCH: Final[int] = 1000
#: How often an idle runner looks for items whose retry time has come (kick() wakes it sooner).
POLL_INTERVAL: Final[float] = 5.0
DEFAULT_TIMEOUT: Final[float] = 10.0
MAX_TIMEOUT: Final[float] = 300.0
#: Delivery ids remembered per JSONL sink: on start, from the file's tail (which holds the
#: last batch if the node crashed between writing it and marking it done), then as written.
JSONL_RECENT_IDS: Final[int] = MAX_BATCH
MAX_TAIL_BYTES: Final[int] = 256 << 20
MAX_ERROR_CHARS: Final[int] = 500
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


class OutboxItem(Protocol):
    """One queued delivery, as ``clients/node/store.py`` returns it (read-only)."""

    @property
    def id(self) -> int: ...
    @property
    def sink(self) -> str: ...
    @property
    def packet_id(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def attempts(self) -> int: ...  # failed attempts so far


class Outbox(Protocol):
    """The part of the node store a runner needs."""

    def outbox_pending(self, sink: str, limit: int = 100, now: int | None = None) -> Sequence[OutboxItem]: ...
    def outbox_done(self, ids: Sequence[int]) -> None: ...
    def outbox_failed(self, item_id: int, error: str, retry_at: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What became of one attempted item: delivered (``error`` None), retry, or permanent failure."""

    item_id: int
    error: str | None = None
    permanent: bool = False
    #: Seconds the receiver asked us to wait (HTTP Retry-After).
    retry_after: float | None = None


def delivery_record(item: OutboxItem) -> dict[str, Any]:
    """The JSON object a sink receives for one item (the same for every sink type)."""
    return {"delivery_id": item.id, "sink": item.sink, "packet_id": item.packet_id, "payload": item.payload}


def _encode(item: OutboxItem) -> bytes:
    # Strict JSON (no NaN); names stay in their own script.
    return json.dumps(delivery_record(item), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


class Sink(ABC):
    """A destination. ``deliver`` returns an outcome for each item it attempted; after a
    temporary failure it stops, and the items it did not attempt stay queued, untouched."""

    def __init__(self, name: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_backoff: float = DEFAULT_MAX_BACKOFF) -> None:
        self.name = name
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff

    async def start(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Prepare (open sessions, recover state); called again after it raised."""

    @abstractmethod
    async def deliver(self, items: Sequence[OutboxItem]) -> list[Outcome]: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources; the sink may be started again."""


class JsonlSink(Sink):
    """Appends one JSON line per item to a file, fsynced before the item is marked done.

    The file is opened for each batch, so it can be rotated by renaming it. One node
    process writes a file. After a crash between the write and ``outbox_done`` the tail
    of the file shows which ids were written, and those are not written again.
    """

    def __init__(self, name: str, path: Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_backoff: float = DEFAULT_MAX_BACKOFF) -> None:
        super().__init__(name, max_attempts=max_attempts, max_backoff=max_backoff)
        self.path = Path(path)
        # (delivery_id, packet_id): the store may reuse an outbox id once its row is gone,
        # so the id alone could make a new delivery look written.
        self._recent: deque[tuple[int, str]] = deque(maxlen=JSONL_RECENT_IDS)
        self._recent_set: set[tuple[int, str]] = set()

    async def start(self) -> None:
        for key in await asyncio.to_thread(self._recover):
            self._remember(key)

    def _remember(self, key: tuple[int, str]) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)

    def _recover(self) -> list[tuple[int, str]]:
        """Deliveries in the file's last lines; a torn last line (no newline) is cut off."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            chunk = min(size, 1 << 16)
            while True:  # doubles each time: bounded by MAX_TAIL_BYTES
                f.seek(size - chunk)
                tail = f.read(chunk)
                if tail.count(b"\n") > JSONL_RECENT_IDS or chunk >= min(size, MAX_TAIL_BYTES):
                    break
                chunk = min(size, chunk * 2, MAX_TAIL_BYTES)
            if tail and not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n") + 1
                log.warning("sink %s: %s ends in a partly written line; removing it (it will be rewritten)",
                            self.name, self.path)
                f.truncate(size - len(tail) + cut)
                os.fsync(f.fileno())
                tail = tail[:cut]
        keys = []
        for line in tail.split(b"\n")[-JSONL_RECENT_IDS - 1:]:
            try:
                record = json.loads(line)
                keys.append((int(record["delivery_id"]), str(record["packet_id"])))
            except (ValueError, TypeError, KeyError):
                continue  # the first line of the chunk may be cut; foreign lines are not ours
        return keys

    async def deliver(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        lines: list[bytes] = []
        written: list[OutboxItem] = []
        for item in items:
            if (item.id, item.packet_id) in self._recent_set:
                outcomes.append(Outcome(item.id))  # already in the file: a crash came before done
                continue
            try:
                lines.append(_encode(item) + b"\n")
                written.append(item)
            except (TypeError, ValueError) as exc:
                outcomes.append(Outcome(item.id, f"payload is not JSON: {exc}", permanent=True))
        if not written:
            return outcomes
        try:
            await asyncio.to_thread(self._append, b"".join(lines))
        except OSError as exc:
            return outcomes + [Outcome(written[0].id, f"cannot write {self.path}: {exc.strerror or exc}")]
        for item in written:
            self._remember((item.id, item.packet_id))
        return outcomes + [Outcome(item.id) for item in written]

    def _append(self, data: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:  # os.write returns > 0 or raises, so this ends
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                try:  # leave no partial batch: it is retried whole
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        if created:  # make the new directory entry durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class WebhookSink(Sink):
    """POSTs each item as one JSON object (one per request, so a status is about one item).

    2xx is done. 408, 429, 5xx, time-outs and connection errors are retried with backoff
    (Retry-After is honoured up to the sink's maximum backoff); any other status, including
    redirects (not followed), is permanent. ``Idempotency-Key: SINK:PACKET_ID`` (a packet
    goes to a sink once) lets receivers that support it drop repeats without parsing the body.
    """

    def __init__(self, name: str, url: str, headers: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, *, ssl_context: ssl.SSLContext | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_backoff: float = DEFAULT_MAX_BACKOFF) -> None:
        super().__init__(name, max_attempts=max_attempts, max_backoff=max_backoff)
        self.url = url
        self.headers = {"Content-Type": "application/json", "User-Agent": "intelhub-node", **(headers or {})}
        self.timeout = timeout
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._client()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        session = self._client()
        outcomes: list[Outcome] = []
        for item in items:
            try:
                body = _encode(item)
            except (TypeError, ValueError) as exc:
                outcomes.append(Outcome(item.id, f"payload is not JSON: {exc}", permanent=True))
                continue
            outcome = await self._post(session, item.id, f"{self.name}:{item.packet_id}", body)
            outcomes.append(outcome)
            if outcome.error is not None and not outcome.permanent:
                break  # the receiver is unwell: don't hammer it with the rest
        return outcomes

    async def _post(self, session: aiohttp.ClientSession, item_id: int, key: str, body: bytes) -> Outcome:
        try:
            async with session.post(self.url, data=body, allow_redirects=False, ssl=self._ssl,
                                          headers={"Idempotency-Key": key}) as resp:
                if 200 <= resp.status < 300:
                    return Outcome(item_id)
                text = (await resp.content.read(200)).decode("utf-8", "replace").strip()
                error = f"HTTP {resp.status} {resp.reason or ''}".rstrip() + (f": {text}" if text else "")
                if resp.status in (408, 429) or resp.status >= 500:
                    return Outcome(item_id, error, retry_after=_retry_after(resp.headers.get("Retry-After")))
                return Outcome(item_id, error, permanent=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Outcome(item_id, f"{type(exc).__name__}: {exc}".rstrip(": "))


def _retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form: an HTTP date would need our clock to agree with theirs.
    return float(value) if value is not None and value.strip().isdigit() else None


class SinkRunner:
    """Drains the outbox into the sinks: one worker per sink, so a slow one delays no other.

    ``run()`` works until ``stop()`` or cancellation; ``kick()`` wakes idle workers when the
    store queued something; ``run_once()`` does one batch per sink (tests, a CLI flush).
    After a temporary failure a worker waits out the backoff even if kicked.
    """

    def __init__(self, store: Outbox, sinks: Mapping[str, Sink], *, batch: int = DEFAULT_BATCH,
                 poll_interval: float = POLL_INTERVAL, base_backoff: float = BASE_BACKOFF,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        for key, sink in sinks.items():
            if key != sink.name:
                raise ValueError(f"sink registered as {key!r} is named {sink.name!r}")
        if not 1 <= batch <= MAX_BATCH:  # a JSONL sink recovers the last MAX_BATCH lines
            raise ValueError(f"batch must be 1-{MAX_BATCH}")
        self.store, self.sinks = store, dict(sinks)
        self.batch, self.poll_interval, self.base_backoff = batch, poll_interval, base_backoff
        self._clock, self._rng = clock, rng or random.Random()
        self._wake = {name: asyncio.Event() for name in self.sinks}
        self._stop = asyncio.Event()
        self._started: set[str] = set()

    def kick(self, sink: str | None = None) -> None:
        """New items were queued (for ``sink``, or for any): wake idle workers now.

        Call it from the event loop's thread, after the store committed the packet."""
        for name, event in self._wake.items():
            if sink is None or sink == name:
                event.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for sink in self.sinks.values():
                    group.create_task(self._worker(sink), name=f"sink-{sink.name}")
        finally:
            await self.close()

    async def run_once(self, now: int | None = None) -> int:
        """One batch per sink; returns how many items got an outcome."""
        handled = 0
        for sink in self.sinks.values():
            if await self._ensure_started(sink):
                handled += (await self._drain(sink, now))[0]
        return handled

    async def close(self) -> None:
        for name in sorted(self._started):
            try:
                await self.sinks[name].close()
            except Exception:
                log.exception("sink %s: error while closing", name)
        self._started.clear()

    async def _ensure_started(self, sink: Sink) -> bool:
        if sink.name in self._started:
            return True
        try:
            await sink.start()
        except Exception:
            log.exception("sink %s: cannot start; will try again", sink.name)
            return False
        self._started.add(sink.name)
        return True

    async def _worker(self, sink: Sink) -> None:
        while not self._stop.is_set():  # one batch per turn; runs until stop()
            self._wake[sink.name].clear()
            if not await self._ensure_started(sink):
                await self._sleep(self.poll_interval, None)
                continue
            try:
                handled, pause = await self._drain(sink)
            except Exception:  # the store failed (disk full?): keep the worker alive
                log.exception("sink %s: cannot read or update the outbox", sink.name)
                handled, pause = 0, self.poll_interval
            if pause:
                await self._sleep(pause, None)
            elif handled < self.batch:
                await self._sleep(self.poll_interval, self._wake[sink.name])

    async def _sleep(self, seconds: float, wake: asyncio.Event | None) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _drain(self, sink: Sink, now: int | None = None) -> tuple[int, float]:
        """Deliver one batch and record the outcomes; returns (handled, seconds to back off)."""
        now = int(self._clock()) if now is None else now
        # The store commits with fsync; in a thread, so the event loop keeps serving meanwhile.
        items = list(await asyncio.to_thread(self.store.outbox_pending, sink.name, self.batch, now))
        if not items:
            return 0, 0.0
        try:
            outcomes = await sink.deliver(items)
        except Exception as exc:  # a sink bug must not kill the worker; retry the head item
            log.exception("sink %s: delivery raised", sink.name)
            outcomes = [Outcome(items[0].id, f"{type(exc).__name__}: {exc}")]
        by_id = {item.id: item for item in items}
        done = [o.item_id for o in outcomes if o.error is None]
        if done:
            await asyncio.to_thread(self.store.outbox_done, done)
        pause = 0.0
        for o in outcomes:
            if o.error is None:
                continue
            item, error = by_id[o.item_id], o.error[:MAX_ERROR_CHARS]
            attempts = item.attempts + 1
            if o.permanent or attempts >= sink.max_attempts:
                why = "permanent failure" if o.permanent else f"gave up after {attempts} attempts"
                await asyncio.to_thread(self.store.outbox_failed, item.id, f"{why}: {error}", PARKED_RETRY_AT)
                log.error("sink %s: delivery %d (packet %s) parked, %s: %s", sink.name, item.id,
                          item.packet_id, why, error)
                continue
            delay = self._backoff(attempts, sink.max_backoff, o.retry_after)
            retry_at = now + math.ceil(delay)
            await asyncio.to_thread(self.store.outbox_failed, item.id, error, retry_at)
            log.warning("sink %s: delivery %d (packet %s) attempt %d failed, retry in %.1f s: %s",
                        sink.name, item.id, item.packet_id, attempts, delay, error)
            # Come back when this item is due (retry_at is whole seconds), so it goes out
            # before the items queued after it.
            pause = max(pause, delay, min(retry_at - self._clock(), sink.max_backoff + 1))
        return len(outcomes), pause

    def _backoff(self, attempts: int, cap: float, retry_after: float | None) -> float:
        # Exponential with "equal jitter": never sooner than half the step, so retries from
        # many nodes after one outage spread out instead of arriving together.
        step = min(cap, self.base_backoff * 2 ** min(attempts - 1, 30))
        delay = step / 2 + self._rng.uniform(0, step / 2)
        return min(cap, max(delay, retry_after or 0.0))


def sinks_from_config(doc: dict[str, Any], base: Path) -> dict[str, Sink]:
    """Sinks from the ``[sinks.NAME]`` tables of a parsed node config (see docs/node.md)."""
    section = doc.get("sinks", {})
    if not isinstance(section, dict):
        raise ConfigError("sinks: expected [sinks.NAME] tables")
    return {name: _sink(name, table, base) for name, table in section.items()}


_FIELDS: Final = {"jsonl": {"path"}, "webhook": {"url", "headers", "timeout", "allow_insecure", "ca_file"}}


def _sink(name: str, table: object, base: Path) -> Sink:
    where = f"sinks.{name}"
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f'{where}: a sink name is 1-64 letters, digits, "_", "-" or "."')
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ConfigError(f'{where}: type: must be "jsonl" or "webhook", not {kind!r}')
    allowed = _FIELDS[kind] | {"type", "description", "max_attempts", "max_backoff"}
    for key in table:
        if key not in allowed:
            raise ConfigError(f'{where}: "{key}" is not a field of a {kind} sink '
                              f'(fields: {", ".join(sorted(allowed))})')

    def get(key: str, typ: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = table.get(key, default)
        if isinstance(value, bool) is not (typ is bool) or not isinstance(value, typ):
            raise ConfigError(f"{where}: {key}: must be {what}, not {value!r}")
        return value

    def path(key: str) -> Path:
        return config_path(base, get(key, str, "", "a file path"), f"{where}: {key}")

    get("description", str, "", "a string")
    max_attempts: int = get("max_attempts", int, DEFAULT_MAX_ATTEMPTS, "a whole number")
    max_backoff = float(get("max_backoff", (int, float), DEFAULT_MAX_BACKOFF, "seconds"))
    if not 1 <= max_attempts <= 1000:
        raise ConfigError(f"{where}: max_attempts: must be 1-1000")
    if not 1 <= max_backoff <= 86400:
        raise ConfigError(f"{where}: max_backoff: must be 1-86400 seconds")
    if kind == "jsonl":
        file = path("path")
        if "path" not in table or exists(file, f"{where}: path", kind="dir") \
                or not exists(file.parent, f"{where}: path", kind="dir"):
            raise ConfigError(f"{where}: path: {file} must be a file in an existing directory")
        return JsonlSink(name, file, max_attempts=max_attempts, max_backoff=max_backoff)
    url = get("url", str, "", "an http(s) URL")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"{where}: url: {url[:80]!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"{where}: url: {url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: url: put credentials in headers (e.g. Authorization), not in the URL")
    insecure = get("allow_insecure", bool, False, "true or false")
    if parts.scheme == "http" and not insecure and not _loopback(hostname):
        raise ConfigError(f"{where}: url: plain http is only allowed to loopback; use https, "
                          "or set allow_insecure = true on a network you trust")
    headers = get("headers", dict, {}, "a table of header names to strings")
    for key, value in headers.items():
        if not _TOKEN_RE.fullmatch(key) or not isinstance(value, str) or any(ord(c) < 32 for c in value):
            raise ConfigError(f"{where}: headers.{key}: must be a header name with a one-line string value")
    timeout = float(get("timeout", (int, float), DEFAULT_TIMEOUT, "seconds"))
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"{where}: timeout: must be above 0 and at most {MAX_TIMEOUT:.0f} seconds")
    context = None
    if "ca_file" in table:
        try:
            context = ssl.create_default_context(cafile=str(path("ca_file")))
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}: ca_file: cannot load {path('ca_file')} ({exc})") from None
    return WebhookSink(name, url, headers, timeout, ssl_context=context, max_attempts=max_attempts,
                       max_backoff=max_backoff)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
