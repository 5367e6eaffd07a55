"""Security on the real API server.

- Every pod the operator creates passes PodSecurity admission at `restricted`: the namespace
  enforces it before the first job, and jobs that exercise every pod shape the operator builds
  (ConfigMap and Volume lanes, a lane with resources, node selector and tolerations, a model
  from a ConfigMap, a retried attempt) all bake; a refused pod would leave its job stuck.
- The operator, run as the chart's ServiceAccount, cannot read Secrets and cannot act outside
  the namespace it is given: what it may not do is refused by the API server, and a job in a
  namespace it is not given is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from e2e.test_install_rbac import SERVICE_ACCOUNT, ChartOperator, can_i
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from reliability.probes import items, wait_terminal

from controlplane import ControlPlane
from support.kube import apply, get

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

API = "bakeline.io/v1alpha1"


def _lane(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Lane", "metadata": {"name": name}, "spec": spec}


def _job(name: str, lane: str, **spec: Any) -> dict[str, Any]:
    body = {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": lane, **spec}
    return {"apiVersion": API, "kind": "BakingJob", "metadata": {"name": name}, "spec": body}


def test_every_pod_the_operator_creates_passes_restricted_pod_security(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    # The control: the plugin is on and this namespace refuses a pod that is not locked down.
    plain = cluster.kubectl(
        "run", "plain", "-n", namespace, "--image=busybox", "--dry-run=server", check=False
    )
    assert plain.returncode != 0 and "violates PodSecurity" in plain.stderr, plain.stderr
    scripted_agent({"graph": [1, 0]})  # every job's graph stage fails once: a second pod
    placement = {
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/hostname": "bakeline-node"},
        "tolerations": [{"key": "bakeline.io/dedicated", "operator": "Exists"}],
        "image": "registry.example/bakeline-agents:canary",
    }
    model = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "small-model"}}
    apply(
        cluster,
        [
            {**model, "binaryData": {"model.onnx": "AAAA"}},
            _lane("configmap", maxConcurrentJobs=4),
            _lane("volume", storage={"type": "Volume", "size": "1Gi"}),
            _lane("placed", stageDefaults=placement),
            _job("on-configmap", "configmap"),
            _job("on-volume", "volume"),
            _job("placed", "placed"),
            # The scripted agent ignores the model file; the pod still mounts the ConfigMap.
            _job(
                "from-configmap",
                "configmap",
                model={"source": {"configMap": {"name": "small-model", "key": "model.onnx"}}},
            ),
        ],
        namespace,
    )
    phases = {}
    for name in ("on-configmap", "on-volume", "placed", "from-configmap"):
        done = wait_terminal(cluster, name, namespace, 180)
        phases[name] = done["status"]["phase"]
    log = operator.log_path.read_text(errors="replace")
    assert "violates PodSecurity" not in log, log[-4000:]
    assert set(phases.values()) == {"Succeeded"}, phases
    pods = items(cluster, "pods", namespace)
    # 4 jobs x 9 stages, plus the retried graph attempt of each: every one admitted.
    assert len(pods) == 4 * 10, sorted(p["metadata"]["name"] for p in pods)
    shapes = {
        (
            tuple(sorted(v for vol in p["spec"].get("volumes") or [] for v in vol if v != "name")),
            bool(p["spec"].get("nodeSelector")),
        )
        for p in pods
    }
    print(f"{len(pods)} pods admitted under restricted, {len(shapes)} distinct shapes: {shapes}")
    assert len(shapes) >= 3  # the pod shapes above really differ


def _status_of(call: Callable[[], Any]) -> int:
    """The HTTP status an API call got: 200, or the refusal's code."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_the_chart_identity_cannot_read_secrets_or_act_outside_its_namespace(
    cluster: ControlPlane,
    namespace: str,
    crds: None,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    outside = f"{namespace}-outside"
    cluster.kubectl("create", "namespace", outside)
    for where in (namespace, outside):
        cluster.kubectl(
            "create", "secret", "generic", "db-password", "-n", where, "--from-literal=p=hunter2"
        )
    chart = ChartOperator(cluster, namespace, tmp_path)
    chart.install("--set", f"watch.namespaces={{{namespace}}}")
    kubeconfig = chart.kubeconfig()
    token = cluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", namespace, "--duration=10m"
    ).stdout.strip()
    as_chart = cluster.api_client(token=token)
    core, custom = client.CoreV1Api(as_chart), client.CustomObjectsApi(as_chart)

    # What the identity may not do, asked of the API server's authorizer.
    # (kubectl auth can-i reads TYPE/NAME as a name: subresources go in --subresource.)
    refused = [
        ("get", "secrets", "-n", namespace),
        ("list", "secrets", "-n", namespace),
        ("watch", "secrets", "-n", namespace),
        ("list", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", outside),
        ("create", "pods", "-n", outside),
        ("list", "bakingjobs.bakeline.io", "-n", outside),
        ("patch", "bakingjobs.bakeline.io", "--subresource=status", "-n", outside),
        ("list", "configmaps", "-n", outside),
        ("list", "namespaces"),
        ("create", "pods", "--subresource=exec", "-n", namespace),
        ("create", "serviceaccounts", "--subresource=token", "-n", namespace),
        ("create", "rolebindings", "-n", namespace),
        ("escalate", "roles", "-n", namespace),
        ("bind", "clusterroles"),
        ("impersonate", "serviceaccounts", "-n", namespace),
        ("create", "clusterrolebindings"),
        ("delete", "customresourcedefinitions"),
        ("patch", "bakingjobs.bakeline.io", "-n", namespace),  # spec is the user's
    ]
    granted = [" ".join(args) for args in refused if can_i(cluster, kubeconfig, *args)]
    assert granted == [], f"the chart's identity may: {granted}"
    # The controls: what it needs is granted, so a "no" above is the authorizer's answer.
    assert can_i(cluster, kubeconfig, "create", "pods", "-n", namespace)
    assert can_i(
        cluster,
        kubeconfig,
        "patch",
        "bakingjobs.bakeline.io",
        "--subresource=status",
        "-n",
        namespace,
    )
    # The same, by trying: the token is refused where it is not granted.
    group, version = API.split("/")
    tries = {
        "read a Secret in its namespace": (
            lambda: core.read_namespaced_secret("db-password", namespace),
            403,
        ),
        "read a Secret outside": (lambda: core.read_namespaced_secret("db-password", outside), 403),
        "list jobs outside": (
            lambda: custom.list_namespaced_custom_object(group, version, outside, "bakingjobs"),
            403,
        ),
        "list jobs in its namespace": (
            lambda: custom.list_namespaced_custom_object(group, version, namespace, "bakingjobs"),
            200,
        ),
    }
    answers = {what: _status_of(call) for what, (call, _) in tries.items()}
    assert answers == {what: code for what, (_, code) in tries.items()}, answers
    # Every ServiceAccount the chart made (the operator's, stage pods' if any): no Secrets.
    for account in items(cluster, "serviceaccounts", namespace):
        name = account["metadata"]["name"]
        if name == "default":
            continue
        user = f"system:serviceaccount:{namespace}:{name}"
        asked = cluster.kubectl(
            "auth", "can-i", "get", "secrets", "-n", namespace, f"--as={user}", check=False
        )
        assert asked.stdout.strip() == "no", f"{name} may read Secrets"

    # Running: a job in its namespace bakes; the same job outside is never touched.
    scripted_agent({})
    lane = _lane("standard", maxConcurrentJobs=2)
    apply(cluster, [lane, _job("inside", "standard")], namespace)
    apply(cluster, [lane, _job("outside", "standard")], outside)
    chart.start()
    try:
        done = wait_terminal(cluster, "inside", namespace, 180)
        assert done["status"]["phase"] == "Succeeded", chart.log()[-3000:]
        untouched = get(cluster, "bakingjob", "outside", outside)
        assert not untouched.get("status"), untouched.get("status")
        assert items(cluster, "pods", outside) == []
        assert chart.denials() == [], chart.denials()  # it never even tried
    finally:
        chart.stop()
