"""The generated CRDs on a real kube-apiserver: they install, the examples apply, `kubectl explain`
teaches, `kubectl get` shows the printer columns, the server's defaults and status schema agree
with the pydantic models, and every invalid manifest of tests/unit/api/invalid_manifests.yaml is
rejected with a message that names the field and the rule."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.api import (
    API_VERSION,
    RESOURCE_KINDS,
    BakeResult,
    BakingJobStatus,
    Condition,
    FrozenBy,
    LaneStatus,
    ObjectiveStatus,
    OpenCircuit,
    Problem,
    QualityResult,
    Resource,
    SLOPolicyStatus,
    StageStatus,
    WorkflowSpec,
    WorkflowStatus,
    validate_workflow,
)
from controlplane import ControlPlane

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
CORPUS = REPO / "tests" / "unit" / "api" / "invalid_manifests.yaml"
MODELS: dict[str, type[Resource]] = {kind.__name__: kind for kind in RESOURCE_KINDS}
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text())
    for case in cases:
        case["manifest"] = {
            "apiVersion": API_VERSION,
            "metadata": {"name": "invalid"},
            **case["manifest"],
        }
    return cases


CASES = load_cases()


@pytest.fixture(scope="module")
def crds(cluster: ControlPlane) -> ControlPlane:
    cluster.kubectl("apply", "-f", str(CRDS))
    names = [f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}" for p in CRDS.glob("*")]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return cluster


@pytest.fixture(scope="module")
def scratch(crds: ControlPlane) -> Iterator[str]:
    """One namespace for the invalid manifests: none of them may leave an object behind."""
    name = f"invalid-{secrets.token_hex(4)}"
    crds.kubectl("create", "namespace", name)
    yield name


def kubectl_json(cluster: ControlPlane, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def apply_file(cluster: ControlPlane, namespace: str, path: Path) -> str:
    """`kubectl apply -f`, retried briefly: a just-established CRD may take a moment to serve."""
    deadline = time.monotonic() + 30
    while True:
        result = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        if "no matches for kind" not in result.stderr and "NotFound" not in result.stderr:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    return result.stdout


def model_spec(document: dict[str, Any]) -> Any:
    """The spec as the pydantic model of its kind reads it, defaults filled in, in wire form."""
    return MODELS[document["kind"]].model_validate(document).to_wire()["spec"]


def pruned(value: Any) -> Any:
    """Drop empty lists and maps: pydantic writes `dependsOn: []`, the API server omits it."""
    if isinstance(value, dict):
        items = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def test_crds_install_and_reapply_unchanged(crds: ControlPlane) -> None:
    again = crds.kubectl("apply", "-f", str(CRDS)).stdout
    assert again.count("unchanged") == len(list(CRDS.glob("*.yaml"))), again
    for path in CRDS.glob("*.yaml"):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        crd = kubectl_json(crds, "get", "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name
        assert conditions.get("NonStructuralSchema") is None, name


def test_examples_apply_and_the_server_defaults_agree_with_the_models(
    crds: ControlPlane, namespace: str
) -> None:
    out = apply_file(crds, namespace, EXAMPLES)
    documents = [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    assert out.count(" created") == len(documents), out
    for document in documents:
        kind, name = document["kind"], document["metadata"]["name"]
        stored = kubectl_json(crds, "get", "-n", namespace, kind.lower(), name)
        # What the API server defaulted is what pydantic defaults.
        assert pruned(stored["spec"]) == pruned(model_spec(document)), f"{kind}/{name}"
        assert model_spec(stored) == model_spec(document)


def test_minimal_objects_get_the_model_defaults(crds: ControlPlane, namespace: str) -> None:
    minimal: list[dict[str, Any]] = [
        {"kind": "Lane", "metadata": {"name": "bare"}},
        {
            "kind": "Workflow",
            "metadata": {"name": "two"},
            "spec": {"stages": [{"name": "a", "agent": "BakingCoordinator"}]},
        },
        {
            "kind": "BakingJob",
            "metadata": {"name": "tiny"},
            "spec": {"model": {"source": {"builtin": "digits-cnn"}}},
        },
        {
            "kind": "SLOPolicy",
            "metadata": {"name": "least"},
            "spec": {
                "laneSelector": {"matchLabels": {}},
                "objectives": [{"name": "ok", "sli": "JobSuccess", "target": 0.99}],
            },
        },
    ]
    documents = [{"apiVersion": API_VERSION, **doc} for doc in minimal]
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))
    for document in documents:
        kind, name = document["kind"], document["metadata"]["name"]
        stored = kubectl_json(crds, "get", "-n", namespace, kind.lower(), name)
        assert pruned(stored["spec"]) == pruned(model_spec(document)), kind
    slo = kubectl_json(crds, "get", "-n", namespace, "slo", "least")
    assert [a["factor"] for a in slo["spec"]["burnRateAlerts"]] == [14.4, 6, 1]


def explain(cluster: ControlPlane, field: str) -> str:
    """`kubectl explain`, whitespace collapsed (kubectl wraps descriptions at 80 columns)."""
    return " ".join(cluster.kubectl("explain", field).stdout.split())


def test_explain_teaches(crds: ControlPlane) -> None:
    model = explain(crds, "bakingjob.spec.model")
    assert "DESCRIPTION: The model to bake." in model
    assert "source <Object> -required- Where the model comes from: exactly one of builtin" in model
    assert "Pickled files are never loaded." in model
    source = explain(crds, "bj.spec.model.source")
    assert "builtin <string> enum: minilm-l6, digits-cnn" in source
    assert "all-MiniLM-L6-v2" in source
    on_failure = explain(crds, "workflow.spec.stages.onFailure")
    assert "Fallback: run the stage again from its input checkpoint" in on_failure
    assert "ENUM: Retry Rollback Fallback Skip Fail" in on_failure
    windows = explain(crds, "slopolicy.spec.burnRateAlerts.shortWindow")
    assert "shorter than longWindow" in windows
    lane = explain(crds, "ln.spec")
    assert "maxConcurrentJobs <integer> Jobs of this lane that may run at the same time." in lane


def _condition(kind: str, reason: str) -> Condition:
    return Condition(type=kind, status="True", reason=reason, message="", last_transition_time=NOW)


STATUSES: dict[tuple[str, str], Any] = {
    ("bakingjob", "minilm-l6"): BakingJobStatus(
        observed_generation=1,
        phase="Running",
        lane="standard",
        workflow="default",
        progress="4/9",
        stages=[
            StageStatus(
                name="quantize",
                agent="ModelOptimizer",
                phase="RolledBack",
                attempt=2,
                fallback=1,
                pod="minilm-l6-quantize-2",
                started_at=NOW,
                finished_at=NOW,
                duration_seconds=41.5,
                checkpoint="minilm-l6-quantize",
                metrics={"cosine": 0.97, "sizeBytes": 23e6},
                message="quality gate failed: cosine 0.97 < 0.98",
            )
        ],
        current_checkpoint="minilm-l6-graph",
        rollback_count=1,
        last_rollback_reason="validate: cosine 0.97 < 0.98",
        queued_at=NOW,
        admitted_at=NOW,
        started_at=NOW,
        estimated_completion=NOW,
        result=BakeResult(
            artifact="minilm-l6-package",
            format="onnx",
            sha256="a" * 64,
            size_bytes=23_000_000,
            original_size_bytes=90_900_000,
            speedup=2.5,
            speedups={"1": 2.5, "32": 2.8},
            runtime="onnxruntime",
            precision="int8-per-channel",
            quality=QualityResult(metric="cosine", value=0.99, threshold=0.98, passed=True),
        ),
        conditions=[_condition("Admitted", "LaneAdmitted"), _condition("Progressing", "Running")],
    ),
    ("lane", "express"): LaneStatus(
        observed_generation=1,
        running=1,
        queued=2,
        frozen=True,
        frozen_by=[
            FrozenBy(policy="interactive-lanes", objective="job-success", reason="burn", since=NOW)
        ],
        open_circuits=[
            OpenCircuit(
                agent="GraphOptimizer",
                consecutive_failures=2,
                opened_at=NOW,
                retry_after=NOW,
                last_failure="exit 1",
            )
        ],
        conditions=[_condition("Frozen", "BudgetBurning")],
    ),
    ("slopolicy", "interactive-lanes"): SLOPolicyStatus(
        observed_generation=1,
        state="Burning",
        budget_remaining=0.42,
        objectives=[
            ObjectiveStatus(
                name="job-success",
                sli=0.985,
                budget_remaining=0.42,
                burn_rates={"1h": 15.0, "5m": 20.0},
                good=197,
                total=200,
                state="Burning",
            )
        ],
        frozen_lanes=["express"],
        last_evaluated=NOW,
        conditions=[_condition("Burning", "FastBurn")],
    ),
    ("workflow", "default"): WorkflowStatus(
        observed_generation=1,
        stage_count=9,
        order=["import", "graph"],
        problems=[Problem(path="spec.stages[0]", reason="Invalid", message="example")],
        predicted_durations={"import": 3.5},
        predicted_total_seconds=60.0,
        conditions=[_condition("Ready", "Valid")],
    ),
}


def test_status_subresource_keeps_what_the_models_write_and_columns_show_it(
    crds: ControlPlane, namespace: str
) -> None:
    apply_file(crds, namespace, EXAMPLES)
    for (resource, name), status in STATUSES.items():
        before = kubectl_json(crds, "get", "-n", namespace, resource, name)
        patch = json.dumps({"status": status.to_wire()})
        crds.kubectl(
            "patch",
            "-n",
            namespace,
            resource,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        )
        after = kubectl_json(crds, "get", "-n", namespace, resource, name)
        # Nothing pruned: the status schema holds every field the models write.
        assert after["status"] == status.to_wire(), resource
        assert type(status).model_validate(after["status"]) == status
        # A status write is not a spec change.
        assert after["metadata"]["generation"] == before["metadata"]["generation"]

    # The main resource ignores status: only the operator, through the subresource, writes it.
    job = yaml.safe_load((EXAMPLES / "bakingjob-minilm.yaml").read_text())
    job["status"] = {"phase": "Failed"}
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    assert kubectl_json(crds, "get", "-n", namespace, "bj", "minilm-l6")["status"]["phase"] == (
        "Running"
    )

    rows = {
        "bj": (
            "NAME PHASE LANE PROGRESS SPEEDUP VERIFIED OUTPUT AGE",
            "minilm-l6 Running standard 4/9 2.5",
        ),
        "ln": ("NAME RUNNING QUEUED FROZEN AGE", "express 1 2 true"),
        "slo": ("NAME STATE BUDGET AGE", "interactive-lanes Burning 0.42"),
        "bwf": ("NAME STAGES READY AGE", "default 9 True"),
    }
    for short_name, (header, row) in rows.items():
        table = crds.kubectl("get", "-n", namespace, short_name).stdout.splitlines()
        assert " ".join(table[0].split()) == header, table
        assert any(" ".join(line.split()).startswith(row) for line in table[1:]), table
    listed = crds.kubectl("get", "-n", namespace, "bakeline", "-o", "name").stdout.split()
    # The `bakeline` category lists all four kinds: 3 lanes, 1 workflow, 2 jobs, 1 policy.
    kinds = sorted(name.split(".")[0] for name in listed)
    assert kinds == ["bakingjob"] * 2 + ["lane"] * 3 + ["slopolicy", "workflow"], listed


def test_the_largest_workflow_fits_the_cel_budget(crds: ControlPlane, namespace: str) -> None:
    """32 stages with 16 dependencies each: the rules that walk the graph still run in budget."""
    stages = [
        {
            "name": f"stage-{i:02d}",
            "agent": "ModelOptimizer",
            "dependsOn": [f"stage-{j:02d}" for j in range(max(0, i - 16), i)],
        }
        for i in range(32)
    ]
    assert validate_workflow({"stages": stages}) == []
    WorkflowSpec.model_validate({"stages": stages})
    document = {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {"name": "widest"},
        "spec": {"stages": stages},
    }
    crds.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(document))


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_invalid_manifest_is_rejected(
    crds: ControlPlane, scratch: str, case: dict[str, Any]
) -> None:
    result = crds.kubectl(
        "create", "-n", scratch, "-f", "-", input=json.dumps(case["manifest"]), check=False
    )
    message = result.stdout + result.stderr
    assert result.returncode != 0, f"accepted: {message}"
    assert case["field"] in message, message
    assert case["rule"] in message, message
    if "shows" in case:  # the value, quoted by a messageExpression, and the mistake said once
        assert f'"{case["shows"]}"' in message, message
        assert message.count(f"{case['field']}: ") == 1, message


def test_no_invalid_manifest_was_stored(crds: ControlPlane, scratch: str) -> None:
    assert crds.kubectl("get", "-n", scratch, "bakeline", "-o", "name").stdout.strip() == ""
