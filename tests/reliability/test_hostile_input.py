"""Hostile input on the real API server while the operator runs.

Every hostile resource is either refused at admission (schema or CEL, with words a person can
act on) or accepted and then failed, or held, with a condition that names the problem. Meanwhile
the operator does not crash, does not hot-loop (its own request counter and its log over a quiet
window), and keeps serving a normal job to Succeeded.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from reliability import hostile
from reliability.probes import condition_of, scrape, total, wait_terminal

from controlplane import ControlPlane
from support.kube import apply, get, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LANE = hostile.lane({"maxConcurrentJobs": 4}, name="standard")
QUIET_WINDOW_S = 12.0
# Waiting jobs are looked at every few seconds and failed ones never again; a pass served from
# the watch caches costs no request at all. Far below one request per waiting object per second.
MAX_REQUESTS_PER_S = 4.0
MAX_ERRORS_PER_S = 1.0


def _create(cluster: ControlPlane, namespace: str, body: dict[str, Any] | str) -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return cluster.kubectl("create", "-n", namespace, "-f", "-", input=text, check=False)


def test_hostile_resources_are_refused_at_admission(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, hostile.job("steady-before")], namespace)
    assert len(hostile.ADMISSION) >= 40
    wrong: list[str] = []
    for case_id, body, words in hostile.ADMISSION:
        done = _create(cluster, namespace, body)
        message = " ".join(done.stderr.split())
        if done.returncode == 0:
            wrong.append(f"{case_id}: ACCEPTED ({done.stdout.strip()})")
        elif words not in message:
            wrong.append(f"{case_id}: refused without {words!r}: {message[:400]}")
        print(f"{case_id}: {message[:300]}")
    assert wrong == [], "\n".join(wrong)
    # Nothing was left behind by a refusal.
    for kind in ("bakingjobs", "workflows", "lanes", "slopolicies"):
        names = cluster.kubectl("get", kind, "-n", namespace, "-o", "name").stdout.split()
        assert all("hostile" not in n and "big" not in n for n in names), names
    assert wait_terminal(cluster, "steady-before", namespace)["status"]["phase"] == "Succeeded"
    assert operator.process is not None and operator.process.poll() is None, operator.log()


def _expect(
    phase: str | tuple[str, ...], condition: str, reason: str, *words: str
) -> Callable[[dict[str, Any] | None], str | None]:
    """A check of a job or workflow: None when it holds, else what is wrong."""
    phases = (phase,) if isinstance(phase, str) else phase

    def check(obj: dict[str, Any] | None) -> str | None:
        status = (obj or {}).get("status") or {}
        cond = condition_of(obj, condition)
        text = cond.get("message", "")
        if status.get("phase") not in phases or cond.get("reason") != reason:
            return f"phase {status.get('phase')}, {condition} {cond.get('reason')}: {text[:300]}"
        missing = [w for w in words if w not in text]
        return f"message lacks {missing}: {text[:300]}" if missing else None

    return check


def test_hostile_references_fail_or_wait_with_a_clear_condition_and_nothing_hot_loops(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    # What other namespaces hold is not this job's: same names there must not resolve.
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "foreign-model"}}
    apply(
        cluster,
        [
            hostile.lane({}, name="elsewhere"),
            hostile.workflow([hostile.stage()], name="foreign"),
            {**cm, "binaryData": {"model": "AAAA"}},
        ],
        other,
    )
    lane = hostile.lane({"maxConcurrentJobs": 8, "maxQueuedJobs": 100}, name="standard")
    # Jobs that fail at run time go to a lane of their own: their failures must not open the
    # standard lane's per-agent circuit (3 failures of one agent in a row, by default).
    quarantine = hostile.lane(
        {"maxConcurrentJobs": 4, "circuitBreaker": {"consecutiveFailures": 100}},
        name="quarantine",
    )
    wrong_key = {**cm, "metadata": {"name": "wrong-key"}, "binaryData": {"weights": "AAAA"}}

    def cm_job(name: str, configmap: str) -> dict[str, Any]:
        source = {"configMap": {"name": configmap, "key": "model"}}
        return hostile.job(name, model={"source": source}, laneRef="quarantine")

    stage = hostile.stage
    objects: list[dict[str, Any]] = [
        lane,
        quarantine,
        wrong_key,
        hostile.workflow(
            [stage("a", dependsOn=["b"]), stage("b", agent="GraphOptimizer", dependsOn=["a"])],
            name="cyclic",
        ),
        hostile.workflow([stage(params={"x": "y" * (200 << 10)})], name="huge-param"),
        hostile.workflow([stage(params={"d": json.loads(hostile.nested(50))})], name="deep"),
        hostile.job("no-lane", laneRef="nowhere"),
        hostile.job("lane-elsewhere", laneRef="elsewhere"),
        hostile.job("no-workflow", workflowRef="missing"),
        hostile.job("workflow-elsewhere", workflowRef="foreign"),
        hostile.job("cyclic-workflow", workflowRef="cyclic"),
        hostile.job("huge-param", workflowRef="huge-param"),
        hostile.job("deep-params", workflowRef="deep"),
        cm_job("no-configmap", "absent"),
        cm_job("configmap-elsewhere", "foreign-model"),
        cm_job("configmap-wrong-key", "wrong-key"),
        hostile.job("n" * 253),  # the longest name the API server takes: pods and labels fit
        hostile.slo(laneSelector={"names": ["ghost"]}),
    ]
    for body in objects:
        apply(cluster, body, namespace)

    expected: dict[tuple[str, str], Callable[[dict[str, Any] | None], str | None]] = {
        ("bj", "no-lane"): _expect("Pending", "Admitted", "LaneNotFound", "nowhere"),
        ("bj", "lane-elsewhere"): _expect("Pending", "Admitted", "LaneNotFound", "elsewhere"),
        ("bj", "no-workflow"): _expect("Pending", "Admitted", "WorkflowNotFound", "missing"),
        ("bj", "workflow-elsewhere"): _expect("Pending", "Admitted", "WorkflowNotFound", "foreign"),
        ("bj", "cyclic-workflow"): _expect("Failed", "Failed", "WorkflowInvalid", "cycl"),
        ("bwf", "cyclic"): _expect((None,), "Invalid", "Cycle"),  # type: ignore[arg-type]
        ("bj", "huge-param"): _expect("Failed", "Failed", "WorkflowInvalid", "params"),
        ("bwf", "huge-param"): _expect((None,), "Ready", "Invalid", "256 characters"),  # type: ignore[arg-type]
        ("bj", "deep-params"): _expect("Failed", "Failed", "WorkflowInvalid", "nested"),
        ("bwf", "deep"): _expect((None,), "Ready", "Invalid", "nothing nested deeper"),  # type: ignore[arg-type]
        ("bj", "no-configmap"): _expect(
            "Failed", "Failed", "StageFailed", 'configmaps "absent" not found'
        ),
        ("bj", "configmap-elsewhere"): _expect(
            "Failed", "Failed", "StageFailed", 'configmaps "foreign-model" not found'
        ),
        ("bj", "configmap-wrong-key"): _expect("Failed", "Failed", "StageFailed", "'model'"),
        ("bj", "n" * 253): _expect("Succeeded", "Succeeded", "Baked"),
    }
    state: dict[tuple[str, str], str | None] = {}

    def settled() -> bool:
        for (kind, name), check in expected.items():
            if state.get((kind, name), "unseen") is not None:
                state[(kind, name)] = check(get(cluster, kind, name, namespace))
        return all(v is None for v in state.values())

    # What does not settle is reported last, after the checks that must hold regardless.
    with contextlib.suppress(AssertionError):
        wait_for(settled, 120, interval=1.0, what="every hostile object to settle")
    unsettled = {f"{kind}/{name[:24]}": v for (kind, name), v in state.items() if v}

    # A normal job, applied after all that, is served as usual.
    apply(cluster, hostile.job("steady-after"), namespace)
    try:
        done = wait_terminal(cluster, "steady-after", namespace, 120)
    except AssertionError as exc:
        status = (get(cluster, "bj", "steady-after", namespace) or {}).get("status")
        failed = {
            name[:24]: condition_of(get(cluster, "bj", name, namespace) or {}, "Failed")
            for kind, name in state
            if kind == "bj"
        }
        raise AssertionError(
            f"{exc}: {json.dumps(status)[-2000:]}; unsettled {unsettled}; failed {failed}"
        ) from None
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"])[-2000:]
    assert operator.process is not None and operator.process.poll() is None, operator.log()

    # No hot loop: over a quiet window, with jobs still waiting on missing lanes and
    # workflows, requests and reconcile errors stay low, and the log does not race.
    before, log_before = scrape(operator.metrics_port), len(operator.log_path.read_bytes())
    time.sleep(QUIET_WINDOW_S)
    after = scrape(operator.metrics_port)
    rate = (
        total(after, "bakeline_api_requests_total") - total(before, "bakeline_api_requests_total")
    ) / QUIET_WINDOW_S
    errors = total(after, "bakeline_reconcile_errors_total") - total(
        before, "bakeline_reconcile_errors_total"
    )
    quiet_log = operator.log_path.read_bytes()[log_before:].decode(errors="replace")
    requests = {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key.startswith("bakeline_api_requests_total{") and after[key] > before.get(key, 0.0)
    }
    print(
        f"quiet window: {rate:.2f} API requests/s, {errors:.0f} reconcile errors, "
        f"{len(quiet_log.splitlines())} log lines; requests {requests}"
    )
    if rate > MAX_REQUESTS_PER_S:
        events = cluster.kubectl(
            "get", "events", "-n", namespace, "--sort-by=.metadata.creationTimestamp",
            "-o", "custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message",
        ).stdout.splitlines()[-30:]  # fmt: skip
        pytest.fail(f"{rate:.1f} requests/s while idle: {requests}\n" + "\n".join(events))
    # A failing reconcile is retried after 5-10 s: bounded, never a spin.
    assert errors / QUIET_WINDOW_S <= MAX_ERRORS_PER_S, f"{errors} reconcile errors while idle"
    health = f"http://127.0.0.1:{operator.health_port}/healthz"
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.status == 200
    assert unsettled == {}, (
        json.dumps(unsettled, indent=1) + "\n--- operator log ---\n" + operator.log()[-4000:]
    )


def test_a_workflow_nested_5000_deep_does_not_take_the_operator_down(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    """5,000 maps deep in params: the API server takes it (its JSON limit is deeper, and CEL
    cannot see inside free-form params); Python's JSON parser gives up at ~1,000 levels. One
    such Workflow must not stop the operator: it is reported Invalid and the job using it
    fails, while other jobs go on."""
    scripted_agent({})
    stage = hostile.stage
    abyss = hostile.with_raw_params(hostile.workflow([stage()], name="abyss"), hostile.nested(5000))
    apply(cluster, [LANE, hostile.job("steady")], namespace)
    assert _create(cluster, namespace, abyss).returncode == 0
    apply(cluster, hostile.job("abyss-params", workflowRef="abyss"), namespace)
    time.sleep(3)
    assert operator.process is not None and operator.process.poll() is None, (
        "the operator exited:\n" + operator.log()[-2500:]
    )
    assert wait_terminal(cluster, "steady", namespace, 120)["status"]["phase"] == "Succeeded"
    job = wait_terminal(cluster, "abyss-params", namespace, 60)
    failed = condition_of(job, "Failed")
    assert job["status"]["phase"] == "Failed" and failed["reason"] == "WorkflowInvalid", failed
