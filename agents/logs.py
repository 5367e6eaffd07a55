"""Structured logs: one JSON object per line on stderr, which is what `kubectl logs` collects."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any

_context: dict[str, Any] = {}


def bind(**fields: Any) -> None:
    """Add fields (agent, stage, job) to every later log line of this process."""
    _context.update(fields)


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **_context, **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


class _JsonHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log(record.getMessage().strip(), level=record.levelname.lower(), logger=record.name)


def capture_library_logs() -> None:
    """Route the `logging` records of libraries (onnxruntime's quantizer) into JSON lines."""
    root = logging.getLogger()
    root.handlers[:] = [_JsonHandler()]
    root.setLevel(logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)  # deprecation chatter of torch.onnx / jit
    warnings.simplefilter("ignore", DeprecationWarning)
