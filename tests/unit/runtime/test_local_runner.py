"""The local runner: the agent contract as a subprocess, with a fake agent."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from bakeline.checkpoints.manifest import verify_checkpoint
from bakeline.contract import parse_termination
from bakeline.runtime.local import (
    LocalRunner,
    ModelSourceError,
    StageInvocation,
    agent_environment,
    job_document,
)

FAKE_AGENT = Path(__file__).resolve().parents[1] / "cli" / "fake_agent.py"


@pytest.fixture
def runner(tmp_path: Path) -> LocalRunner:
    env = {"BAKELINE_FAKE_AGENT_STATE": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    return LocalRunner([sys.executable, str(FAKE_AGENT)], env=env, poll_seconds=0.05)


def _invocation(
    tmp_path: Path,
    agent: str = "BakingCoordinator",
    metrics: dict[str, float] | None = None,
    **fake: object,
) -> StageInvocation:
    return StageInvocation(
        agent=agent,
        stage="import",
        params={"fake": fake, "fakeMetrics": metrics or {}},
        job={"name": "j", "model": {"sha256": "0" * 64}},
        input_dir=None,
        output_dir=tmp_path / "out",
        termination_log=tmp_path / "termination-log",
        log_path=tmp_path / "logs" / "import.log",
        timeout_seconds=float(str(fake.pop("timeout", 30))) if "timeout" in fake else 30.0,
    )


def test_a_successful_stage_leaves_a_checkpoint_and_a_result(
    runner: LocalRunner, tmp_path: Path
) -> None:
    run = runner.run(_invocation(tmp_path, metrics={"speedup": 2.5}))
    assert run.exit_code == 0 and not run.timed_out
    assert run.result is not None and run.result.metrics["speedup"] == 2.5
    manifest = verify_checkpoint(tmp_path / "out")
    assert run.result.artifact_sha256 == manifest.artifact_sha256
    assert run.message == "done"


def test_the_argv_follows_the_contract(runner: LocalRunner, tmp_path: Path) -> None:
    invocation = _invocation(tmp_path)
    argv = runner.argv(invocation)
    assert argv[2] == "BakingCoordinator" and "--input" not in argv
    with_input = StageInvocation(**{**invocation.__dict__, "input_dir": tmp_path / "in"})
    argv = runner.argv(with_input)
    assert argv[2:5] == ["BakingCoordinator", "--input", str(tmp_path / "in")]
    for flag in ("--output", "--params", "--job", "--stage", "--termination-log"):
        assert flag in argv
    assert json.loads(argv[argv.index("--job") + 1])["name"] == "j"


def test_exit_codes_and_messages_come_back(runner: LocalRunner, tmp_path: Path) -> None:
    run = runner.run(_invocation(tmp_path, exit=3, message="cosine 0.9 < 0.98"))
    assert run.exit_code == 3 and run.message == "cosine 0.9 < 0.98"


def test_a_stage_past_its_timeout_is_killed(runner: LocalRunner, tmp_path: Path) -> None:
    started = time.monotonic()
    invocation = StageInvocation(
        **{**_invocation(tmp_path, sleep=30).__dict__, "timeout_seconds": 0.5}
    )
    run = runner.run(invocation)
    assert run.timed_out and run.exit_code is None
    assert time.monotonic() - started < 10
    assert "timed out" in run.message


def test_progress_ticks_while_the_agent_runs(runner: LocalRunner, tmp_path: Path) -> None:
    ticks: list[float] = []
    runner.run(_invocation(tmp_path, sleep=0.4), on_tick=ticks.append)
    assert ticks and ticks == sorted(ticks)


def test_the_agent_version_comes_from_the_agent(runner: LocalRunner) -> None:
    assert runner.agent_version() == "1.0"


def test_a_garbled_termination_log_is_no_result() -> None:
    assert parse_termination("not json") is None
    assert parse_termination("[1]") is None
    parsed = parse_termination('{"metrics": {"a": 1, "b": "x", "c": true}, "sizeBytes": 5}')
    assert parsed is not None and parsed.metrics == {"a": 1.0} and parsed.size_bytes == 5


def test_job_documents_resolve_local_model_files(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"tensor bytes")
    digest = hashlib.sha256(b"tensor bytes").hexdigest()
    doc = job_document(
        "j",
        {"source": {"url": {"url": model.as_uri(), "sha256": digest}}, "format": "safetensors"},
        {"device": "cpu"},
        {"metric": "cosine"},
        tmp_path,
    )
    assert doc["model"]["localPath"] == str(model) and doc["model"]["sha256"] == digest
    assert doc["target"] == {"device": "cpu"} and doc["name"] == "j"
    builtin = job_document("j", {"source": {"builtin": "digits-cnn"}}, {}, {}, tmp_path)
    assert "localPath" not in builtin["model"]
    with pytest.raises(ModelSourceError, match="expected"):
        job_document(
            "j", {"source": {"url": {"url": model.as_uri(), "sha256": "f" * 64}}}, {}, {}, tmp_path
        )
    with pytest.raises(ModelSourceError, match="not a model source `bakeline run` reads"):
        job_document(
            "j", {"source": {"url": {"url": "ftp://x/m", "sha256": digest}}}, {}, {}, tmp_path
        )
    with pytest.raises(ModelSourceError, match="not available"):
        job_document("j", {"source": {"pvc": {"claimName": "c", "path": "m"}}}, {}, {}, tmp_path)


def test_agents_inherit_no_credentials_from_bakeline_runs_environment(tmp_path: Path) -> None:
    """The import stage opens outside files: what it could send anywhere stays behind."""
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "BAKELINE_CHAOS_SEED": "9",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "KUBECONFIG": "/root/.kube/config",
        "GITHUB_TOKEN": "ghp_x",
        "HF_TOKEN": "hf_x",
        "HTTPS_PROXY": "http://user:pass@proxy:3128",
        "GOOGLE_APPLICATION_CREDENTIALS": "/root/key.json",
    }
    env = agent_environment(parent, home=str(tmp_path))
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "BAKELINE_CHAOS_SEED": "9",
        "HOME": str(tmp_path),
    }


def test_a_runner_without_an_explicit_env_filters_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("FAKE_AGENT_STATE", str(tmp_path / "state"))
    runner = LocalRunner([sys.executable, "-c", "import os; print(dict(os.environ))"])
    env = runner._environment()
    assert "AWS_SECRET_ACCESS_KEY" not in env and "FAKE_AGENT_STATE" not in env
    assert env["HOME"] != str(Path.home()) and Path(env["HOME"]).is_dir()
    assert env["PATH"]
