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


_HANDLER = _JsonHandler()


def adopt_library_loggers() -> None:
    """Replace the handlers libraries installed on their own loggers (torch does, lazily, per
    submodule: call again after importing one) with the JSON handler."""
    if not any(h is _HANDLER for h in logging.getLogger().handlers):
        return  # not running as the CLI: leave the host's logging alone
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers[:] = [_HANDLER]
            logger.propagate = False


def capture_library_logs() -> None:
    """Route library output into JSON lines: `logging` records (onnxruntime's quantizer, torch,
    which installs its own handlers), and Python warnings; quieten ONNX Runtime's C++ logger."""
    root = logging.getLogger()
    root.handlers[:] = [_HANDLER]
    root.setLevel(logging.WARNING)
    adopt_library_loggers()
    logging.captureWarnings(True)
    warnings.simplefilter("ignore", FutureWarning)  # deprecation chatter of torch.onnx / jit
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover - a dependency
        pass
