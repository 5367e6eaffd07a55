"""`bakeline run` end to end on the unit layer: the real engine, store and runner, a fake agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bakeline.cli.main import main

FAKE_AGENT = Path(__file__).resolve().parent / "fake_agent.py"

JOB = """\
apiVersion: bakeline.io/v1alpha1
kind: BakingJob
metadata:
  name: digits
spec:
  model:
    source:
      builtin: digits-cnn
  workflowRef: {workflow}
  quality:
    metric: accuracy
    threshold: 0.97
"""


def _workflow(stages: str, name: str = "fake") -> str:
    return (
        "---\napiVersion: bakeline.io/v1alpha1\nkind: Workflow\n"
        f"metadata:\n  name: {name}\nspec:\n  maxParallelStages: 1\n  stages:\n"
        + textwrap.indent(textwrap.dedent(stages), "    ")
    )


CHAIN = """\
- name: import
  agent: BakingCoordinator
- name: quantize
  agent: ModelOptimizer
  dependsOn: [import]
  params: {accuracy: 0.5}
  fallbacks: [{accuracy: 0.8}, {accuracy: 0.99}]
- name: validate
  agent: QualityValidator
  dependsOn: [quantize]
  params: {fake: {accuracyFromLineage: true}}
  gate: {metric: quality}
  onFailure: Rollback
- name: package
  agent: DeploymentPreparer
  dependsOn: [validate]
  params:
    fakeMetrics: {b1.speedup: 3.5, b32.speedup: 1.5, b1.p50Ms: 0.1, b1.originalP50Ms: 0.35}
"""


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "agent-state"
    monkeypatch.setenv("BAKELINE_AGENT_COMMAND", f"{sys.executable} {FAKE_AGENT}")
    monkeypatch.setenv("BAKELINE_FAKE_AGENT_STATE", str(state))
    return state


def _job_file(tmp_path: Path, workflow: str | None = None, stages: str = CHAIN) -> Path:
    path = tmp_path / "job.yaml"
    text = JOB.format(workflow=workflow or "default")
    if workflow:
        text += _workflow(stages, workflow)
    path.write_text(text)
    return path


def _run(*args: str | Path) -> int:
    return main(["run", *(str(a) for a in args)])


def _report(workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report


def _phases(report: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["phase"] for s in report["stages"]}


def _calls(state: Path) -> list[str]:
    log = state / "calls.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("bakeline 0.")


def test_the_default_workflow_runs_then_reruns_from_the_cache(
    tmp_path: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, workdir = _job_file(tmp_path), tmp_path / "wd"
    assert _run(job, "--workdir", workdir) == 0
    out, err = capsys.readouterr()
    report = _report(workdir)
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9"
    assert set(_phases(report).values()) == {"Succeeded"}
    assert [s["name"] for s in report["stages"]][:3] == ["import", "graph", "quantize"]
    result = report["result"]
    assert Path(result["artifact"]).is_file() and Path(result["manifest"]).is_file()
    assert result["quality"] == {
        "metric": "accuracy",
        "value": 0.99,
        "threshold": 0.97,
        "passed": True,
    }
    assert "digits: Succeeded" in out and "STAGE" in out
    assert "[9/9]" in err and "Succeeded" in err
    assert (workdir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert len(_calls(agent_env)) == 9

    assert _run(job, "--workdir", workdir) == 0
    rerun = _report(workdir)
    cached = {s["name"] for s in rerun["stages"] if s["phase"] == "Cached"}
    # Every stage of the default workflow is cacheable on one machine: a re-run runs nothing.
    assert cached == set(_phases(rerun))
    assert all(s["cacheKey"] for s in rerun["stages"])
    assert len(_calls(agent_env)) == 9

    assert _run(job, "--workdir", workdir, "--no-cache") == 0
    assert "Cached" not in _phases(_report(workdir)).values()


def test_a_failed_gate_rolls_back_and_falls_back_until_quality_holds(
    tmp_path: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "wd"
    assert _run(_job_file(tmp_path, "fake"), "--workdir", workdir) == 0
    report = _report(workdir)
    assert report["phase"] == "Succeeded" and report["rollbacks"] == 2
    assert "(4/4 stages, 2 rollbacks, 0 fallbacks)" in capsys.readouterr().out
    quantize = next(s for s in report["stages"] if s["name"] == "quantize")
    assert quantize["fallback"] == 2
    assert [a["params"]["accuracy"] for a in quantize["attemptLog"]] == [0.5, 0.8, 0.99]
    rollbacks = [e for e in report["events"] if e["kind"] == "RolledBack"]
    assert len(rollbacks) == 2 and all(e["stage"] == "quantize" for e in rollbacks)
    import_checkpoint = next(s for s in report["stages"] if s["name"] == "import")["checkpoint"]
    assert all(e["checkpoint"] == import_checkpoint["id"] for e in rollbacks)
    assert "accuracy = 0.5, needs >= 0.97" in rollbacks[0]["message"]
    assert report["result"]["quality"]["value"] == 0.99
    assert report["result"]["speedup"] == 3.5
    assert report["result"]["speedups"] == {"1": 3.5, "32": 1.5}
    assert "Latency p50 (ms): original vs baked" in (workdir / "report.html").read_text()


def test_a_stage_whose_own_gate_fails_falls_back_and_the_summary_counts_it(
    tmp_path: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = """\
- name: import
  agent: BakingCoordinator
- name: shrink
  agent: ModelOptimizer
  dependsOn: [import]
  params: {fakeMetrics: {speedup: 1.1}}
  gate: {metric: speedup, operator: ">=", bound: 2}
  onFailure: Fallback
  fallbacks: [{fakeMetrics: {speedup: 1.5}}, {fakeMetrics: {speedup: 2.5}}]
"""
    workdir = tmp_path / "wd"
    assert _run(_job_file(tmp_path, "fake", stages), "--workdir", workdir) == 0
    report = _report(workdir)
    assert report["rollbacks"] == 0 and report["fallbacks"] == 2
    assert "(2/2 stages, 0 rollbacks, 2 fallbacks)" in capsys.readouterr().out


def test_an_unreachable_threshold_fails_with_exit_3_and_a_clear_reason(
    tmp_path: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = CHAIN.replace(
        "{fake: {accuracyFromLineage: true}}",
        "{fake: {accuracyFromLineage: true, minAccuracy: 1.5}}",
    )
    workdir = tmp_path / "wd"
    assert _run(_job_file(tmp_path, "fake", stages), "--workdir", workdir) == 3
    report = _report(workdir)
    assert report["phase"] == "Failed" and report["rollbacks"] == 2
    assert _phases(report)["validate"] == "Failed"
    assert "accuracy 0.99 < 1.5" in report["reason"] and "no fallback left" in report["reason"]
    assert report["result"] is None
    assert report["lastGoodCheckpoint"]["id"].startswith("quantize-")
    assert "FAILED" in capsys.readouterr().err


def test_transient_failures_are_retried_with_backoff(tmp_path: Path, agent_env: Path) -> None:
    stages = """\
    - name: import
      agent: BakingCoordinator
      params: {fake: {failTimes: 2}}
      retry: {limit: 2, backoff: {durationSeconds: 1, factor: 1.5, maxSeconds: 2}}
    """
    workdir = tmp_path / "wd"
    started = time.monotonic()
    assert _run(_job_file(tmp_path, "fake", stages), "--workdir", workdir) == 0
    assert time.monotonic() - started >= 2.5  # waited 1 s, then 1.5 s
    stage = _report(workdir)["stages"][0]
    assert stage["attempts"] == 3
    assert [a["outcome"] for a in stage["attemptLog"]] == ["Transient", "Transient", "Succeeded"]
    assert [e["kind"] for e in stage["events"]].count("Retrying") == 2


def test_a_stage_past_its_timeout_is_killed_and_the_job_fails(
    tmp_path: Path, agent_env: Path
) -> None:
    stages = """\
    - name: import
      agent: BakingCoordinator
      params: {fake: {sleep: 30}}
      timeoutSeconds: 1
      retry: {limit: 0}
    """
    workdir = tmp_path / "wd"
    assert _run(_job_file(tmp_path, "fake", stages), "--workdir", workdir) == 1
    report = _report(workdir)
    assert "timed out" in report["reason"]
    assert report["stages"][0]["attemptLog"][0]["timedOut"] is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: BakingJob\nmetadata: {name: x}\nspec: {}\n", "model"),
        ("a: [unclosed\n", "not valid YAML"),
        (JOB.format(workflow="missing"), "names no Workflow"),
        (
            JOB.format(workflow="loop")
            + _workflow(
                "- {name: a, agent: BakingCoordinator, dependsOn: [b]}\n"
                "- {name: b, agent: GraphOptimiser, dependsOn: [a]}\n",
                "loop",
            ),
            "cycle",
        ),
    ],
)
def test_invalid_input_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert _run(path, "--workdir", tmp_path / "wd") == 2
    err = capsys.readouterr().err
    assert err.startswith("bakeline run: ") and message in err


def test_a_cycle_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        JOB.format(workflow="loop")
        + _workflow(
            "- {name: a, agent: BakingCoordinator, dependsOn: [b]}\n"
            "- {name: b, agent: GraphOptimiser, dependsOn: [a]}\n",
            "loop",
        )
    )
    assert _run(path, "--workdir", tmp_path / "wd") == 2
    err = capsys.readouterr().err
    assert "did you mean 'GraphOptimizer'" in err and "a -> b -> a" in err


def test_an_unknown_from_stage_is_invalid(
    tmp_path: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(_job_file(tmp_path), "--workdir", tmp_path / "wd", "--from", "nope") == 2
    assert "no such stage; the workflow's stages are import, graph" in capsys.readouterr().err


def test_from_reruns_a_stage_and_what_follows(tmp_path: Path, agent_env: Path) -> None:
    job, workdir = _job_file(tmp_path, "fake"), tmp_path / "wd"
    assert _run(job, "--workdir", workdir) == 0
    before = len(_calls(agent_env))
    assert _run(job, "--workdir", workdir, "--from", "validate") == 0
    assert _calls(agent_env)[before:] == ["validate", "package"]
    report = _report(workdir)
    assert _phases(report) == {
        n: "Succeeded" for n in ("import", "quantize", "validate", "package")
    }
    stages = {s["name"]: s for s in report["stages"]}
    # A stage run again is described by this run: one attempt, its time alone, no earlier
    # rollbacks; a stage kept from the first run keeps what it went through there.
    validate = stages["validate"]
    assert len(validate["attemptLog"]) == 1 and not validate["rollbacks"]
    assert validate["durationSeconds"] == round(validate["attemptLog"][0]["seconds"], 3)
    assert len(stages["quantize"]["attemptLog"]) == 3 and len(stages["quantize"]["rollbacks"]) == 2
    assert report["rollbacks"] == 2
    assert report["durationSeconds"] < 60


def test_a_rerun_without_rollbacks_reports_no_earlier_rollback_reason(
    tmp_path: Path, agent_env: Path
) -> None:
    stages = """\
    - name: import
      agent: BakingCoordinator
    - name: quantize
      agent: ModelOptimizer
      dependsOn: [import]
      params: {accuracy: 0.99}
      fallbacks: [{accuracy: 0.98}]
    - name: validate
      agent: QualityValidator
      dependsOn: [quantize]
      params: {fake: {failTimes: 1}}
      retry: {limit: 0}
      onFailure: Rollback
    """
    job, workdir = _job_file(tmp_path, "flaky", stages), tmp_path / "wd"
    assert _run(job, "--workdir", workdir) == 0
    first = _report(workdir)
    assert first["rollbacks"] == 1 and "validate: flaky failure 1" in first["lastRollbackReason"]
    # The stage rolled back to runs again, and this time nothing fails.
    assert _run(job, "--workdir", workdir, "--from", "quantize") == 0
    again = _report(workdir)
    assert again["rollbacks"] == 0 and again["lastRollbackReason"] is None


def test_an_interrupted_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, agent_env: Path
) -> None:
    stages = CHAIN.replace(
        "params: {accuracy: 0.5}", "params: {accuracy: 0.99, fake: {sleepFirst: 60}}"
    )
    job, workdir = _job_file(tmp_path, "fake", stages), tmp_path / "wd"
    process = subprocess.Popen(
        [sys.executable, "-m", "bakeline.cli.main", "run", str(job), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while _calls(agent_env) != ["import", "quantize"]:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "resume from checkpoint import-" in err
    state = json.loads((workdir / "run.json").read_text())["state"]
    assert state["stages"]["import"]["phase"] == "Succeeded"
    assert state["stages"]["quantize"]["phase"] == "Pending"
    assert state["stages"]["quantize"]["attempts_total"] == 0  # the cut attempt does not count
    with pytest.raises(ProcessLookupError):  # the agent was stopped with the run
        os.kill(int((agent_env / "quantize.pid").read_text()), 0)

    assert _run(job, "--workdir", workdir) == 0
    assert _calls(agent_env) == ["import", "quantize", "quantize", "validate", "package"]
    report = _report(workdir)
    assert report["phase"] == "Succeeded"
    assert next(s for s in report["stages"] if s["name"] == "quantize")["attempts"] == 1


def test_output_delivers_to_a_folder_relative_to_where_it_is_run(
    tmp_path: Path,
    agent_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--output replaces the job's spec.output for this run; a plain path is relative to the
    current directory (not to the job file), and a bad URI is refused before anything runs."""
    job = _job_file(tmp_path)
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    assert _run(job, "--workdir", tmp_path / "wd", "--output", "models/digits") == 0
    report = _report(tmp_path / "wd")
    assert report["output"]["uri"] == (here / "models" / "digits").as_uri()
    assert (here / "models" / "digits" / "manifest.json").is_file()
    capsys.readouterr()
    assert _run(job, "--workdir", tmp_path / "wd2", "--output", "ftp://x/y") == 2
    assert "--output ftp://x/y" in capsys.readouterr().err
    assert not (tmp_path / "wd2" / "report.json").exists()
