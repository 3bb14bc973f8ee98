"""Logging set-up: one human sentence per decision, or JSON lines for machines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["text", "json"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def current() -> tuple[LogFormat, str]:
    """The format and level :func:`setup` set (for a child process to log alike)."""
    root = logging.getLogger()
    json_out = any(isinstance(h.formatter, _JsonFormatter) for h in root.handlers)
    return ("json" if json_out else "text"), logging.getLevelName(root.level).lower()


def setup(fmt: LogFormat = "text", level: str = "info") -> None:
    """Send logs to stderr (data goes to stdout)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and asyncio chatter is not a decision of ours.
    for noisy in ("grpc", "asyncio", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
