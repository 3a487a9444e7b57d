"""Structured logs: one JSON object per line on stderr, with the standard library only.

What goes in: time (UTC, ISO 8601), level, logger, the message, the process id, and
the fields a caller passes as ``extra={"fields": {...}}`` (ids, counts, outcomes).
What stays out: personal data. Messages in this code base name records by id, never
by name or phone number; an exception is logged by its type and its stack frames,
never by its text (a driver's error text can quote the row it failed on).

>>> import logging
>>> record = logging.LogRecord("adapter.dispatch", logging.INFO, __file__, 1,
...                            "sent %d notifications", (3,), None)
>>> record.fields = {"worker": "w1"}
>>> import json; out = json.loads(JsonFormatter().format(record))
>>> out["msg"], out["level"], out["logger"], out["worker"]
('sent 3 notifications', 'info', 'adapter.dispatch', 'w1')
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

_RESERVED = {"ts", "level", "logger", "msg", "pid"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process or os.getpid(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            out["exc_type"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
            # Frames only: where it failed, not the exception's text.
            out["stack"] = "".join(traceback.format_tb(tb))[-4000:]
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "INFO", *, json_logs: bool = True) -> None:
    """Replace the root logger's handlers with one stderr handler; idempotent.
    Uvicorn's and Celery's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "celery", "kombu", "amqp"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Access logs carry URLs, and URLs carry patient ids: off.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
