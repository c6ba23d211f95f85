"""Process-wide logging to stderr, as text or one JSON object per line.

Called once from the command-line entrypoint; library code only uses ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra={...}`` fields are carried as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def parse_log_level(text: str) -> str:
    """A level name in any case (``debug``, ``INFO``), upper-cased; ValueError naming the valid ones otherwise."""
    name = text.strip().upper()
    if name not in logging.getLevelNamesMapping():
        valid = ", ".join(sorted(logging.getLevelNamesMapping()))
        raise ValueError(f"unknown logging level {text!r} (one of {valid})")
    return name


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    level_name = parse_log_level(level)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    # kazoo logs every connection attempt at INFO; keep it to warnings unless debugging.
    if root.level > logging.DEBUG:
        logging.getLogger("kazoo").setLevel(logging.WARNING)
