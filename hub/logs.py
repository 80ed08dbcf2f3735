"""Structured logs for the hub and the nodes: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """Never any content: the hub has none, and nodes log ids and reasons only."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("intelhub")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's own reports (a malformed request from anyone, say) in the same one-line JSON, not as
    # bare tracebacks; warnings and worse only, so that a peer cannot fill the log with its mistakes.
    web = logging.getLogger("aiohttp")
    web.handlers[:] = [handler]
    web.setLevel(max(logging.WARNING, root.level))
    web.propagate = False
