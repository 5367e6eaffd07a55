"""`bakeline stage` on Volume lanes: a pod succeeds only when its checkpoint verifies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bakeline.checkpoints.manifest import Manifest, file_entry, sha256_file, write_manifest
from bakeline.stagepod.wrapper import run_stage

# An agent stand-in: writes a one-file checkpoint and a termination message, as told by argv.
AGENT = """\
import json, os, sys
from pathlib import Path
out = Path(os.environ["BAKELINE_OUTPUT"])
(out / "model.onnx").write_bytes(sys.argv[1].encode())
Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"]).write_text(
    json.dumps({"status": "succeeded", "artifactSha256": sys.argv[2]})
)
sys.exit(int(sys.argv[3]))
"""


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    output = tmp_path / "quantize-1"
    output.mkdir()
    monkeypatch.setenv("BAKELINE_OUTPUT", str(output))
    monkeypatch.setenv("BAKELINE_STAGE", "quantize")
    monkeypatch.setenv("BAKELINE_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    monkeypatch.delenv("BAKELINE_STORE_PREFIX", raising=False)
    (tmp_path / "agent.py").write_text(AGENT)
    return tmp_path


def _manifest_for(output: Path, claimed: bytes) -> None:
    """The manifest the agent would have written for `claimed` bytes."""
    (output / "model.onnx").write_bytes(claimed)
    entry = file_entry(output, "model.onnx", "model")
    write_manifest(
        output,
        Manifest(model_name="m", artifact="model.onnx", format="onnx", files=[entry]),
    )


def _stage(pod: Path, written: str, reported: str, code: int = 0) -> int:
    return run_stage([sys.executable, str(pod / "agent.py"), written, reported, str(code)])


def _message(pod: Path) -> dict[str, object]:
    message: dict[str, object] = json.loads((pod / "termination-log").read_text())
    return message


def test_a_checkpoint_that_verifies_passes_through(pod: Path) -> None:
    output = pod / "quantize-1"
    _manifest_for(output, b"weights")
    assert _stage(pod, "weights", sha256_file(output / "model.onnx")) == 0
    assert _message(pod)["status"] == "succeeded"


def test_bytes_unlike_the_manifest_fail_the_attempt_as_transient(pod: Path) -> None:
    output = pod / "quantize-1"
    _manifest_for(output, b"weights")
    digest = sha256_file(output / "model.onnx")
    assert _stage(pod, "torn write", digest) == 1
    message = _message(pod)
    assert message["status"] == "failed"
    assert "does not verify" in str(message["message"])


def test_a_reported_sha256_unlike_the_checkpoint_fails_the_attempt(pod: Path) -> None:
    _manifest_for(pod / "quantize-1", b"weights")
    assert _stage(pod, "weights", "0" * 64) == 1
    assert "reported artifact sha256 " + "0" * 64 in str(_message(pod)["message"])


def test_the_agents_own_failure_is_passed_on_untouched(pod: Path) -> None:
    _manifest_for(pod / "quantize-1", b"weights")
    assert _stage(pod, "other", "x", code=3) == 3
    assert _message(pod)["status"] == "succeeded"  # the agent's own words, not replaced
