"""The manifests the operator creates, checked directly (pure build_* functions)."""

from __future__ import annotations

import json
from typing import Any

from bakeline.runtime import pods

JOB: dict[str, Any] = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "BakingJob",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-1"},
}


def _pod(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "stage": "quantize",
        "agent": "ModelOptimizer",
        "attempt": 3,
        "params": {"scheme": "int8-per-channel"},
        "job_document": {"name": "digits"},
        "input_checkpoint": "graph-1",
        "image": "bakeline:1",
    }
    args.update(overrides)
    return pods.build_stage_pod(JOB, **args)


def test_stage_pod_is_named_labelled_and_owned_deterministically() -> None:
    pod = _pod()
    meta = pod["metadata"]
    assert meta["name"] == "digits-quantize-3" == pods.stage_pod_name("digits", "quantize", 3)
    assert meta["labels"][pods.LABEL_JOB] == "digits"
    assert meta["labels"][pods.LABEL_STAGE] == "quantize"
    assert meta["labels"][pods.LABEL_ATTEMPT] == "3"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BakingJob", "uid-1", True)


def test_stage_pod_meets_pod_security_restricted() -> None:
    spec = _pod()["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = spec["containers"][0]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"


def test_stage_pod_carries_the_agent_contract_in_env() -> None:
    container = _pod(timeout_seconds=90.5)["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["command"] == ["bakeline", "stage", "--", "bakeline-agent", "ModelOptimizer"]
    assert env["BAKELINE_INPUT"] == "/checkpoints/graph-1"
    assert env["BAKELINE_OUTPUT"] == "/checkpoints/quantize-3"
    assert json.loads(env["BAKELINE_PARAMS"]) == {"scheme": "int8-per-channel"}
    assert env["BAKELINE_TERMINATION_MESSAGE_PATH"] == container["terminationMessagePath"]
    assert _pod(timeout_seconds=90.5)["spec"]["activeDeadlineSeconds"] == 90


def test_first_stage_has_no_input_and_lane_defaults_apply() -> None:
    defaults = {
        "image": "bakeline:canary",
        "resources": {"limits": {"memory": "4Gi"}},
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    }
    pod = _pod(input_checkpoint=None, stage_defaults=defaults)
    container = pod["spec"]["containers"][0]
    assert "BAKELINE_INPUT" not in {e["name"] for e in container["env"]}
    assert container["image"] == "bakeline:canary"
    assert container["resources"] == {"limits": {"memory": "4Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_long_names_stay_valid_and_distinct() -> None:
    long_job = {**JOB, "metadata": {**JOB["metadata"], "name": "j" * 250}}
    first = pods.build_stage_pod(long_job, **{**_args(), "stage": "a"})["metadata"]["name"]
    second = pods.build_stage_pod(long_job, **{**_args(), "stage": "b"})["metadata"]["name"]
    assert len(first) <= 253 and len(second) <= 253 and first != second
    assert len(pods.label_value("x" * 100)) <= 63


def test_checkpoint_record_is_immutable_and_keyed_for_the_cache() -> None:
    record = pods.build_checkpoint_record(
        JOB, stage="graph", attempt=1, result={"artifactSha256": "ab" * 32}, cache_key="k" * 64
    )
    assert record["immutable"] is True
    assert record["metadata"]["name"] == "digits-ckpt-graph-1"
    assert record["data"]["artifactSha256"] == "ab" * 32
    assert record["data"]["cacheKey"] == "k" * 64


def _args() -> dict[str, Any]:
    return {
        "stage": "s",
        "agent": "GraphOptimizer",
        "attempt": 1,
        "params": {},
        "job_document": {},
        "input_checkpoint": None,
        "image": "i",
    }
