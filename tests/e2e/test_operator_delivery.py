"""The operator delivers a Succeeded job's package to spec.output from a delivery pod that alone
holds the Secret: to a real S3 server and a real OCI registry (started by the fixtures), each
read back here with a client of the test's own. Wrong credentials give a condition naming them
and back off; a second delivery of the same package writes nothing new."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from controlplane import ControlPlane
from support.kube import apply, condition, get, job_finished, wait_for, warnings_about
from support.storage_servers import registry_secret, s3_client, s3_secret

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _lane(storage: str) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": "standard"},
        "spec": {"maxConcurrentJobs": 2, "storage": {"type": storage}},
    }


def _job(name: str, output: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "output": output},
    }


def _delivered(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = get(cluster, "bj", name, namespace) or {}
        held = condition(job, "Delivered") or {}
        return job if held.get("status") == "True" else None

    try:
        return wait_for(done, 120, interval=1, what=f"{name}'s package to be delivered")
    except AssertionError:
        job = get(cluster, "bj", name, namespace) or {}
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
        raise AssertionError(json.dumps(job.get("status"), indent=1) + pods[-3000:]) from None


def test_the_operator_delivers_to_s3_from_a_pod_holding_the_secret(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    s3_server: Any,
) -> None:
    scripted_agent({})
    client = s3_client(s3_server)
    client.create_bucket(Bucket=f"b-{namespace}")
    output = {
        "uri": f"s3://b-{namespace}/digits",
        "endpoint": s3_server.endpoint,
        "credentialsSecret": "s3-writer",
        "insecure": True,
    }
    apply(
        cluster,
        [_lane("ConfigMap"), s3_secret(s3_server, "s3-writer"), _job("shipped", output)],
        namespace,
    )
    job = _delivered(cluster, "shipped", namespace)
    status = job["status"]
    assert status["phase"] == "Succeeded" and status["output"]["phase"] == "Delivered"
    raw = client.get_object(Bucket=f"b-{namespace}", Key="digits/manifest.json")["Body"].read()
    assert status["output"]["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw)
    for entry in manifest["files"]:
        body = client.get_object(Bucket=f"b-{namespace}", Key=f"digits/{entry['path']}")["Body"]
        assert hashlib.sha256(body.read()).hexdigest() == entry["sha256"], entry["path"]
    artifact = client.get_object(Bucket=f"b-{namespace}", Key=f"digits/{manifest['artifact']}")
    assert hashlib.sha256(artifact["Body"].read()).hexdigest() == status["result"]["sha256"]
    # Only the delivery pod holds the Secret; no stage pod names it.
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    holders = [p["metadata"]["name"] for p in pods["items"] if "s3-writer" in json.dumps(p["spec"])]
    assert holders == ["shipped-deliver-1"], holders

    # A changed output (a new generation) is delivered again; the same bytes are not rewritten.
    patch = json.dumps({"spec": {"output": {**output, "region": "us-east-1"}}})
    cluster.kubectl("patch", "bj", "shipped", "-n", namespace, "--type=merge", "-p", patch)

    def again() -> dict[str, Any] | None:
        out = ((get(cluster, "bj", "shipped", namespace) or {}).get("status") or {}).get("output")
        return out if out and out.get("attempts") == 2 and out.get("phase") == "Delivered" else None

    second = wait_for(again, 120, interval=1, what="the second delivery")
    assert "0 files written" in second["message"], second


def test_wrong_credentials_are_a_condition_that_names_them_and_backs_off(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    s3_server: Any,
) -> None:
    scripted_agent({})
    s3_client(s3_server).create_bucket(Bucket=f"w-{namespace}")
    output = {
        "uri": f"s3://w-{namespace}/digits",
        "endpoint": s3_server.endpoint,
        "credentialsSecret": "bad-keys",
        "insecure": True,
    }
    apply(
        cluster,
        [_lane("Volume"), s3_secret(s3_server, "bad-keys", "wrong"), _job("refused", output)],
        namespace,
    )

    def refused() -> dict[str, Any] | None:
        job = get(cluster, "bj", "refused", namespace) or {}
        held = condition(job, "Delivered") or {}
        return job if held.get("reason") == "DeliveryRefused" else None

    job = wait_for(refused, 120, interval=1, what="the delivery to be refused")
    held = condition(job, "Delivered") or {}
    assert "the credentials were refused" in held["message"], held
    assert "Secret bad-keys" in held["message"] and "trying again in 300s" in held["message"]
    assert job["status"]["phase"] == "Succeeded"  # the bake is good; its delivery is not
    [warning] = [
        w for w in warnings_about(cluster, namespace, "refused") if w["reason"] == "DeliveryRefused"
    ]
    assert "Secret bad-keys" in warning["message"]
    # No retry storm: one delivery pod in the seconds that follow.
    time.sleep(5)
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert [p for p in pods if "-deliver-" in p] == ["pod/refused-deliver-1"], pods


def test_the_operator_delivers_to_an_oci_registry(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    oci_registry: Any,
) -> None:
    scripted_agent({})
    secret = registry_secret(oci_registry, "registry")
    repo = f"{namespace}/digits"
    output = {
        "uri": f"oci://{oci_registry.host}/{repo}:v1",
        "credentialsSecret": "registry",
        "insecure": True,
    }
    apply(cluster, [_lane("Volume"), secret, _job("pushed", output)], namespace)
    status = _delivered(cluster, "pushed", namespace)["status"]
    auth = (oci_registry.username, oci_registry.password)
    base = f"{oci_registry.endpoint}/v2/{repo}"
    answer = requests.get(
        f"{base}/manifests/v1",
        auth=auth,
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["Docker-Content-Digest"] == status["output"]["digest"]
    titles = {}
    for layer in answer.json()["layers"]:
        blob = requests.get(f"{base}/blobs/{layer['digest']}", auth=auth, timeout=60).content
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        titles[layer["annotations"]["org.opencontainers.image.title"]] = blob
    manifest = json.loads(titles["manifest.json"])
    assert {entry["path"] for entry in manifest["files"]} | {"manifest.json"} == set(titles)
    assert job_finished(cluster, "pushed", namespace)["status"]["phase"] == "Succeeded"


def test_the_operator_delivers_to_a_folder_on_a_pvc_claim(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    node: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    """pvc://CLAIM/PATH: the delivery pod mounts the user's claim (and no credentials) and
    writes the package into PATH there, the manifest last; a second delivery of the same
    package writes nothing new."""
    scripted_agent({})
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    output = {"uri": "pvc://models/digits/v1"}
    apply(cluster, [_lane("Volume"), claim, _job("on-claim", output)], namespace)
    job = _delivered(cluster, "on-claim", namespace)
    status = job["status"]
    assert status["output"]["uri"] == "pvc://models/digits/v1", status["output"]
    folder = node.pvc_dir(namespace, "models") / "digits" / "v1"
    raw = (folder / "manifest.json").read_bytes()
    assert status["output"]["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw)
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    artifact = (folder / manifest["artifact"]).read_bytes()
    assert hashlib.sha256(artifact).hexdigest() == status["result"]["sha256"]
    assert not list(folder.rglob(".*.partial"))
    pod = json.loads(
        cluster.kubectl("get", "pod", "on-claim-deliver-1", "-n", namespace, "-o", "json").stdout
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"].get("readOnly", False)
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": False, "on-claim-checkpoints": True}, claims

    # A new generation delivers again; the bytes there are the same, so none is rewritten.
    patch = json.dumps({"spec": {"checkpoints": {"retain": 2}}})
    cluster.kubectl("patch", "bj", "on-claim", "-n", namespace, "--type=merge", "-p", patch)

    def again() -> dict[str, Any] | None:
        out = ((get(cluster, "bj", "on-claim", namespace) or {}).get("status") or {}).get("output")
        return out if out and out.get("attempts") == 2 and out.get("phase") == "Delivered" else None

    second = wait_for(again, 120, interval=1, what="the second delivery")
    assert "0 files written" in second["message"], second
