# ruff: noqa: E501  (one case a line reads best as a table)
"""Hostile resources: what a careless or malicious user may send the API server.

Each admission case is (id, manifest or raw JSON text, words the refusal must contain). The
words are what a person needs to fix the object, not a Go type name. None of these ids repeats
one of tests/unit/api/invalid_manifests.yaml (the schema corpus): this is the list beyond it.
"""

from __future__ import annotations

import json
from typing import Any

API = "bakeline.io/v1alpha1"
MIB = 1 << 20
TOO_BIG = "x" * MIB  # a 1 MiB string


def lane(spec: dict[str, Any], name: str = "hostile") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Lane", "metadata": {"name": name}, "spec": spec}


def workflow(stages: list[dict[str, Any]], name: str = "hostile", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"stages": stages, **spec},
    }


def stage(name: str = "a", agent: str = "ModelOptimizer", **fields: Any) -> dict[str, Any]:
    return {"name": name, "agent": agent, **fields}


def job(name: str = "hostile", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"}
    body.update(spec)
    return {"apiVersion": API, "kind": "BakingJob", "metadata": {"name": name}, "spec": body}


def slo(objectives: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "laneSelector": {"names": ["standard"]},
        "objectives": objectives
        or [{"name": "job-success", "sli": "JobSuccess", "target": 0.99, "window": "30d"}],
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "SLOPolicy", "metadata": {"name": "hostile"}, "spec": body}


def objective(**fields: Any) -> dict[str, Any]:
    return {"name": "job-success", "sli": "JobSuccess", "target": 0.99, "window": "30d", **fields}


def nested(depth: int) -> str:
    """JSON text of a value nested `depth` maps deep (Python's json cannot write it)."""
    return '{"k":' * depth + "1" + "}" * depth


def with_raw_params(manifest: dict[str, Any], raw: str) -> str:
    """The manifest as JSON text, its first stage's params replaced by `raw` JSON text."""
    manifest["spec"]["stages"][0]["params"] = {"deep": "@RAW@"}
    return json.dumps(manifest).replace('"@RAW@"', raw)


def _resources(**resources: Any) -> dict[str, Any]:
    return lane({"stageDefaults": {"resources": resources}})


SHA = "0" * 64
Case = tuple[str, dict[str, Any] | str, str]

ADMISSION: list[Case] = [
    # ---- names: unicode, overlong, wrong shape (the API server's own rules)
    ("job-name-unicode", job("bäke"), "a lowercase RFC 1123 subdomain"),
    ("job-name-overlong", job("j" * 254), "must be no more than 253 characters"),
    ("lane-name-emoji", lane({}, name="lane-\U0001f525"), "a lowercase RFC 1123 subdomain"),
    ("workflow-name-uppercase", workflow([stage()], name="Default"), "RFC 1123"),
    ("job-annotation-1mib", {**job(), "metadata": {"name": "big", "annotations": {
        "note": TOO_BIG}}}, "may not be more than 262144 bytes"),
    # ---- workflows: size, depth, nonsense numbers
    ("workflow-500-stages", workflow([stage(f"s{i}") for i in range(500)]), "must have at most 32 items"),
    ("workflow-params-2000-keys", workflow([stage(params={f"k{i}": i for i in range(2000)})]), "must have at most 32 items"),
    ("workflow-fallback-100-keys", workflow([stage(onFailure="Fallback", fallbacks=[{f"k{i}": i for i in range(100)}])]), "must have at most 32 items"),
    ("workflow-9-fallbacks", workflow([stage(onFailure="Fallback", fallbacks=[{"a": i} for i in range(9)])]), "must have at most 8 items"),
    ("workflow-stage-name-1mib", workflow([stage(TOO_BIG)]), "may not be more than 32 bytes"),
    ("workflow-stage-name-unicode", workflow([stage("quänt")]), "must be a stage name of at most 32 lowercase letters"),
    ("workflow-gate-metric-1mib", workflow([stage(gate={"metric": TOO_BIG, "operator": ">=", "bound": 1})]), "may not be more than 63 bytes"),
    ("workflow-gate-metric-shell", workflow([stage(gate={"metric": "a; rm -rf /", "operator": ">=", "bound": 1})]), "should match"),
    ("workflow-timeout-negative", workflow([stage(timeoutSeconds=-5)]), "should be greater than or equal to 1"),
    ("workflow-timeout-huge", workflow([stage(timeoutSeconds=10**12)]), "should be less than or equal to 86400"),
    ("workflow-retry-negative", workflow([stage(retry={"limit": -1})]), "should be greater than or equal to 0"),
    ("workflow-backoff-factor-below-one", workflow([stage(retry={"backoff": {"factor": 0.5}})]), "should be greater than or equal to 1"),
    ("workflow-backoff-zero", workflow([stage(retry={"backoff": {"durationSeconds": 0}})]), "should be greater than or equal to 1"),
    ("workflow-parallel-1000", workflow([stage()], maxParallelStages=1000), "should be less than or equal to 16"),
    ("workflow-17-dependencies", workflow([stage(f"d{i}") for i in range(17)] + [stage("z", dependsOn=[f"d{i}" for i in range(17)])]), "must have at most 16 items"),
    ("workflow-agent-empty", workflow([stage(agent="")]), "Unsupported value"),
    ("workflow-stages-not-a-list", {**workflow([]), "spec": {"stages": {"a": 1}}}, "strict decoding error"),
    # ---- lanes: negative and zero quantities, placement that no pod could carry
    ("lane-concurrency-negative", lane({"maxConcurrentJobs": -1}), "should be greater than or equal to 1"),
    ("lane-queue-zero", lane({"maxQueuedJobs": 0}), "should be greater than or equal to 1"),
    ("lane-priority-negative", lane({"priority": -3}), "should be greater than or equal to 0"),
    ("lane-cpu-negative", _resources(requests={"cpu": "-1"}), "must be a non-negative amount such as 500m, 2 or 4Gi"),
    ("lane-memory-negative-int", _resources(limits={"memory": -5}), "should be greater than or equal to 0"),
    ("lane-cpu-limit-zero", _resources(limits={"cpu": "0m"}), "a limit must be greater than zero"),
    ("lane-memory-request-above-limit", _resources(requests={"memory": "2Gi"}, limits={"memory": "1Gi"}), "a request cannot exceed the limit"),
    ("lane-quantity-1mib", _resources(requests={"cpu": "1" * MIB}), "may not be more than 64 bytes"),
    ("lane-resource-gpu-typo", _resources(requests={"nvidia.com/gpu ": "1"}), "resources are named cpu, memory or ephemeral-storage"),
    ("lane-node-selector-unicode", lane({"stageDefaults": {"nodeSelector": {"zone": "süd"}}}), "spec.stageDefaults.nodeSelector.zone"),
    ("lane-node-selector-key-spaces", lane({"stageDefaults": {"nodeSelector": {"a b": "c"}}}), "nodeSelector keys are label keys"),
    ("lane-image-1mib", lane({"stageDefaults": {"image": TOO_BIG}}), "may not be more than 512 bytes"),
    ("lane-image-blank", lane({"stageDefaults": {"image": "evil image:latest"}}), "spec.stageDefaults.image"),
    ("lane-toleration-unicode-key", lane({"stageDefaults": {"tolerations": [{"key": "ключ", "operator": "Exists"}]}}), "spec.stageDefaults.tolerations[0].key"),
    ("lane-17-tolerations", lane({"stageDefaults": {"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(17)]}}), "must have at most 16 items"),
    ("lane-fallback-cross-namespace", lane({"fallbackLane": "other/standard"}), "no '/', no namespace"),
    ("lane-volume-size-negative", lane({"storage": {"type": "Volume", "size": "-1Gi"}}), "must be a non-negative amount such as 500m, 2 or 4Gi"),
    ("lane-cooldown-negative", lane({"circuitBreaker": {"cooldownSeconds": -60}}), "should be greater than or equal to 1"),
    # ---- jobs: references across namespaces, path tricks, numbers out of range
    ("job-lane-cross-namespace", job(laneRef="other-ns/standard"), "no '/', no namespace"),
    ("job-workflow-cross-namespace", job(workflowRef="kube-system/default"), "no '/', no namespace"),
    ("job-configmap-unicode", job(model={"source": {"configMap": {"name": "mödel", "key": "m"}}}), "must be a Kubernetes object name of at most 253 lowercase letters"),
    ("job-configmap-key-traversal", job(model={"source": {"configMap": {"name": "m", "key": "../../etc/passwd"}}}), "spec.model.source.configMap.key"),
    ("job-url-1mib", job(model={"source": {"url": {"url": "https://" + TOO_BIG, "sha256": SHA}}}), "may not be more than 2048 bytes"),
    ("job-sha256-1mib", job(model={"source": {"url": {"url": "https://x/m", "sha256": TOO_BIG}}}), "may not be more than 64 bytes"),
    # A url source is refused at admission: the operator does not download (it failed at run time before).
    ("job-url-in-cluster", job(model={"source": {"url": {"url": "https://example.invalid/m", "sha256": SHA}}}), "the operator does not download models"),
    ("job-pvc-path-1mib", job(model={"source": {"pvc": {"claimName": "c", "path": TOO_BIG}}}), "may not be more than 1024 bytes"),
    ("job-priority-int64-overflow", json.dumps(job()).replace('"laneRef"', '"priority": 9223372036854775808, "laneRef"'), "must be of type integer"),
    ("job-priority-huge", job(priority=10**6), "should be less than or equal to 1000"),
    ("job-deadline-negative", job(deadlineSeconds=-1), "should be greater than or equal to 60"),
    ("job-batch-negative", job(target={"batchSizes": [-1]}), "should be greater than or equal to 1"),
    ("job-batch-9-sizes", job(target={"batchSizes": list(range(1, 10))}), "must have at most 8 items"),
    ("job-size-budget-negative", job(target={"sizeBudgetMB": -1}), "should be greater than 0"),
    ("job-threshold-negative", job(quality={"metric": "max-abs-error", "threshold": -0.1}), "should be greater than or equal to 0"),
    ("job-retain-negative", job(checkpoints={"retain": -1}), "should be greater than or equal to 0"),
    ("job-dataset-traversal", job(quality={"dataset": "configmap/../secrets"}), "spec.quality.dataset"),
    ("job-output-uri-unicode", job(output={"uri": "s3://ärtifacts/digits"}), "uri is s3://BUCKET/PREFIX"),
    ("job-output-secret-unicode", job(output={"uri": "s3://models/digits", "credentialsSecret": "ärtifact"}), "must be a Kubernetes object name of at most 253 lowercase letters"),
    # ---- SLO policies
    ("slo-target-negative", slo([objective(target=-0.5)]), "target is a fraction in (0, 1)"),
    ("slo-target-above-one", slo([objective(target=1.5)]), "target is a fraction in (0, 1)"),
    ("slo-window-negative", slo([objective(window="-5m")]), "must be a positive whole number with one unit"),
    ("slo-window-huge", slo([objective(window="999999999d")]), "must be a positive whole number with one unit"),
    ("slo-1000-objectives", slo([objective(name=f"o{i}") for i in range(1000)]), "must have at most"),
    ("slo-lane-unicode", slo(laneSelector={"names": ["ställ"]}), "must be a name of at most 63 lowercase letters"),
    ("slo-burn-factor-negative", slo(burnRateAlerts=[{"longWindow": "1h", "shortWindow": "5m", "factor": -1, "action": "Freeze"}]), "spec.burnRateAlerts[0].factor"),
]  # fmt: skip
