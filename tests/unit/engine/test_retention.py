"""spec.checkpoints.retain: the newest stay, and what is still needed is never pruned."""

from __future__ import annotations

from bakeline.engine.retention import RecordedCheckpoint, checkpoints_to_prune

RECORDED = [
    RecordedCheckpoint("import-1", 100.0, 0, 1),
    RecordedCheckpoint("graph-1", 100.0, 1, 1),  # same second: the later stage is newer
    RecordedCheckpoint("quantize-1", 101.0, 2, 1),
    RecordedCheckpoint("quantize-2", 103.0, 2, 2),  # a retry, after a rollback
    RecordedCheckpoint("package-1", 104.0, 8, 1),
]


def test_the_newest_stay_and_the_oldest_go_first() -> None:
    assert checkpoints_to_prune(RECORDED, 2, ()) == ["import-1", "graph-1", "quantize-1"]
    assert checkpoints_to_prune(RECORDED, 5, ()) == []
    assert checkpoints_to_prune(RECORDED, 0, ()) == [c.id for c in RECORDED]


def test_a_needed_checkpoint_stays_whatever_retain_says() -> None:
    assert checkpoints_to_prune(RECORDED, 0, {"quantize-2"}) == [
        "import-1",
        "graph-1",
        "quantize-1",
        "package-1",
    ]
    assert "import-1" not in checkpoints_to_prune(RECORDED, 1, {"import-1"})
