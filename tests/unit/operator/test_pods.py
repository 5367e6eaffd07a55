"""The manifests the operator creates, checked directly (pure build_* functions)."""

from __future__ import annotations

import json
from typing import Any

from bakeline.contract import TERMINATION_MESSAGE_PATH
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


# ---------------------------------------------------------------------------- ConfigMap lanes

TOKEN_DIR = pods.SERVICE_ACCOUNT_MOUNT
STORE_ENV = {
    "BAKELINE_STORE_PREFIX",
    "BAKELINE_STORE_OWNER",
    "BAKELINE_STORE_LABELS",
    "BAKELINE_STORE_INPUT_ID",
    "BAKELINE_SERVICE_ACCOUNT_DIR",
}


def _configmap_pod(**overrides: Any) -> dict[str, Any]:
    return _pod(storage="ConfigMap", input_store_id="graph-0123456789abcdef", **overrides)


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def _token_volumes(pod: dict[str, Any]) -> set[str]:
    return {
        v["name"]
        for v in pod["spec"]["volumes"]
        if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources", []))
    }


def test_configmap_lane_agent_container_holds_no_token_and_no_store_settings() -> None:
    pod = _configmap_pod()
    containers = _containers(pod)
    assert list(containers) == ["restore", "agent", "store"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["restore"]
    agent = containers["agent"]
    mounts = {m["name"] for m in agent["volumeMounts"]}
    assert not mounts & _token_volumes(pod), "the agent's container mounts a token"
    assert all(not m["mountPath"].startswith("/var/run/secrets") for m in agent["volumeMounts"])
    env = {e["name"]: e.get("value", "") for e in agent["env"]}
    assert not set(env) & STORE_ENV, set(env) & STORE_ENV
    assert not any(TOKEN_DIR in value for value in env.values())
    assert not any("valueFrom" in e for e in agent["env"])  # nothing read from Secrets either
    assert agent["command"] == ["bakeline", "stage", "--", "bakeline-agent", "ModelOptimizer"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_configmap_lane_store_containers_hold_the_token_and_the_store() -> None:
    pod = _configmap_pod(service_account="bakeline-stage")
    containers = _containers(pod)
    [token] = _token_volumes(pod)
    for name, step in (("restore", "restore"), ("store", "store")):
        container = containers[name]
        assert container["command"] == ["bakeline", "stage", step]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts[token]["mountPath"] == TOKEN_DIR and mounts[token]["readOnly"] is True
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["BAKELINE_STORE_PREFIX"] == pods.checkpoint_store_prefix("digits")
        assert json.loads(env["BAKELINE_STORE_OWNER"])["uid"] == "uid-1"
        assert env["BAKELINE_SERVICE_ACCOUNT_DIR"] == TOKEN_DIR
        assert env["PYTHONNOUSERSITE"] == "1"  # no code from the writable HOME
        # Their scratch space is their own: nothing the agent leaves in /tmp is read with it.
        assert mounts["store-tmp"]["mountPath"] == "/tmp"
        assert "tmp" not in mounts
        assert "BAKELINE_PARAMS" not in env and "BAKELINE_JOB" not in env
    restore = {e["name"]: e["value"] for e in containers["restore"]["env"]}
    assert restore["BAKELINE_STORE_INPUT_ID"] == "graph-0123456789abcdef"
    assert restore["BAKELINE_INPUT"] == "/checkpoints/graph-1"
    # The store reads the agent's output and the handoff; it writes neither.
    store_mounts = {m["name"]: m for m in containers["store"]["volumeMounts"]}
    assert store_mounts["checkpoints"]["readOnly"] is True
    assert store_mounts["handoff"]["readOnly"] is True
    agent_mounts = {m["name"]: m for m in containers["agent"]["volumeMounts"]}
    assert agent_mounts["handoff"]["mountPath"] == pods.HANDOFF_MOUNT
    assert pod["spec"]["serviceAccountName"] == "bakeline-stage"
    assert pod["metadata"]["labels"][pods.LABEL_STORAGE] == "ConfigMap"


def test_every_container_of_a_stage_pod_is_locked_down() -> None:
    for pod in (_pod(), _configmap_pod(), _pod(storage="ConfigMap", input_checkpoint=None)):
        assert pod["spec"]["securityContext"] == pods.restricted_pod_security()
        for container in _containers(pod).values():
            assert container["securityContext"] == pods.restricted_container_security()
            assert container["terminationMessagePath"] == TERMINATION_MESSAGE_PATH


def test_first_stage_on_a_configmap_lane_restores_nothing_and_volume_lanes_stay_one_container() -> (
    None
):
    first = _pod(storage="ConfigMap", input_checkpoint=None)
    assert "initContainers" not in first["spec"]
    assert [c["name"] for c in first["spec"]["containers"]] == ["agent", "store"]
    volume = _pod()
    assert [c["name"] for c in volume["spec"]["containers"]] == ["agent"]
    assert "initContainers" not in volume["spec"] and not _token_volumes(volume)
    assert volume["metadata"]["labels"][pods.LABEL_STORAGE] == "Volume"
    # A model mount reaches the agent alone.
    mount = pods.model_source_mount({"configMap": {"name": "m", "key": "model.pt2"}})
    with_model = _pod(storage="ConfigMap", input_checkpoint=None, model_mount=mount)
    names = {
        c["name"]: {m["name"] for m in c["volumeMounts"]} for c in _containers(with_model).values()
    }
    assert "model" in names["agent"] and "model" not in names["store"]


def _status(**states: dict[str, Any]) -> dict[str, Any]:
    """A pod whose containers ended as given (name -> terminated), init containers as init-*."""
    inits = [
        {"name": name.removeprefix("init_"), "state": {"terminated": t}}
        for name, t in states.items()
        if name.startswith("init_")
    ]
    mains = [
        {"name": name, "state": {"terminated": t}}
        for name, t in states.items()
        if not name.startswith("init_")
    ]
    return {"status": {"initContainerStatuses": inits, "containerStatuses": mains}}


def test_the_attempts_terminated_state_is_the_container_that_decided_it() -> None:
    ok = {"exitCode": 0, "message": '{"artifactSha256": "a"}'}
    stored = {"exitCode": 0, "message": '{"artifactSha256": "a", "store": {"id": "x"}}'}
    gate = {"exitCode": 3, "message": "gate"}
    oom = {"exitCode": 137, "reason": "OOMKilled"}
    gone = {"exitCode": 2, "message": "input gone"}
    waiting: dict[str, Any] = {}
    # Volume lanes: the one container.
    assert pods.terminated_state(_status(agent=gate)) == gate
    # ConfigMap lanes: the store's on success (it names the stored checkpoint) ...
    assert pods.terminated_state(_status(agent=ok, store=stored)) == stored
    # ... a failed store fails an agent that succeeded (exit 1: retried) ...
    refused = {"exitCode": 1, "message": "could not store"}
    assert pods.terminated_state(_status(agent=ok, store=refused)) == refused
    # ... the agent's own when it failed: its exit code and reason, whatever the store said.
    assert pods.terminated_state(_status(agent=gate, store={"exitCode": 3})) == gate
    assert pods.terminated_state(_status(agent=oom, store={"exitCode": 1})) == oom
    # A failed restore: its state (exit 2: the input is gone; the others never ran).
    assert pods.terminated_state(_status(init_restore=gone)) == gone
    assert pods.terminated_state(_status(init_restore=ok, agent=ok, store=stored)) == stored
    assert pods.terminated_state({"status": {}}) == waiting
