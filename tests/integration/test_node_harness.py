"""The node harness runs pods bound to its fake Node as local processes, as a kubelet would."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness

pytestmark = pytest.mark.cluster


def _pod(name: str, code: str, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "bakeline:test",
        "command": [sys.executable, "-c", code],
    }
    container.update(extra.pop("container", {}))
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    spec.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _finished(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any] | None:
    pod = get(cluster, "pod", name, namespace)
    return pod if pod and pod["status"].get("phase") in ("Succeeded", "Failed") else None


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"]["terminated"])


def test_successful_pod_reports_exit_code_and_termination_message(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    code = "open('/dev/termination-log', 'w').write('{\"ok\": true}')"
    apply(cluster, _pod("ok", code), namespace)
    pod = wait_for(lambda: _finished(cluster, "ok", namespace), 60, what="pod ok to finish")
    assert pod["spec"]["nodeName"] == node.node_name
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["startTime"]
    terminated = _terminated(pod)
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert terminated["message"] == '{"ok": true}'


def test_failing_pod_reports_failed_with_exit_code(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    apply(
        cluster,
        _pod(
            "bad",
            "import sys; print('boom'); sys.exit(3)",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
        namespace,
    )
    pod = wait_for(lambda: _finished(cluster, "bad", namespace), 60, what="pod bad to finish")
    assert pod["status"]["phase"] == "Failed"
    terminated = _terminated(pod)
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert "boom" in terminated["message"]  # FallbackToLogsOnError
    assert "boom" in node.logs(namespace, "bad")


def test_configmap_volume_and_env_reach_the_process(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"model.txt": "weights-v1", "mode": "fast"},
        },
        namespace,
    )
    code = (
        "import os; data = open('/etc/cfg/model.txt').read();"
        "open('/dev/termination-log','w').write(data + ' ' + os.environ['MODE'] + ' '"
        " + os.environ['POD'])"
    )
    pod = _pod(
        "reader",
        code,
        container={
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
            "env": [
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        },
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
    )
    apply(cluster, pod, namespace)
    done = wait_for(lambda: _finished(cluster, "reader", namespace), 60, what="reader to finish")
    assert done["status"]["phase"] == "Succeeded", node.logs(namespace, "reader")
    assert _terminated(done)["message"] == "weights-v1 fast reader"


def test_two_pods_on_one_claim_share_files(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "shared"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    volume = [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    apply(
        cluster,
        _pod(
            "writer",
            "open('/data/artifact.bin','wb').write(b'baked')",
            container=mount,
            volumes=volume,
        ),
        namespace,
    )
    wait_for(lambda: _finished(cluster, "writer", namespace), 60, what="writer to finish")
    reader = "open('/dev/termination-log','w').write(open('/data/artifact.bin').read())"
    apply(cluster, _pod("reader", reader, container=mount, volumes=volume), namespace)
    done = wait_for(lambda: _finished(cluster, "reader", namespace), 60, what="reader to finish")
    assert _terminated(done)["message"] == "baked"
    assert (node.pvc_dir(namespace, "shared") / "artifact.bin").read_bytes() == b"baked"


def test_deleting_a_running_pod_kills_its_process(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    apply(cluster, _pod("sleeper", "import time; time.sleep(600)"), namespace)
    pid = wait_for(lambda: node.pid_of(namespace, "sleeper"), 60, what="sleeper to start")
    wait_for(
        lambda: (
            (get(cluster, "pod", "sleeper", namespace) or {}).get("status", {}).get("phase")
            == "Running"
        ),
        30,
        what="sleeper to be Running",
    )
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--wait=true", timeout=60)
    assert get(cluster, "pod", "sleeper", namespace) is None
    wait_for(lambda: not _alive(pid), 10, what=f"process {pid} to end")


def test_active_deadline_kills_the_process_and_fails_the_pod(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    apply(cluster, _pod("slow", "import time; time.sleep(600)", activeDeadlineSeconds=2), namespace)
    pod = wait_for(lambda: _finished(cluster, "slow", namespace), 60, what="slow to be killed")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "DeadlineExceeded"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _container(name: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "bakeline:test",
        "command": [sys.executable, "-c", code],
        **extra,
    }


def _states(pod: dict[str, Any], key: str = "containerStatuses") -> dict[str, dict[str, Any]]:
    return {c["name"]: c["state"] for c in pod["status"].get(key) or []}


def test_init_containers_run_in_order_then_the_containers_together(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    # Each init container appends to a shared emptyDir; the two containers meet there: the
    # second waits for a file the first writes, so they must run at the same time.
    append = "open('/work/order','a').write('{}\\n'); open('/dev/termination-log','w').write('{}')"
    meet = (
        "import os, time\n"
        "open('/work/{me}', 'w').write('here')\n"
        "while not os.path.exists('/work/{other}'): time.sleep(0.05)\n"
        "open('/dev/termination-log', 'w').write(open('/work/order').read().strip())\n"
        "raise SystemExit({code})"
    )
    mount = {"volumeMounts": [{"name": "work", "mountPath": "/work"}]}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "split"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                _container("first", append.format("first", "one"), **mount),
                _container("second", append.format("second", "two"), **mount),
            ],
            "containers": [
                _container("left", meet.format(me="left", other="right", code=0), **mount),
                _container("right", meet.format(me="right", other="left", code=3), **mount),
            ],
        },
    }
    apply(cluster, pod, namespace)
    done = wait_for(lambda: _finished(cluster, "split", namespace), 60, what="split to finish")
    assert done["status"]["phase"] == "Failed"  # one container exited 3
    inits = _states(done, "initContainerStatuses")
    assert [inits[n]["terminated"]["message"] for n in ("first", "second")] == ["one", "two"]
    states = _states(done)
    assert states["left"]["terminated"]["exitCode"] == 0
    assert states["left"]["terminated"]["message"] == "first\nsecond"
    assert states["right"]["terminated"]["exitCode"] == 3
    assert states["right"]["terminated"]["reason"] == "Error"


def test_a_failed_init_container_fails_the_pod_and_the_containers_never_start(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "noinit"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                _container(
                    "restore",
                    "open('/dev/termination-log','w').write('input gone'); raise SystemExit(2)",
                )
            ],
            "containers": [_container("main", "open('/tmp/never-ran-harness', 'w')")],
        },
    }
    apply(cluster, pod, namespace)
    done = wait_for(lambda: _finished(cluster, "noinit", namespace), 60, what="noinit to fail")
    assert done["status"]["phase"] == "Failed"
    restore = _states(done, "initContainerStatuses")["restore"]["terminated"]
    assert (restore["exitCode"], restore["message"]) == (2, "input gone")
    assert _states(done)["main"] == {"waiting": {"reason": "PodInitializing"}}
    assert node.container_env(namespace, "noinit", "main") is None  # never started


def test_a_projected_token_reaches_only_the_containers_that_mount_it(
    cluster: ControlPlane, namespace: str, node: NodeHarness
) -> None:
    cluster.kubectl("create", "serviceaccount", "store", "-n", namespace)
    token = {
        "name": "api-token",
        "projected": {
            "sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]
        },
    }
    mount = {"name": "api-token", "mountPath": "/var/run/secrets/tok", "readOnly": True}
    report = (
        "import os; p = os.environ.get('TOKEN_DIR', '') + '/token';"
        "open('/dev/termination-log','w').write(str(os.path.isfile(p)))"
    )
    env = [{"name": "TOKEN_DIR", "value": "/var/run/secrets/tok"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tokens"},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "store",
            "automountServiceAccountToken": False,
            "volumes": [token],
            "containers": [
                _container("agent", report, env=env),
                _container("store", report, env=env, volumeMounts=[mount]),
            ],
        },
    }
    apply(cluster, pod, namespace)
    done = wait_for(lambda: _finished(cluster, "tokens", namespace), 60, what="tokens to finish")
    states = _states(done)
    # The path resolves to the token only where it is mounted.
    assert states["store"]["terminated"]["message"] == "True"
    assert states["agent"]["terminated"]["message"] == "False"
    agent_env = node.container_env(namespace, "tokens", "agent")
    store_env = node.container_env(namespace, "tokens", "store")
    assert agent_env is not None and store_env is not None
    assert agent_env["TOKEN_DIR"] == "/var/run/secrets/tok"  # not rewritten: no such mount
    assert store_env["TOKEN_DIR"] != "/var/run/secrets/tok"
