"""Fixtures of the real node (hack/realnode.py): a kubelet on containerd and runc, a CNI
bridge, kube-scheduler, images imported from archives (no registry).

The real node has a control plane of its own, `real_cluster`: the node harness binds every
pending pod of the control plane it plays for, so on a shared one it would take these pods.
Tests that use these fixtures have `real_node` in their names (`pytest -k real_node`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane, free_port, running
from realnode import RealNode, busybox_archive, kube_root_ca
from realnode import running as node_running
from support.kube import get, wait_for

REPO = Path(__file__).resolve().parents[2]
# A small image from Debian's busybox-static, for what the kernel and runc enforce; the
# project's image (hack/image) is for the bake itself (test_real_node_digits...).
TEST_IMAGE = "localhost/bakeline/node-test:1"

# The test image's `bakeline`: what a stage pod's containers do here, chosen by the pod's name
# (`<job>-<stage>-<attempt>`): the kernel, runc and admission are what is under test, not the
# agent. Each writes what it saw to the termination message, as the real wrapper would.
STAGE_SCRIPT = r"""#!/bin/sh
say() { printf '%s\n' "$*" >> "${BAKELINE_TERMINATION_MESSAGE_PATH:-/dev/termination-log}"; }
role="$1 $2"
case "$role" in
"stage store"|"stage restore")
  # The store container holds the pod's bound token: show its claims, and that the API
  # server's TLS port answers at the Service address kubelet gave (busybox speaks no TLS
  # that could check the CA: the project image's store does, in the digits bake).
  account=/var/run/secrets/kubernetes.io/serviceaccount
  say "claims: $(cut -d. -f2 $account/token)"
  say "ca: $(grep -c 'BEGIN CERTIFICATE' $account/ca.crt) certificate(s)"
  answer=$(printf 'GET /readyz HTTP/1.0\r\n\r\n' |
    nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" | head -n 1)
  say "api $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT: $answer"
  exit 0 ;;
esac
case "$(hostname)" in
oom-*)
  say "allocating 256 MiB"
  exec dd if=/dev/zero of=/dev/null bs=256M count=1 ;;
rofs-*)
  touch /tmp/scratch && say "wrote /tmp/scratch (emptyDir)"
  for path in /usr/local/bin/planted /etc/planted /planted; do
    if err=$(touch "$path" 2>&1); then say "wrote $path"; else say "$err"; fi
  done
  exit 1 ;;
*)
  say "$(id)"
  say "$(grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr '\t\n' '  ')"
  exit 2 ;;
esac
"""


def test_image_archive() -> Path:
    return busybox_archive(TEST_IMAGE, [("usr/local/bin/bakeline", STAGE_SCRIPT, 0o755)])


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir = tmp_path_factory.mktemp("real-controlplane")
    with running(workdir, log=lambda message: print(message, flush=True)) as plane:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", timeout=60)
        yield plane


@pytest.fixture(scope="session")
def real_node(
    real_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNode]:
    """The node, Ready, with the test image imported. Its work directory is short: the
    containerd socket's path must fit a unix socket address (108 bytes). The logs of
    containerd, kubelet and kube-scheduler are kept in the session's temporary directory."""
    workdir = Path(tempfile.mkdtemp(prefix="bkl-node-"))
    try:
        with node_running(workdir, real_cluster, log=lambda m: print(m, flush=True)) as node:
            node.import_image(test_image_archive())
            yield node
    finally:
        logs = tmp_path_factory.mktemp("real-node-logs")
        for log in workdir.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)


def real_namespace(node: RealNode, restricted: bool = False) -> str:
    """A namespace of the real node's control plane with what stage pods need there: the
    kube-root-ca.crt ConfigMap (no controller-manager publishes it) and the chart's stage
    ServiceAccount, Role, RoleBinding and admission policy."""
    plane, name = node.plane, f"t-{secrets.token_hex(4)}"
    plane.kubectl("create", "namespace", name)
    if restricted:
        plane.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    kube_root_ca(plane, name)
    rendered = plane.helm(
        "template", "rel", str(REPO / "charts" / "bakeline"), "-n", name,
        "--show-only", "templates/stage-rbac.yaml",
        "--show-only", "templates/stage-admission-policy.yaml",
        "--set", f"watch.namespaces={{{name}}}",
    ).stdout  # fmt: skip
    plane.kubectl("apply", "-n", name, "-f", "-", input=rendered)
    return name


class Operator:
    """`bakeline operator` for one namespace of the real node's control plane."""

    def __init__(self, plane: ControlPlane, namespace: str, image: str, log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
        with log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                [
                    "bakeline", "operator", "-n", namespace, f"--image={image}",
                    f"--metrics-port={free_port()}", f"--health-port={free_port()}",
                ],
                env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=log_path.parent,  # never the repo root: operator/ would shadow `operator`
            )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def one_stage_objects(job: str, image: str, memory_limit: str) -> str:
    """A Lane whose stage pods run `image` with a memory limit, a one-stage Workflow retried
    once after a second, and a job: the smallest bake the operator drives through pods."""
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "bakeline.io/v1alpha1",
            "kind": "Lane",
            "metadata": {"name": "node"},
            "spec": {
                "maxConcurrentJobs": 2,
                "storage": {"type": "ConfigMap"},
                "stageDefaults": {
                    "image": image,
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "32Mi"},
                        "limits": {"memory": memory_limit},
                    },
                },
            },
        },
        {
            "apiVersion": "bakeline.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "one-stage"},
            "spec": {
                "stages": [
                    {
                        "name": "import",
                        "agent": "BakingCoordinator",
                        "timeoutSeconds": 300,
                        "onFailure": "Retry",
                        "retry": {"limit": 1, "backoff": {"durationSeconds": 1}},
                    }
                ]
            },
        },
        {
            "apiVersion": "bakeline.io/v1alpha1",
            "kind": "BakingJob",
            "metadata": {"name": job},
            "spec": {
                "model": {"source": {"builtin": "digits-cnn"}},
                "workflowRef": "one-stage",
                "laneRef": "node",
            },
        },
    ]
    return "\n---\n".join(json.dumps(o) for o in objects)


def wait_pod_finished(
    plane: ControlPlane, namespace: str, name: str, timeout: float = 180
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        found = get(plane, "pod", name, namespace) or {}
        return (
            found if (found.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
        )

    try:
        return wait_for(finished, timeout, interval=1, what=f"pod {namespace}/{name} to finish")
    except AssertionError as exc:
        described = plane.kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
        raise AssertionError(f"{exc}\n{described}") from None


def terminated(found: dict[str, Any], container: str) -> dict[str, Any]:
    """The container's terminated state (init containers included)."""
    status = found.get("status") or {}
    for entry in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        if entry["name"] == container:
            return dict(entry["state"]["terminated"]) | {"containerID": entry.get("containerID")}
    raise AssertionError(f"no container {container} in {json.dumps(status)}")
