"""Which of a finished job's checkpoints `spec.checkpoints.retain` keeps.

A job keeps every checkpoint while it runs (a rollback may need any of them); once it has
finished, the `retain` newest stay, and so does every checkpoint that is still needed (the
result's, a running stage's input), whatever `retain` says.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordedCheckpoint:
    id: str
    created_at: float  # unix seconds (the record's creationTimestamp)
    rank: int  # the stage's place in the workflow's order: ties within a second go by it
    attempt: int


def checkpoints_to_prune(
    recorded: Sequence[RecordedCheckpoint], retain: int, needed: Collection[str]
) -> list[str]:
    """The ids to delete, oldest first: all but the `retain` newest and the `needed`."""
    newest_first = sorted(
        recorded, key=lambda c: (c.created_at, c.rank, c.attempt, c.id), reverse=True
    )
    kept = {c.id for c in newest_first[: max(retain, 0)]} | set(needed)
    return [c.id for c in reversed(newest_first) if c.id not in kept]
