"""What a stage pod's token may do, on the real API server with the chart's stage RBAC and
admission policy (charts/bakeline/templates/stage-rbac.yaml, stage-admission-policy.yaml).

The token of the store containers on ConfigMap lanes (bound to its pod, as kubelet projects it)
may store and restore its own job's checkpoints, and nothing else: not another job's store, not
the operator's checkpoint records, not any other ConfigMap, not a mutable one, no other verb;
a token of the same ServiceAccount that is bound to no pod may write nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.checkpoints import ConfigMapStore
from bakeline.checkpoints.manifest import Manifest, file_entry, write_manifest
from bakeline.runtime import pods
from bakeline.stagepod.store import ApiError, ApiServer, KubeConfigMapClient
from controlplane import ControlPlane
from support.kube import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "bakeline-stage"  # the chart's default stagePods.serviceAccount.name
JOB = "bake"


def _install(cluster: ControlPlane, namespace: str) -> None:
    """The chart's stage RBAC and admission policy for this namespace, as `helm install` would
    render them (watching only this namespace)."""
    rendered = cluster.helm(
        "template",
        f"t{uuid.uuid4().hex[:8]}",  # the policy is cluster-scoped: one per test
        str(REPO / "charts" / "bakeline"),
        "-n",
        namespace,
        "--show-only",
        "templates/stage-rbac.yaml",
        "--show-only",
        "templates/stage-admission-policy.yaml",
        "--set",
        f"watch.namespaces={{{namespace}}}",
    ).stdout
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)


def _job(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "x", "uid": str(uuid.uuid4())}}


def _pod_token(cluster: ControlPlane, namespace: str, pod_name: str) -> str:
    """A token bound to a (pending) pod of the stage ServiceAccount: what kubelet projects."""
    core = client.CoreV1Api(cluster.api_client())
    body: Any = {
        "metadata": {"name": pod_name},
        "spec": {
            "serviceAccountName": ACCOUNT,
            "nodeName": "nowhere",  # never run (the node harness only runs its own node's pods)
            "containers": [{"name": "c", "image": "none", "command": ["true"]}],
        },
    }
    uid = core.create_namespaced_pod(namespace, body).metadata.uid  # type: ignore[union-attr]
    return cluster.kubectl(
        "create",
        "token",
        ACCOUNT,
        "-n",
        namespace,
        "--bound-object-kind=Pod",
        f"--bound-object-name={pod_name}",
        f"--bound-object-uid={uid}",
    ).stdout.strip()


def _store(
    cluster: ControlPlane, namespace: str, token: str, job: dict[str, Any]
) -> ConfigMapStore:
    """The store as a stage pod's store container reaches it (bakeline.stagepod.store)."""
    name = job["metadata"]["name"]
    api = ApiServer(cluster.server, cluster.ca_file, lambda: token)
    kube = KubeConfigMapClient(api, namespace, pods.owner_reference(job), pods.job_labels(name))
    return ConfigMapStore(kube, prefix=pods.checkpoint_store_prefix(name))


def _checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"weights " * 100_000)  # a blob and a part
    (directory / "config.json").write_text("{}")
    files = [file_entry(directory, "model.onnx", "model"), file_entry(directory, "config.json")]
    write_manifest(
        directory, Manifest(model_name="m", artifact="model.onnx", format="onnx", files=files)
    )
    return directory


def _create(cluster: ControlPlane, token: str, namespace: str, body: dict[str, Any]) -> int:
    """The status of creating `body` with `token` (201 or the refusal's)."""
    core = client.CoreV1Api(cluster.api_client(token))
    try:
        core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
    except ApiException as exc:
        return int(exc.status)
    return 201


def _store_configmap(
    job: dict[str, Any], name: str | None = None, **changes: Any
) -> dict[str, Any]:
    """A ConfigMap as the store writes it for `job` (an index), with `changes` on top."""
    prefix = pods.checkpoint_store_prefix(job["metadata"]["name"])
    body: dict[str, Any] = {
        "metadata": {
            "name": name or f"{prefix}-import-{uuid.uuid4().hex[:16]}",
            "labels": {
                **pods.job_labels(job["metadata"]["name"]),
                "bakeline.io/component": "checkpoint-store-index",
                "bakeline.io/checkpoint-store": prefix,
            },
            "ownerReferences": [pods.owner_reference(job)],
        },
        "data": {"manifest.json": "{}"},
        "immutable": True,
    }
    for key, value in changes.items():
        if key == "labels":
            body["metadata"]["labels"].update(value)
        elif key == "ownerReferences":
            body["metadata"]["ownerReferences"] = value
        else:
            body[key] = value
    return body


def test_the_stage_token_stores_its_own_jobs_checkpoints_and_is_refused_the_rest(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    _install(cluster, namespace)
    job, other = _job(JOB), _job("other")
    token = _pod_token(cluster, namespace, pods.stage_pod_name(JOB, "import", 1))
    # The policy is live once the API server's informer has it: the plainest write is refused.
    evil = {"metadata": {"name": "evil"}, "data": {"k": "v"}}
    wait_for(lambda: _create(cluster, token, namespace, evil) == 403, 30, what="the policy")

    # What the store does, with this token: a checkpoint of several ConfigMaps, restored whole.
    store = _store(cluster, namespace, token, job)
    ref = store.put(_checkpoint(tmp_path / "out"), stage="import")
    store.restore(ref.id, tmp_path / "back")
    assert (tmp_path / "back" / "model.onnx").read_bytes() == b"weights " * 100_000

    refused = {
        "any other ConfigMap": evil,
        "the operator's checkpoint record": _store_configmap(
            job,
            name=pods.checkpoint_record_name(JOB, "import-1"),
            labels={"bakeline.io/component": "checkpoint"},
        ),
        "another job's store": _store_configmap(other),
        "its own store, owned by another job": _store_configmap(
            job, ownerReferences=[pods.owner_reference(other)]
        ),
        "a name outside its store": _store_configmap(job, name="bake-settings"),
        "a mutable ConfigMap": _store_configmap(job, immutable=False),
        "no owner": _store_configmap(job, ownerReferences=[]),
        "not a store component": _store_configmap(job, labels={"bakeline.io/component": "x"}),
        "another job's label": _store_configmap(job, labels={"bakeline.io/job": "other"}),
    }
    statuses = {what: _create(cluster, token, namespace, body) for what, body in refused.items()}
    assert statuses == dict.fromkeys(refused, 403), statuses
    # The control: the same ConfigMap, as the store writes it, passes.
    assert _create(cluster, token, namespace, _store_configmap(job)) == 201

    # Another job's pod may not write this job's store (its token names its own pod). The tie
    # is by name (pods are <job>-<stage>-<attempt>): a pod of a job named `bake-x` would pass
    # as one of `bake`'s, a limit the chart's policy states.
    other_token = _pod_token(cluster, namespace, pods.stage_pod_name("other", "import", 1))
    assert _create(cluster, other_token, namespace, _store_configmap(job)) == 403
    assert _create(cluster, other_token, namespace, _store_configmap(other)) == 201
    # A token of the same ServiceAccount bound to no pod (`kubectl create token`) writes nothing.
    loose = cluster.kubectl("create", "token", ACCOUNT, "-n", namespace).stdout.strip()
    assert _create(cluster, loose, namespace, _store_configmap(job)) == 403

    # RBAC: create and get ConfigMaps, nothing more.
    core = client.CoreV1Api(cluster.api_client(token))
    name = f"{pods.checkpoint_store_prefix(JOB)}-{ref.id}"
    assert core.read_namespaced_config_map(name, namespace).data
    calls: list[Callable[[], object]] = [
        lambda: core.delete_namespaced_config_map(name, namespace),
        lambda: core.patch_namespaced_config_map(name, namespace, {"data": {"a": "b"}}),
        lambda: core.list_namespaced_config_map(namespace),
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.list_namespaced_pod(namespace),
        lambda: core.create_namespaced_config_map("default", _store_configmap(job)),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 403


def test_the_refusal_names_the_rule(cluster: ControlPlane, namespace: str) -> None:
    _install(cluster, namespace)
    token = _pod_token(cluster, namespace, pods.stage_pod_name(JOB, "quantize", 2))
    api = ApiServer(cluster.server, cluster.ca_file, lambda: token)
    kube = KubeConfigMapClient(api, namespace, pods.owner_reference(_job("victim")), {})
    evil = {"metadata": {"name": "evil"}, "data": {}}
    wait_for(lambda: _create(cluster, token, namespace, evil) == 403, 30, what="the policy")
    with pytest.raises(ApiError) as caught:
        kube.create("victim-store-x", {"bakeline.io/checkpoint-store": "victim-store"}, {}, {})
    assert caught.value.status == 403
    message = json.dumps(str(caught.value))
    assert "may write checkpoints of its own BakingJob only" in message, message


@pytest.mark.parametrize(
    "job_name",
    [
        "model.v2",
        "a-very-long-bakingjob-name-for-a-sentence-embedding-model-v2",
        "n" * 253,  # its pods' names are cut to 253 characters with a digest
    ],
    ids=["dotted", "long", "longest"],
)
def test_store_prefixes_cel_cannot_recompute_still_pass_for_their_own_job(
    cluster: ControlPlane, namespace: str, tmp_path: Path, job_name: str
) -> None:
    # Dots become dashes; past 40 characters the prefix ends in a digest (checkpoint_store_prefix).
    _install(cluster, namespace)
    job = _job(job_name)
    token = _pod_token(cluster, namespace, pods.stage_pod_name(job_name, "import", 1))
    evil = {"metadata": {"name": "evil"}, "data": {}}
    wait_for(lambda: _create(cluster, token, namespace, evil) == 403, 30, what="the policy")
    store = _store(cluster, namespace, token, job)
    ref = store.put(_checkpoint(tmp_path / "out"), stage="import")
    assert store.get(ref.id).id == ref.id
    # Another job's prefix under this job's owner is still refused.
    assert (
        _create(
            cluster,
            token,
            namespace,
            _store_configmap(
                job,
                labels={
                    "bakeline.io/checkpoint-store": pods.checkpoint_store_prefix("other"),
                },
            ),
        )
        == 403
    )
