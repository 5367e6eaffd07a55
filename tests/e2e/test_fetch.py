"""`bakeline fetch`: a finished job's package out of the cluster, as an identity holding no
more than the namespace's `view` role (and the chart's aggregated view rules for Bakeline's
kinds, which the aggregation controller would fold into `view`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, job_finished, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _lane(name: str, storage: str) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": name},
        "spec": {"maxConcurrentJobs": 2, "storage": {"type": storage}},
    }


def _job(name: str, lane: str) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": lane},
    }


RBAC = "rbac.authorization.k8s.io"


# `view` and `edit` are aggregated ClusterRoles: the aggregation controller (not run here) fills
# them from system:aggregate-to-view / -edit (core objects) and the roles labelled
# aggregate-to-view / -edit, such as the chart's for Bakeline's kinds (read from the chart, so
# a change there is tested here). The identity is bound to exactly those (edit includes view).
def _identity(cluster: ControlPlane, namespace: str, tmp_path: Path, role: str) -> Path:
    levels = ("view", "edit") if role == "edit" else ("view",)
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": role}}
    ]
    for level in levels:
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"bakeline-{level}"},
                "rules": _chart_rules(level),
            }
        )
        for kind, name in (
            ("ClusterRole", f"system:aggregate-to-{level}"),
            ("Role", f"bakeline-{level}"),
        ):
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": f"{role}-{name.replace(':', '-')}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": kind,
                        "name": name,
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": role, "namespace": namespace}],
                }
            )
    apply(cluster, objects, namespace)
    token = cluster.kubectl("create", "token", role, "-n", namespace).stdout.strip()
    return cluster.write_kubeconfig_for_token(tmp_path / f"{role}.kubeconfig", token, role)


def _chart_rules(level: str) -> list[dict[str, Any]]:
    import yaml

    from controlplane import binary_path

    root = Path(__file__).resolve().parents[2]
    rendered = subprocess.run(
        [
            str(binary_path("helm")),
            "template",
            "rel",
            str(root / "charts" / "bakeline"),
            "--set",
            "rbac.aggregateToDefaultRoles=true",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for doc in yaml.safe_load_all(rendered):
        labels = ((doc or {}).get("metadata") or {}).get("labels") or {}
        if labels.get(f"rbac.authorization.k8s.io/aggregate-to-{level}") == "true":
            return list(doc["rules"])
    raise AssertionError(f"the chart renders no aggregate-to-{level} ClusterRole")


def _fetch(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        ["bakeline", "fetch", *args], env=env, capture_output=True, text=True, check=False
    )


def test_fetch_a_configmap_lane_package_as_the_view_role(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    scripted_agent({})
    apply(cluster, [_lane("stored", "ConfigMap"), _job("baked", "stored")], namespace)
    status = job_finished(cluster, "baked", namespace)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status) + operator.log()
    viewer = _identity(cluster, namespace, tmp_path, "view")
    # The viewer may not write: the identity is really this small.
    denied = cluster.kubectl(
        "auth", "can-i", "create", "pods", "-n", namespace, "--kubeconfig", str(viewer), check=False
    )
    assert denied.stdout.strip() == "no"

    out = tmp_path / "package"
    done = _fetch(viewer, "baked", "-n", namespace, "--to", str(out))
    assert done.returncode == 0, done.stderr
    _verified(out, status)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert f"{len(files)} files" in done.stdout

    again = _fetch(viewer, "baked", "-n", namespace, "--to", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = _fetch(viewer, "nothing", "-n", namespace, "--to", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no such BakingJob" in missing.stderr


def _verified(out: Path, status: dict[str, Any]) -> bytes:
    """Every file of the fetched package against its manifest; the artifact's bytes, which
    must be the ones the job reported."""
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        assert len(data) == entry["sizeBytes"], entry["path"]
    artifact = (out / str(manifest["artifact"])).read_bytes()
    assert hashlib.sha256(artifact).hexdigest() == status["result"]["sha256"]
    return artifact


def test_fetch_a_volume_lane_package_as_the_view_role(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    """The operator copies a Succeeded Volume-lane job's package into ConfigMaps (its fetch
    pod, once), so an identity that may create nothing fetches it."""
    scripted_agent({})
    apply(cluster, [_lane("volume", "Volume"), _job("on-claim", "volume")], namespace)
    status = job_finished(cluster, "on-claim", namespace)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status) + operator.log()
    exported = wait_for(
        lambda: _exported(cluster, namespace, "on-claim", "Exported"),
        timeout=120,
        what="Exported=True",
    )
    assert exported["status"] == "True", exported
    assert "view role" in exported["message"]
    # The copy ran as the stage ServiceAccount, in a pod of the job's (deleted with it).
    pod = json.loads(
        cluster.kubectl(
            "get", "pod", "-n", namespace, "on-claim-fetch-package-1", "-o", "json"
        ).stdout
    )
    assert pod["spec"]["serviceAccountName"] == "bakeline-stage"
    assert pod["metadata"]["ownerReferences"][0]["name"] == "on-claim"

    viewer = _identity(cluster, namespace, tmp_path, "view")
    out = tmp_path / "package"
    done = _fetch(viewer, "on-claim", "-n", namespace, "--to", str(out))
    assert done.returncode == 0, done.stderr
    artifact = _verified(out, status)
    again = _fetch(viewer, "on-claim", "-n", namespace, "--to", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert _verified(tmp_path / "again", status) == artifact
    # One copy: the operator made one pod, and fetching made none.
    pods = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "bakeline.io/component=fetch", "-o", "name"
    ).stdout.split()
    assert pods == ["pod/on-claim-fetch-package-1"], pods


def test_fetch_a_volume_lane_package_above_the_export_limit_needs_the_edit_role(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    """A package above --export-max-bytes stays on the volume only: the condition says so,
    the view role is told why it cannot fetch, and the edit role's fetch pod copies it."""
    operator.stop()
    operator.extra_args = ["--export-max-bytes=1"]
    operator.start()
    scripted_agent({})
    apply(cluster, [_lane("volume", "Volume"), _job("on-claim", "volume")], namespace)
    status = job_finished(cluster, "on-claim", namespace)["status"]
    assert status["phase"] == "Succeeded"
    kept = wait_for(
        lambda: _exported(cluster, namespace, "on-claim", "NotExported"),
        timeout=60,
        what="Exported=False NotExported",
    )
    assert "--export-max-bytes 1" in kept["message"], kept
    viewer = _identity(cluster, namespace, tmp_path, "view")
    refused = _fetch(viewer, "on-claim", "-n", namespace, "--to", str(tmp_path / "v"))
    assert refused.returncode == 1 and "may not create pods" in refused.stderr, refused.stderr
    assert "--export-max-bytes" in refused.stderr  # it says why the operator made no copy
    assert not (tmp_path / "v").exists()

    editor = _identity(cluster, namespace, tmp_path, "edit")
    out = tmp_path / "package"
    done = _fetch(editor, "on-claim", "-n", namespace, "--to", str(out))
    assert done.returncode == 0, done.stderr
    artifact = _verified(out, status)
    pod = json.loads(
        cluster.kubectl(
            "get", "pod", "-n", namespace, "on-claim-fetch-package-1", "-o", "json"
        ).stdout
    )
    assert pod["spec"]["serviceAccountName"] == "bakeline-stage"
    # A second fetch reuses what the first pod stored.
    again = _fetch(editor, "on-claim", "-n", namespace, "--to", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert _verified(tmp_path / "again", status) == artifact


def _exported(
    cluster: ControlPlane, namespace: str, job: str, reason: str
) -> dict[str, Any] | None:
    """The job's Exported condition once its reason is `reason`."""
    status = (
        json.loads(
            cluster.kubectl("get", "bakingjob", job, "-n", namespace, "-o", "json").stdout
        ).get("status")
        or {}
    )
    found = [c for c in status.get("conditions") or [] if c["type"] == "Exported"]
    return found[0] if found and found[0]["reason"] == reason else None
