"""Kubernetes timestamps (RFC 3339, UTC, whole seconds) <-> unix seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, overload

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@overload
def timestamp(value: float) -> str: ...
@overload
def timestamp(value: None) -> None: ...
def timestamp(value: float | None) -> str | None:
    """Unix seconds as a Kubernetes timestamp; None stays None."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime(_FORMAT)


def now_timestamp() -> str:
    return timestamp(time.time())


def epoch(value: Any) -> float | None:
    """A Kubernetes timestamp (string or datetime) as unix seconds; empty values give None."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
