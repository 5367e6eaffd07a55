"""On the real node (hack/realnode.py: kubelet, containerd, runc, a CNI bridge): what the node
harness cannot show, because there the kernel, the runtime and admission enforce it.

Images: the OOM, read-only root and PodSecurity tests run the busybox-static test image of
support/real_node.py (its `bakeline` a shell script: what is under test is the node, not the
agent); the digits bake runs the project's image built by hack/image.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane import NODE_NAME
from realnode import RealNode
from support.kube import apply, get, job_finished
from support.real_node import (
    TEST_IMAGE,
    Operator,
    one_stage_objects,
    real_namespace,
    terminated,
    wait_pod_finished,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def restricted_pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    """A pod that meets the restricted profile, running the test image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **container,
                }
            ],
        },
    }


def kernel_log() -> list[tuple[float, str]]:
    """The kernel's ring buffer (dmesg) as (seconds since boot, line)."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    found = (re.match(r"\[\s*(\d+\.\d+)\] (.*)", line) for line in out.splitlines())
    return [(float(m[1]), m[2]) for m in found if m]


def kernel_oom_kills(since: float) -> list[str]:
    """The kernel's own record of memory cgroup OOM kills after `since`. By time, not by
    count: the buffer wraps on a machine that has been up a while (this one outlives
    sessions), so counting lines before and after would miss a kill."""
    return [
        line for at, line in kernel_log() if at > since and "Memory cgroup out of memory" in line
    ]


def test_real_node_memory_limit_is_oomkilled_by_the_kernel_and_the_stage_retried(
    real_node: RealNode, tmp_path: Path
) -> None:
    plane = real_node.plane
    namespace = real_namespace(real_node)
    since = max((at for at, _ in kernel_log()), default=0.0)
    # A bare pod first: 256 MiB touched under a 64 MiB limit, nothing but the kernel to stop it.
    hog = restricted_pod(
        "hog",
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        resources={"limits": {"memory": "64Mi"}},
    )
    apply(plane, hog, namespace)
    state = terminated(wait_pod_finished(plane, namespace, "hog"), "main")
    assert state["reason"] == "OOMKilled" and state["exitCode"] == 137, state
    assert state["containerID"].startswith("containerd://")
    kills = kernel_oom_kills(since)
    assert any("(dd)" in line and "UID:65532" in line for line in kills), kills

    # Then a Bakeline stage that does the same, in a pod the operator built: it is retried.
    operator = Operator(plane, namespace, TEST_IMAGE, tmp_path / "operator.log")
    try:
        apply(plane, one_stage_objects("oom-stage", TEST_IMAGE, "64Mi"), namespace)
        for attempt in (1, 2):
            found = wait_pod_finished(plane, namespace, f"oom-stage-import-{attempt}")
            agent = terminated(found, "agent")
            assert agent["reason"] == "OOMKilled", (agent, operator.log())
            assert agent["exitCode"] == 137 and agent["containerID"].startswith("containerd://")
        job = job_finished(plane, "oom-stage", namespace, timeout=120)
    finally:
        operator.stop()
    status = job["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    assert "OOMKilled" in json.dumps(status["stages"][0]), json.dumps(status, indent=1)
    assert get(plane, "pod", "oom-stage-import-3", namespace) is None  # retry.limit 1


def test_real_node_stage_pod_cannot_write_outside_its_volumes(
    real_node: RealNode, tmp_path: Path
) -> None:
    plane = real_node.plane
    namespace = real_namespace(real_node)
    operator = Operator(plane, namespace, TEST_IMAGE, tmp_path / "operator.log")
    try:
        apply(plane, one_stage_objects("rofs-stage", TEST_IMAGE, "128Mi"), namespace)
        found = wait_pod_finished(plane, namespace, "rofs-stage-import-1")
    finally:
        operator.stop()
    agent = terminated(found, "agent")
    message = agent.get("message") or ""
    assert agent["exitCode"] == 1, agent
    assert "wrote /tmp/scratch (emptyDir)" in message, message
    for path in ("/usr/local/bin/planted", "/etc/planted", "/planted"):
        assert f"touch: {path}: Read-only file system" in message, message
        assert f"wrote {path}" not in message, message
    spec = found["spec"]["containers"][0]["securityContext"]
    assert spec["readOnlyRootFilesystem"] is True


def test_real_node_restricted_namespace_runs_stage_pods_and_refuses_privileged(
    real_node: RealNode, tmp_path: Path
) -> None:
    plane = real_node.plane
    namespace = real_namespace(real_node, restricted=True)
    labels = get(plane, "namespace", namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    privileged = restricted_pod("privileged", ["true"])
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(privileged), check=False
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
    assert "privileged" in refused.stderr
    assert get(plane, "pod", "privileged", namespace) is None

    operator = Operator(plane, namespace, TEST_IMAGE, tmp_path / "operator.log")
    try:
        apply(plane, one_stage_objects("psa-stage", TEST_IMAGE, "128Mi"), namespace)
        found = wait_pod_finished(plane, namespace, "psa-stage-import-1")
        job = job_finished(plane, "psa-stage", namespace, timeout=120)
    finally:
        operator.stop()
    # Admitted under `restricted`, and run as the profile says: the image's non-root user, no
    # capability, no privilege escalation, the runtime's default seccomp filter (mode 2).
    agent = terminated(found, "agent")
    message = agent.get("message") or ""
    assert agent["exitCode"] == 2, agent  # the script's "invalid input": one attempt, no retry
    assert "uid=65532" in message, message
    assert "CapEff: 0000000000000000" in message and "NoNewPrivs: 1" in message, message
    assert "Seccomp: 2" in message, message
    # The store container got the pod's bound token (the kubelet asked for it as the node,
    # which the Node authorizer allows for its own pods only), the CA, and the API server's
    # TLS port at the Service address kubelet put in KUBERNETES_SERVICE_HOST.
    store = terminated(found, "store")
    lines = (store.get("message") or "").splitlines()
    assert store["exitCode"] == 0, store
    payload = next(line for line in lines if line.startswith("claims: "))[8:]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["kubernetes.io"]["pod"]["name"] == "psa-stage-import-1", claims
    assert claims["kubernetes.io"]["namespace"] == namespace
    assert claims["kubernetes.io"]["node"]["name"] == NODE_NAME, claims
    assert "ca: 0 certificate(s)" not in lines and any(x.startswith("ca: ") for x in lines), lines
    assert "api 10.0.0.1:443: HTTP/1.0 400 Bad Request" in lines, lines  # TLS port: no plain HTTP
    assert job["status"]["phase"] == "Failed"


@pytest.mark.timeout(7200)  # may build the image first (hack/image caches it by content)
def test_real_node_digits_job_bakes_in_the_project_image(
    real_node: RealNode, tmp_path: Path, repo_root: Path
) -> None:
    image = project_image(real_node, repo_root, tmp_path)
    plane = real_node.plane
    namespace = real_namespace(real_node, restricted=True)
    operator = Operator(plane, namespace, image, tmp_path / "operator.log")
    started = time.monotonic()
    try:
        for name in ("lanes.yaml", "workflow-default.yaml", "bakingjob-digits.yaml"):
            plane.kubectl("apply", "-n", namespace, "-f", str(repo_root / "examples" / name))
        job = job_finished(plane, "digits-cnn", namespace, timeout=1500)
    finally:
        operator.stop()
    status = job["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
    assert status["progress"] == "9/9"
    assert status["result"]["quality"]["passed"]
    pods = json.loads(
        plane.kubectl(
            "get", "pods", "-n", namespace, "-l", "bakeline.io/job=digits-cnn", "-o", "json"
        ).stdout
    )["items"]
    assert pods
    for found in pods:
        assert found["spec"]["nodeName"] == NODE_NAME
        status = found["status"]
        for entry in [*(status.get("initContainerStatuses") or []), *status["containerStatuses"]]:
            assert image.rsplit(":", 1)[-1] in entry["image"], entry  # the image's content hash
            assert entry["containerID"].startswith("containerd://"), entry
    print(f"digits baked on the real node in {time.monotonic() - started:.0f}s")


def project_image(node: RealNode, repo_root: Path, tmp_path: Path) -> str:
    """hack/image's image (built, or from its cache: the reference is the hash of what goes
    into it), written to an OCI archive and imported into the node's containerd: no registry,
    no pull. Its last line of output is the reference."""
    archive = tmp_path / "image.tar"
    started = time.monotonic()
    built = subprocess.run(
        [str(repo_root / "hack" / "image"), f"--oci-archive={archive}"],
        capture_output=True, text=True, timeout=5400, check=False, cwd=repo_root,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    reference = built.stdout.strip().splitlines()[-1].strip()
    imported = time.monotonic()
    node.import_image(archive, reference)
    print(
        f"{reference}: hack/image and its OCI archive {imported - started:.0f}s, "
        f"{archive.stat().st_size / 2**30:.2f} GiB, imported in {time.monotonic() - imported:.0f}s"
    )
    archive.unlink()  # gigabytes: containerd holds the image now
    return reference
