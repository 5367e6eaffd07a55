"""Inputs restored without the original model (ConfigMap lanes): agents that never open it carry
it forward by reference; one that does fails with a message that says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.contract import InvalidInput
from bakeline.agents.pipeline import Chain, StageRunner
from bakeline.agents.reads import ORIGINAL_UNREAD, roles_left_in_store
from bakeline.agents.stages import REGISTRY
from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    read_carried,
    read_manifest,
    verify_checkpoint,
    write_carried,
)


def _restored_without_original(source: Path, target: Path) -> list[str]:
    """`source` as ConfigMapStore.restore(..., leave_roles={"original"}) leaves it."""
    shutil.copytree(source, target)
    left = [entry.path for entry in read_manifest(target).files if entry.role == "original"]
    for relative in left:
        (target / relative).unlink()
    write_carried(target, left)
    return left


def test_the_table_names_registered_agents_and_not_those_that_time_against_the_original() -> None:
    assert set(REGISTRY) >= ORIGINAL_UNREAD
    assert {"InferenceAccelerator", "PerformanceProfiler", "BakingCoordinator"}.isdisjoint(
        ORIGINAL_UNREAD
    )
    for spelling in ("QualityValidator", "quality-validator", "qualityvalidator"):
        assert roles_left_in_store(spelling) == {"original"}
    for other in ("InferenceAccelerator", "performance-profiler", "MyAgent", "", None):
        assert roles_left_in_store(other) == frozenset()


def test_an_agent_that_never_opens_the_original_carries_it_by_reference(
    digits_chain: Chain, run_stage: StageRunner, tmp_path: Path
) -> None:
    source = digits_chain.input_of("QualityValidator")
    left = _restored_without_original(source, tmp_path / "in")
    assert left == ["original.pt2"]
    assert open_input(tmp_path / "in").carried == {"original.pt2"}  # verifies what is there

    result = run_stage("QualityValidator", tmp_path / "out", tmp_path / "in")  # raises if failed
    out = tmp_path / "out"
    assert result.outcome.metrics["passed"] == 1.0
    entry = result.manifest.file("original.pt2")
    assert (entry.role, entry.sha256) == ("original", read_manifest(source).file(entry.path).sha256)
    assert not (out / "original.pt2").exists() and read_carried(out) == {"original.pt2"}
    with pytest.raises(ChecksumMismatchError, match=r"original\.pt2: listed in the manifest"):
        verify_checkpoint(out)  # Volume lanes never accept a missing file
    verify_checkpoint(out, carried_ok=True)

    # Full inputs still give full outputs, with no marker.
    run_stage("QualityValidator", tmp_path / "full", source)
    assert (tmp_path / "full" / "original.pt2").is_file() and not read_carried(tmp_path / "full")


def test_an_agent_that_times_against_the_original_refuses_an_input_without_it(
    digits_chain: Chain, tmp_path: Path
) -> None:
    _restored_without_original(digits_chain.input_of("InferenceAccelerator"), tmp_path / "in")
    with pytest.raises(InvalidInput, match=r"original\.pt2 was left in the checkpoint store"):
        open_input(tmp_path / "in").original()


def test_a_missing_file_the_marker_does_not_name_is_still_refused(
    digits_chain: Chain, tmp_path: Path
) -> None:
    _restored_without_original(digits_chain.input_of("QualityValidator"), tmp_path / "in")
    write_carried(tmp_path / "in", ["calibration.safetensors"])
    with pytest.raises(InvalidInput, match=r"original\.pt2: listed in the manifest but missing"):
        open_input(tmp_path / "in")
