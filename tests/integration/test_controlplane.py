"""The test control plane is a real kube-apiserver + etcd: health, storage, CRDs, watches, RBAC."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from controlplane import ControlPlane
from support.kube import apply, get, wait_for

pytestmark = pytest.mark.cluster


def test_readyz_answers_ok(cluster: ControlPlane) -> None:
    assert cluster.readyz() == "ok"


def test_server_reports_its_pinned_version(cluster: ControlPlane) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == "v1.34.4"
    assert versions["clientVersion"]["gitVersion"] == "v1.34.4"


def test_configmap_round_trip(cluster: ControlPlane, namespace: str) -> None:
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm"},
            "data": {"greeting": "hello"},
        },
        namespace,
    )
    assert get(cluster, "configmap", "cm", namespace)["data"] == {"greeting": "hello"}


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.bakeline.io"},
    "spec": {
        "group": "example.bakeline.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_object_is_created_validated_and_watched(cluster: ControlPlane, namespace: str) -> None:
    apply(cluster, CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.example.bakeline.io")
    custom = client.CustomObjectsApi(cluster.api_client())
    seen: list[dict[str, Any]] = []
    stream = watch.Watch()
    ready = threading.Event()

    def watch_widgets() -> None:
        ready.set()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            "example.bakeline.io",
            "v1",
            namespace,
            "widgets",
            timeout_seconds=30,
        ):
            seen.append(event)
            if event["type"] == "MODIFIED":
                stream.stop()

    watcher = threading.Thread(target=watch_widgets, daemon=True)
    watcher.start()
    ready.wait()
    widget = {
        "apiVersion": "example.bakeline.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 1},
    }
    apply(cluster, widget, namespace)
    wait_for(lambda: any(e["type"] == "ADDED" for e in seen), 20, what="ADDED event")
    widget["spec"] = {"size": 2}
    apply(cluster, widget, namespace)
    watcher.join(timeout=30)
    assert [e["type"] for e in seen][-1] == "MODIFIED"
    assert seen[-1]["object"]["spec"]["size"] == 2
    # The schema is enforced by the server: size must be at least 1.
    widget["spec"] = {"size": 0}
    with pytest.raises(subprocess.CalledProcessError) as refused:
        apply(cluster, widget, namespace)
    assert "spec.size" in refused.value.stderr


def test_service_account_needs_a_role_binding_to_list_pods(
    cluster: ControlPlane, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    pods = client.CoreV1Api(cluster.api_client(token=token))
    with pytest.raises(ApiException) as denied:
        pods.list_namespaced_pod(namespace)
    assert denied.value.status == 403
    cluster.kubectl(
        "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    # RBAC changes propagate through the authorizer's informer: allow a moment.
    wait_for(lambda: _can_list(pods, namespace), 20, what="the RoleBinding to take effect")
    assert pods.list_namespaced_pod(namespace).items == []


def _can_list(pods: client.CoreV1Api, namespace: str) -> bool:
    try:
        pods.list_namespaced_pod(namespace)
    except ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True


def test_taken_port_is_retried_and_a_dead_plane_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import controlplane

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real_free_port = controlplane.free_port
        # etcd takes the first two ports; kube-apiserver is first handed one already in use.
        ports = iter([real_free_port(), real_free_port(), busy])
        monkeypatch.setattr(controlplane, "free_port", lambda: next(ports, 0) or real_free_port())
        plane = ControlPlane(workdir=tmp_path / "cp")
        calls: list[int] = []
        original_spawn = plane._spawn_apiserver

        def spawn(binary: Path, keep_port: bool = False) -> None:
            original_spawn(binary, keep_port)
            calls.append(plane.apiserver_port)

        monkeypatch.setattr(plane, "_spawn_apiserver", spawn)
        try:
            plane.start(log=lambda _: None)
            assert plane.apiserver_port != busy
            assert calls[0] == busy and len(calls) == 2
            assert plane.readyz() == "ok"
            os.killpg(plane.apiserver_pid, signal.SIGKILL)
            wait_for(lambda: not plane.is_healthy(), 10, what="kube-apiserver to die")
            with pytest.raises(controlplane.ControlPlaneError) as died:
                plane.assert_alive()
            assert "kube-apiserver" in str(died.value)
            assert "Last lines of its log" in str(died.value)
        finally:
            plane.stop()
    assert not plane.etcd_pid and not plane.apiserver_pid
