"""Structured logs: one JSON object per line on stderr, which is what `kubectl logs` collects."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

_context: dict[str, Any] = {}


def bind(**fields: Any) -> None:
    """Add fields (agent, stage, job) to every later log line of this process."""
    _context.update(fields)


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **_context, **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()
