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
from support.kube import apply, job_finished

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


# `view` is an aggregated ClusterRole: the aggregation controller (not run here) fills it from
# system:aggregate-to-view (core objects) and the roles labelled aggregate-to-view, such as the
# chart's for Bakeline's kinds (read from the chart, so a change there is tested here). The
# viewer is bound to exactly those.
def _viewer(cluster: ControlPlane, namespace: str, tmp_path: Path) -> Path:
    chart_rules = _chart_view_rules()
    apply(
        cluster,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "bakeline-view"},
                "rules": chart_rules,
            },
            *(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": f"viewer-{role.replace(':', '-')}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": kind,
                        "name": role,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "viewer", "namespace": namespace}
                    ],
                }
                for kind, role in (
                    ("ClusterRole", "system:aggregate-to-view"),
                    ("Role", "bakeline-view"),
                )
            ),
        ],
        namespace,
    )
    token = cluster.kubectl("create", "token", "viewer", "-n", namespace).stdout.strip()
    return cluster.write_kubeconfig_for_token(tmp_path / "viewer.kubeconfig", token, "viewer")


def _chart_view_rules() -> list[dict[str, Any]]:
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
        if labels.get("rbac.authorization.k8s.io/aggregate-to-view") == "true":
            return list(doc["rules"])
    raise AssertionError("the chart renders no aggregate-to-view ClusterRole")


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
    viewer = _viewer(cluster, namespace, tmp_path)
    # The viewer may not write: the identity is really this small.
    denied = cluster.kubectl(
        "auth", "can-i", "create", "pods", "-n", namespace, "--kubeconfig", str(viewer), check=False
    )
    assert denied.stdout.strip() == "no"

    out = tmp_path / "package"
    done = _fetch(viewer, "baked", "-n", namespace, "--to", str(out))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        assert len(data) == entry["sizeBytes"], entry["path"]
    # The artifact is the one the job reported, byte for byte.
    artifact = (out / manifest["artifact"]).read_bytes()
    assert hashlib.sha256(artifact).hexdigest() == status["result"]["sha256"]
    assert f"{len(manifest['files'])} files" in done.stdout

    again = _fetch(viewer, "baked", "-n", namespace, "--to", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = _fetch(viewer, "nothing", "-n", namespace, "--to", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no such BakingJob" in missing.stderr


def test_fetch_says_what_it_cannot_read_a_volume_lane_package_from(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    scripted_agent({})
    apply(cluster, [_lane("volume", "Volume"), _job("on-claim", "volume")], namespace)
    assert job_finished(cluster, "on-claim", namespace)["status"]["phase"] == "Succeeded"
    done = _fetch(cluster.kubeconfig, "on-claim", "-n", namespace, "--to", str(tmp_path / "p"))
    assert done.returncode == 1 and "only a pod" in done.stderr, done.stderr
    assert not (tmp_path / "p").exists()
