"""Exit codes of the agent contract and exponential backoff between attempts."""

from __future__ import annotations

from enum import StrEnum

from bakeline.contract import EXIT_GATE_FAILED, EXIT_INVALID_INPUT, EXIT_OK


class AttemptOutcome(StrEnum):
    SUCCEEDED = "Succeeded"
    INVALID_INPUT = "InvalidInput"  # the job or params are wrong: retrying cannot help
    GATE_FAILED = "GateFailed"  # ran fine but the result is not good enough: roll back / fall back
    TRANSIENT = "Transient"  # crash, OOM, timeout: the same attempt may work next time


def classify_exit(code: int | None, timed_out: bool = False) -> AttemptOutcome:
    """Map an agent's exit code onto what the engine does with it (DESIGN §3.3)."""
    if timed_out or code is None:
        return AttemptOutcome.TRANSIENT
    if code == EXIT_OK:
        return AttemptOutcome.SUCCEEDED
    if code == EXIT_INVALID_INPUT:
        return AttemptOutcome.INVALID_INPUT
    if code == EXIT_GATE_FAILED:
        return AttemptOutcome.GATE_FAILED
    return AttemptOutcome.TRANSIENT


def backoff_seconds(attempt: int, duration: float, factor: float, maximum: float | None) -> float:
    """Delay before retry number `attempt` (1 = the first retry): duration * factor^(attempt-1).

    Capped at `maximum`; computed in a way that cannot overflow for large attempt counts.
    """
    if attempt < 1:
        return 0.0
    delay = max(duration, 0.0)
    for _ in range(attempt - 1):
        delay *= max(factor, 1.0)
        if maximum is not None and delay >= maximum:
            break
        if delay > 1e12:
            break
    return min(delay, maximum) if maximum is not None else delay
