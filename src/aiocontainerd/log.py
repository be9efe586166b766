"""Structured logging: one line per event, ``logfmt`` (containerd's text form) or JSON.

Use ``log.info("msg", extra={"fields": {"namespace": ns}})`` or the helper
:func:`event`. Levels: trace (mapped to debug), debug, info, warn, error, fatal.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
FORMATS = ("text", "json")
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
          logging.ERROR: "error", logging.CRITICAL: "fatal"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
            timespec="microseconds").replace("+00:00", "Z"),
        "level": _NAMES.get(record.levelno, record.levelname.lower()),
        "msg": record.getMessage(),
    }
    out.update(getattr(record, "fields", {}) or {})
    if record.exc_info:
        out["error"] = logging.Formatter().formatException(record.exc_info)
    return out


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    """``time=… level=info msg="…" key=value`` — the form containerd logs in."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the text form."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the ``aiocontainerd`` logger tree to stderr (done once by the CLI, not on import)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("aiocontainerd")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
    grpclib_log = logging.getLogger("grpclib")
    grpclib_log.handlers[:] = [handler]
    grpclib_log.propagate = False
    grpclib_log.setLevel(max(LEVELS[level], logging.WARNING))


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` at ``level`` with structured ``fields``."""
    logger.log(level, msg, extra={"fields": fields})
