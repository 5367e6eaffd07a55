"""What the reliability tests read from the operator and the API server: metrics, phases, pods."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controlplane import ControlPlane
from support.kube import get, wait_for

TERMINAL = ("Succeeded", "Failed")


def scrape(port: int) -> dict[str, float]:
    """Every sample of the operator's /metrics, keyed `name{label=value,...}` (sorted labels).
    Parsing as Prometheus does: a malformed exposition raises here."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """The sum of a series over all its labels."""
    return sum(value for key, value in samples.items() if key.split("{", 1)[0] == name)


def api_requests(port: int) -> float:
    return total(scrape(port), "bakeline_api_requests_total")


def phase(cluster: ControlPlane, kind: str, name: str, namespace: str) -> str | None:
    obj = get(cluster, kind, name, namespace)
    return ((obj or {}).get("status") or {}).get("phase")


def wait_terminal(
    cluster: ControlPlane, name: str, namespace: str, timeout: float = 120, log: str = ""
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        job = get(cluster, "bakingjob", name, namespace)
        return job if ((job or {}).get("status") or {}).get("phase") in TERMINAL else None

    return wait_for(probe, timeout, interval=0.5, what=f"job {namespace}/{name} to end")


def items(cluster: ControlPlane, resource: str, namespace: str, *selector: str) -> list[Any]:
    out = cluster.kubectl("get", resource, "-n", namespace, *selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def condition_of(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def checkpoint_records(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return items(cluster, "configmaps", namespace, "-l", "bakeline.io/component=checkpoint")


def unverified_checkpoints(
    cluster: ControlPlane, namespace: str, pvc_dir: Callable[[str, str], Path]
) -> tuple[int, list[str]]:
    """(records checked, problems): each record's artifact, read from its job's volume (the
    node harness's directory for the claim), must have the sha256 the record states."""
    problems: list[str] = []
    records = checkpoint_records(cluster, namespace)
    for record in records:
        data = record.get("data") or {}
        name = record["metadata"]["name"]
        if data.get("storage") != "Volume":
            problems.append(f"{name}: stored as {data.get('storage')}, not on a volume")
            continue
        artifact = pvc_dir(namespace, data["claim"]) / data["checkpoint"] / "model.bin"
        if not artifact.is_file():
            problems.append(f"{name}: {artifact} is missing")
        elif hashlib.sha256(artifact.read_bytes()).hexdigest() != data.get("artifactSha256"):
            problems.append(f"{name}: sha256 of {artifact} differs from the record")
    return len(records), problems


# Four uncached stages, one after another: the chain the chaos tests run their jobs through.
CHAIN_STAGES = ("import", "graph", "quantize", "package")
CHAIN_AGENTS = ("BakingCoordinator", "GraphOptimizer", "ModelOptimizer", "DeploymentPreparer")


def chain_workflow(name: str) -> dict[str, Any]:
    """A Workflow named `name` running CHAIN_STAGES in order, none served from the cache."""
    stages = []
    for i, (stage_name, agent) in enumerate(zip(CHAIN_STAGES, CHAIN_AGENTS, strict=True)):
        stage: dict[str, Any] = {"name": stage_name, "agent": agent, "cache": False}
        if i:
            stage["dependsOn"] = [CHAIN_STAGES[i - 1]]
        stages.append(stage)
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"stages": stages},
    }
