"""Manifests the operator creates for a BakingJob: stage pods, the checkpoint volume and the
checkpoint records. Pure `build_*` functions: objects in, dicts out, tested directly.

Where bytes live. Each job has one PersistentVolumeClaim; stage attempt `<stage>-<n>` writes its
checkpoint (manifest.json + files, every file with its sha256) to `/checkpoints/<stage>-<n>` on
it and reads its input from the directory of the checkpoint it was given. The operator records
each checkpoint in a ConfigMap (`<job>-ckpt-<stage>-<n>`): the agent's result, the artifact's
sha256, the cache key and where the bytes are. The records are the source of truth that status
repair rebuilds from; the agents verify every sha256 before they read an input.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from bakeline.api.bakingjob import HUGGINGFACE_CONFIGMAP_MESSAGE
from bakeline.api.common import API_VERSION, GROUP
from bakeline.api.output import parse_target
from bakeline.contract import TERMINATION_MESSAGE_PATH

LABEL_JOB = f"{GROUP}/job"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_CACHE_KEY = f"{GROUP}/cache-key"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CHECKPOINT = f"{GROUP}/checkpoint"
ANNOTATION_CACHE_KEY = f"{GROUP}/cache-key"
ANNOTATION_FALLBACK = f"{GROUP}/fallback"
# On a BakingJob, set by `bakeline rerun` (a person's request, like spec): STAGE@TIME.
ANNOTATION_RERUN = f"{GROUP}/rerun-from"
MANAGER = "bakeline"

CHECKPOINT_MOUNT = "/checkpoints"
TMP_MOUNT = "/tmp"
HANDOFF_MOUNT = "/handoff"
AGENT_CONTAINER = "agent"
# ConfigMap lanes: the store's I/O runs in containers of its own, the only ones with a token.
RESTORE_CONTAINER = "restore"  # an init container: the input checkpoint, before the agent
STORE_CONTAINER = "store"  # beside the agent: its output, once the agent has finished
# On stage pods: which store they use, so that a NetworkPolicy can let only ConfigMap lanes'
# pods reach the API server.
LABEL_STORAGE = f"{GROUP}/storage"
# The store containers' own footprint (chunks of 900 KiB, four writes in flight); set so that
# a namespace whose ResourceQuota demands requests and limits admits the pod.
STORE_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "512Mi"},
}
# The image's non-root user (Dockerfile); pods run as it under PodSecurity `restricted`.
AGENT_UID = 65532
DEFAULT_VOLUME_SIZE = "1Gi"
_MAX_NAME = 253
_MAX_LABEL = 63


def _bounded(name: str, limit: int) -> str:
    """`name` if it fits, else a prefix plus a short digest, so distinct names stay distinct."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('-.')}-{digest}"


def label_value(value: str) -> str:
    """A label value: at most 63 characters of [-_.A-Za-z0-9], alphanumeric at both ends."""
    cleaned = re.sub(r"[^-_.A-Za-z0-9]", "-", value).strip("-_.")
    return _bounded(cleaned, _MAX_LABEL).strip("-_.")


def checkpoint_id(stage: str, attempt: int) -> str:
    """The checkpoint an attempt writes; `attempt` counts every attempt of the stage in the job,
    across fallbacks and rollbacks, so no two attempts share a directory or a record."""
    return f"{stage}-{attempt}"


def stage_pod_name(job: str, stage: str, attempt: int) -> str:
    """Deterministic: re-creating an attempt's pod after an operator restart hits 409."""
    return _bounded(f"{job}-{stage}-{attempt}", _MAX_NAME)


def checkpoint_record_name(job: str, checkpoint: str) -> str:
    return _bounded(f"{job}-ckpt-{checkpoint}", _MAX_NAME)


def checkpoint_claim_name(job: str) -> str:
    return _bounded(f"{job}-checkpoints", _MAX_NAME)


def checkpoint_store_prefix(job: str) -> str:
    """The job's ConfigMap checkpoint store: its ConfigMaps are named PREFIX-<id>[-<part>].
    A short DNS label, unlike the records' `<job>-ckpt-...`."""
    return _bounded(re.sub(r"[^a-z0-9-]", "-", f"{job}-store"), 40).strip("-")


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "BakingJob",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(job_name: str) -> dict[str, str]:
    return {LABEL_JOB: label_value(job_name), LABEL_MANAGED_BY: MANAGER}


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level settings PodSecurity `restricted` demands."""
    return {
        "runAsNonRoot": True,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "fsGroup": AGENT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


MODEL_MOUNT = "/model"
DATASET_MOUNT = "/dataset"
SERVICE_ACCOUNT_MOUNT = (
    "/var/run/secrets/kubernetes.io/serviceaccount"  # in-cluster clients look here
)
TOKEN_SECONDS = 3600


def _token_volume() -> dict[str, Any]:
    """A bound, short-lived ServiceAccount token with the CA and namespace, as kubelet mounts
    for automount, but only in the containers that store checkpoints through the API (never
    the agent's: a token's pod name, in its claims, ties its writes to the pod's job)."""
    return {
        "name": "api-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ]
        },
    }


def model_source_mount(
    source: Mapping[str, Any], model_format: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(volume, volumeMount, localPath) that put a configMap or pvc model file in the pod (a
    pvc `path` may name a Hugging Face model directory: the folder is the localPath); None for a
    builtin. Raises ValueError for a source a pod cannot read (url, file://) and for a
    `huggingface` model in a ConfigMap, which holds one file."""
    if source.get("builtin"):
        return None
    if source.get("configMap"):
        if model_format == "huggingface":
            raise ValueError(HUGGINGFACE_CONFIGMAP_MESSAGE)
        ref = source["configMap"]
        volume = {
            "name": "model",
            "configMap": {"name": ref["name"], "items": [{"key": ref["key"], "path": "model"}]},
        }
        return (
            volume,
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
            (f"{MODEL_MOUNT}/model"),
        )
    if source.get("pvc"):
        ref = source["pvc"]
        volume = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": ref["claimName"], "readOnly": True},
        }
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return volume, mount, f"{MODEL_MOUNT}/{ref['path']}"
    kinds = ", ".join(sorted(source)) or "none"
    raise ValueError(
        f"model source {kinds} cannot be read by a stage pod: the operator does not download "
        "models; store the file in a ConfigMap (binaryData) or on a PersistentVolumeClaim"
    )


def dataset_source_mount(
    document: Mapping[str, Any],
) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]] | None]:
    """The import stage's job document with a `configmap/NAME[/KEY]` or `pvc://CLAIM/PATH`
    quality.dataset resolved to where the pod mounts it (`file:///dataset/KEY`, or the folder
    of all the ConfigMap's keys, which must then hold one; `file:///dataset/PATH` on the
    claim), and the (volume, volumeMount) that mount it read-only; the document as it is, and
    None, for any other dataset."""
    quality = document.get("quality") or {}
    dataset = str(quality.get("dataset") or "")
    mount = {"name": "dataset", "mountPath": DATASET_MOUNT, "readOnly": True}
    if dataset.startswith("pvc://"):
        claim, path = dataset.removeprefix("pvc://").split("/", 1)
        volume: dict[str, Any] = {
            "name": "dataset",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        local = f"file://{DATASET_MOUNT}/{path}"
    elif dataset.startswith("configmap/"):
        _, name, *key = dataset.split("/", 2)
        config_map: dict[str, Any] = {"name": name}
        if key:
            config_map["items"] = [{"key": key[0], "path": key[0]}]
        volume = {"name": "dataset", "configMap": config_map}
        local = f"file://{DATASET_MOUNT}/{key[0]}" if key else f"file://{DATASET_MOUNT}"
    else:
        return dict(document), None
    return {**document, "quality": {**quality, "dataset": local}}, (volume, mount)


def build_stage_pod(
    job: Mapping[str, Any],
    *,
    stage: str,
    agent: str,
    attempt: int,
    params: Mapping[str, Any],
    job_document: Mapping[str, Any],
    input_checkpoint: str | None,
    image: str,
    stage_defaults: Mapping[str, Any] | None = None,
    timeout_seconds: float | None = None,
    service_account: str | None = None,
    model_mount: tuple[dict[str, Any], dict[str, Any], str] | None = None,
    storage: str = "Volume",
    input_store_id: str | None = None,
) -> dict[str, Any]:
    """The pod for one attempt of one stage.

    `job_document` is the agent contract's `--job` JSON; `stage_defaults` is the lane's
    `stageDefaults` in wire form (resources, nodeSelector, tolerations, image);
    `model_mount` (from `model_source_mount`) gives the first stage the user's model file;
    a `configmap/` or `pvc://` quality.dataset is mounted into it too (`dataset_source_mount`).

    `storage` is the lane's store. Volume: the job's claim holds every checkpoint; one
    container, no token. ConfigMap: the agent, which opens model files from outside, never
    holds a credential (issue 23). Its container `agent` has no token and no store settings;
    the store's I/O runs beside it, with the pod's own short-lived token: the init container
    `restore` puts the input checkpoint (its id in the job's ConfigMap store:
    `input_store_id`) into an emptyDir where the agent reads it, and the container `store`
    waits for the agent's outcome on a shared emptyDir (`bakeline stage store`), then stores
    its output and names it in its own termination message. `terminated_state` says which
    container's terminated state is the attempt's.
    """
    meta = job["metadata"]
    job_name = meta["name"]
    defaults = dict(stage_defaults or {})
    output = checkpoint_id(stage, attempt)
    image = defaults.get("image") or image
    configmap = storage == "ConfigMap"
    dataset_mount = None
    if input_checkpoint is None:  # the import stage: it reads the job's dataset
        job_document, dataset_mount = dataset_source_mount(job_document)
    env = [
        {"name": "BAKELINE_AGENT", "value": agent},
        {"name": "BAKELINE_STAGE", "value": stage},
        {"name": "BAKELINE_OUTPUT", "value": f"{CHECKPOINT_MOUNT}/{output}"},
        {"name": "BAKELINE_PARAMS", "value": json.dumps(dict(params), sort_keys=True)},
        {"name": "BAKELINE_JOB", "value": json.dumps(dict(job_document), sort_keys=True)},
        {"name": "BAKELINE_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        # Read-only root: everything that writes scratch files must write under /tmp.
        {"name": "HOME", "value": TMP_MOUNT},
        {"name": "TMPDIR", "value": TMP_MOUNT},
    ]
    if input_checkpoint is not None:
        env.insert(2, {"name": "BAKELINE_INPUT", "value": f"{CHECKPOINT_MOUNT}/{input_checkpoint}"})
    if configmap:
        env.append({"name": "BAKELINE_HANDOFF", "value": HANDOFF_MOUNT})
    # `bakeline stage` checks the agent's checkpoint against its sha256s before the pod succeeds
    # (on ConfigMap lanes the store container does, as it stores each file).
    container = _container(
        AGENT_CONTAINER,
        image,
        ["bakeline", "stage", "--", "bakeline-agent", agent],
        env,
        [
            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
            {"name": "tmp", "mountPath": TMP_MOUNT},
        ],
    )
    if defaults.get("resources"):
        container["resources"] = defaults["resources"]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # No container gets a token unless it mounts `api-token` (the store's, below).
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [
            {
                "name": "checkpoints",
                "persistentVolumeClaim": {"claimName": checkpoint_claim_name(job_name)},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if configmap:
        spec["volumes"][0] = {"name": "checkpoints", "emptyDir": {}}
        spec["volumes"] += [
            {"name": "handoff", "emptyDir": {"sizeLimit": "1Mi"}},
            # The store's scratch space, not the agent's /tmp: nothing the agent leaves there
            # is read by a process that holds the token.
            {"name": "store-tmp", "emptyDir": {}},
            _token_volume(),
        ]
        container["volumeMounts"].append({"name": "handoff", "mountPath": HANDOFF_MOUNT})
        store_env = _store_env(job, stage, output)
        # Reads the agent's output and the handoff, writes nothing there.
        store = _container(
            STORE_CONTAINER,
            image,
            ["bakeline", "stage", "store"],
            store_env,
            [
                {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT, "readOnly": True},
                {"name": "handoff", "mountPath": HANDOFF_MOUNT, "readOnly": True},
                *_store_mounts(),
            ],
        )
        spec["containers"].append(store)
        if input_store_id and input_checkpoint is not None:
            restore_env = [
                {"name": "BAKELINE_AGENT", "value": agent},  # what it reads decides what to fetch
                {"name": "BAKELINE_INPUT", "value": f"{CHECKPOINT_MOUNT}/{input_checkpoint}"},
                {"name": "BAKELINE_STORE_INPUT_ID", "value": input_store_id},
                *store_env,
            ]
            spec["initContainers"] = [
                _container(
                    RESTORE_CONTAINER,
                    image,
                    ["bakeline", "stage", "restore"],
                    restore_env,
                    [{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}, *_store_mounts()],
                )
            ]
    if model_mount is not None:
        volume, mount, _ = model_mount
        spec["volumes"].append(volume)
        container["volumeMounts"].append(mount)
    if dataset_mount is not None:
        spec["volumes"].append(dataset_mount[0])
        container["volumeMounts"].append(dataset_mount[1])
    if service_account:
        spec["serviceAccountName"] = service_account
    if timeout_seconds:
        spec["activeDeadlineSeconds"] = int(max(1, timeout_seconds))
    if defaults.get("nodeSelector"):
        spec["nodeSelector"] = dict(defaults["nodeSelector"])
    if defaults.get("tolerations"):
        spec["tolerations"] = list(defaults["tolerations"])
    labels = {
        **job_labels(job_name),
        LABEL_STAGE: label_value(stage),
        LABEL_ATTEMPT: str(attempt),
        LABEL_COMPONENT: "stage",
        LABEL_STORAGE: "ConfigMap" if configmap else "Volume",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": stage_pod_name(job_name, stage, attempt),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {ANNOTATION_CHECKPOINT: output},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def _container(
    name: str,
    image: str,
    command: list[str],
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    if name != AGENT_CONTAINER:
        container["resources"] = json.loads(json.dumps(STORE_RESOURCES))
    return container


def _store_env(job: Mapping[str, Any], stage: str, output: str) -> list[dict[str, Any]]:
    """What the restore and store containers read: the job's store and where the token is."""
    job_name = job["metadata"]["name"]
    return [
        {"name": "BAKELINE_STAGE", "value": stage},
        {"name": "BAKELINE_OUTPUT", "value": f"{CHECKPOINT_MOUNT}/{output}"},
        {"name": "BAKELINE_HANDOFF", "value": HANDOFF_MOUNT},
        {"name": "BAKELINE_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        {"name": "HOME", "value": TMP_MOUNT},
        {"name": "TMPDIR", "value": TMP_MOUNT},
        # The process that holds the token loads no code from its writable scratch space.
        {"name": "PYTHONNOUSERSITE", "value": "1"},
        {"name": "BAKELINE_STORE_PREFIX", "value": checkpoint_store_prefix(job_name)},
        {"name": "BAKELINE_STORE_OWNER", "value": json.dumps(owner_reference(job))},
        {"name": "BAKELINE_STORE_LABELS", "value": json.dumps(job_labels(job_name))},
        {"name": "BAKELINE_SERVICE_ACCOUNT_DIR", "value": SERVICE_ACCOUNT_MOUNT},
    ]


def _store_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "store-tmp", "mountPath": TMP_MOUNT},
        {"name": "api-token", "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": True},
    ]


def terminated_state(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The terminated state that is a stage attempt's outcome ({} while there is none).

    A failed init container's (`restore`: its input is gone or corrupt, or the API refused);
    else the agent container's when it failed (its exit code, its reason such as OOMKilled,
    its termination message); else the store container's, whose message is the agent's result
    with the stored checkpoint's id, and whose exit code says whether storing it succeeded;
    else the agent container's (Volume lanes: the only one).
    """
    status = pod.get("status") or {}
    for container in status.get("initContainerStatuses") or []:
        state = (container.get("state") or {}).get("terminated")
        if state and state.get("exitCode") != 0:
            return dict(state)
    states: dict[str, dict[str, Any]] = {}
    for container in status.get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated")
        if state:
            states[str(container.get("name") or "")] = state
    agent = states.get(AGENT_CONTAINER)
    if agent and agent.get("exitCode") != 0:
        return dict(agent)
    store = states.get(STORE_CONTAINER)
    if store:
        return dict(store)
    if agent:
        return dict(agent)
    # A pod of another shape (none the operator builds): its first terminated container.
    return dict(next(iter(states.values()), {}))


def build_checkpoint_claim(
    job: Mapping[str, Any], storage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The job's checkpoint volume; `storage` is the lane's `storage` in wire form."""
    storage = dict(storage or {})
    meta = job["metadata"]
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(storage.get("size") or DEFAULT_VOLUME_SIZE)}},
    }
    if storage.get("storageClassName"):
        spec["storageClassName"] = storage["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": checkpoint_claim_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {**job_labels(meta["name"]), LABEL_COMPONENT: "checkpoints"},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def build_checkpoint_record(
    job: Mapping[str, Any],
    *,
    stage: str,
    attempt: int,
    result: Mapping[str, Any],
    cache_key: str | None,
) -> dict[str, Any]:
    """The ConfigMap that records a succeeded attempt's checkpoint.

    `result` is the agent's termination message (artifactSha256, format, sizeBytes, metrics).
    """
    meta = job["metadata"]
    checkpoint = checkpoint_id(stage, attempt)
    labels = {
        **job_labels(meta["name"]),
        LABEL_STAGE: label_value(stage),
        LABEL_ATTEMPT: str(attempt),
        LABEL_COMPONENT: "checkpoint",
    }
    if cache_key:
        labels[LABEL_CACHE_KEY] = cache_key[:_MAX_LABEL]
    data = {
        "checkpoint": checkpoint,
        "stage": stage,
        "attempt": str(attempt),
        "path": f"{CHECKPOINT_MOUNT}/{checkpoint}",
        "artifactSha256": str(result.get("artifactSha256") or ""),
        "result.json": json.dumps(dict(result), sort_keys=True),
    }
    stored = result.get("store") or {}
    if stored.get("id"):
        data["storage"] = "ConfigMap"
        data["storePrefix"] = str(stored.get("prefix") or "")
        data["storeId"] = str(stored["id"])
    else:
        data["storage"] = "Volume"
        data["claim"] = checkpoint_claim_name(meta["name"])
    if cache_key:
        data["cacheKey"] = cache_key
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": checkpoint_record_name(meta["name"], checkpoint),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(job)],
        },
        "data": data,
        "immutable": True,  # a checkpoint never changes once recorded
    }


# ---- delivery: the package to spec.output, in a pod of its own (bakeline.delivery)

DELIVER_CONTAINER = "deliver"
DOCKER_CONFIG_MOUNT = "/var/run/bakeline/docker"
OUTPUT_MOUNT = "/output"  # a pvc:// output's claim, in the delivery pod
DELIVERY_DEADLINE_S = 1800


def delivery_pod_name(job: str, attempt: int) -> str:
    return _bounded(f"{job}-deliver-{attempt}", _MAX_NAME)


def build_delivery_pod(
    job: Mapping[str, Any],
    *,
    attempt: int,
    checkpoint: str,
    record: Mapping[str, str],
    output: Mapping[str, Any],
    image: str,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The pod that delivers the job's result (`checkpoint`, as its record `record` says where
    it is stored) to `output` (spec.output in wire form).

    Its container `deliver` holds the output's credentials and nothing else: the Secret as
    environment variables for s3:// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or as the
    Docker config for oci://. It reads the package's bytes and never loads them. On a ConfigMap
    lane an init container `restore` fetches the package from the job's store first, with the
    pod's own token, which the deliver container never mounts; on a Volume lane the claim is
    mounted read-only. A pvc:// output's claim is mounted at OUTPUT_MOUNT, the one place it
    writes. Labelled component=delivery, so the stage pods' NetworkPolicy (no egress) does not
    select it: it must reach the bucket or the registry."""
    meta = job["metadata"]
    job_name = meta["name"]
    package = f"{CHECKPOINT_MOUNT}/{checkpoint}"
    uri = str(output["uri"])
    command = ["bakeline", "deliver", "--package", package, "--uri", uri]
    if output.get("endpoint"):
        command += ["--endpoint", str(output["endpoint"])]
    if output.get("region"):
        command += ["--region", str(output["region"])]
    if output.get("insecure"):
        command.append("--insecure")
    env = [
        {"name": "HOME", "value": TMP_MOUNT},
        {"name": "TMPDIR", "value": TMP_MOUNT},
        {"name": "BAKELINE_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
    ]
    configmap = record.get("storage") == "ConfigMap"
    mounts: list[dict[str, Any]] = [
        {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_MOUNT},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "checkpoints", "emptyDir": {}}
        if configmap
        else {
            "name": "checkpoints",
            "persistentVolumeClaim": {
                "claimName": checkpoint_claim_name(job_name),
                "readOnly": True,
            },
        },
    ]
    target = parse_target(uri)
    if target.scheme == "pvc":
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": target.location}})
        mounts.append({"name": "output", "mountPath": OUTPUT_MOUNT})
        command += ["--claim-mount", OUTPUT_MOUNT]
    container = _container(DELIVER_CONTAINER, image, command, env, mounts)
    secret = output.get("credentialsSecret")
    if secret and uri.startswith("s3://"):
        container["envFrom"] = [{"secretRef": {"name": str(secret)}}]
    elif secret:
        volumes.append(
            {
                "name": "docker-config",
                "secret": {
                    "secretName": str(secret),
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        mounts.append({"name": "docker-config", "mountPath": DOCKER_CONFIG_MOUNT, "readOnly": True})
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_MOUNT})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "activeDeadlineSeconds": DELIVERY_DEADLINE_S,
        "containers": [container],
        "volumes": volumes,
    }
    if configmap:
        volumes += [{"name": "store-tmp", "emptyDir": {}}, _token_volume()]
        restore_env = [
            {"name": "BAKELINE_INPUT", "value": package},
            {"name": "BAKELINE_STORE_INPUT_ID", "value": str(record.get("storeId") or "")},
            *_store_env(job, "deliver", checkpoint),
        ]
        restore_mounts: list[dict[str, Any]] = [
            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
            *_store_mounts(),
        ]
        spec["initContainers"] = [
            _container(
                RESTORE_CONTAINER,
                image,
                ["bakeline", "stage", "restore"],
                restore_env,
                restore_mounts,
            )
        ]
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": delivery_pod_name(job_name, attempt),
            "namespace": meta["namespace"],
            "labels": {
                **job_labels(job_name),
                LABEL_ATTEMPT: str(attempt),
                LABEL_COMPONENT: "delivery",
                LABEL_STORAGE: "ConfigMap" if configmap else "Volume",
            },
            "annotations": {ANNOTATION_CHECKPOINT: checkpoint},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


# ---- fetch: a Volume lane's package into the job's ConfigMap store, for `bakeline fetch`


def fetch_pod_name(job: str, checkpoint: str) -> str:
    return _bounded(f"{job}-fetch-{checkpoint}", _MAX_NAME)


def build_fetch_pod(
    job: Mapping[str, Any], *, checkpoint: str, image: str, service_account: str | None
) -> dict[str, Any]:
    """The pod `bakeline fetch` runs for a package on a Volume lane's claim, which only a pod
    can read: `bakeline stage export` copies the checkpoint, mounted read-only, into the job's
    ConfigMap store with the stage ServiceAccount's short-lived token (whose admission policy
    lets it write that store only), and names it in its termination message."""
    meta = job["metadata"]
    job_name = meta["name"]
    env = [
        {"name": "BAKELINE_EXPORT", "value": f"{CHECKPOINT_MOUNT}/{checkpoint}"},
        *_store_env(job, "fetch", checkpoint),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT, "readOnly": True},
        *_store_mounts(),
    ]
    container = _container(STORE_CONTAINER, image, ["bakeline", "stage", "export"], env, mounts)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": fetch_pod_name(job_name, checkpoint),
            "namespace": meta["namespace"],
            "labels": {
                **job_labels(job_name),
                LABEL_COMPONENT: "fetch",
                LABEL_STORAGE: "Volume",
            },
            "annotations": {ANNOTATION_CHECKPOINT: checkpoint},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": restricted_pod_security(),
            "activeDeadlineSeconds": 600,
            "containers": [container],
            "volumes": [
                {
                    "name": "checkpoints",
                    "persistentVolumeClaim": {
                        "claimName": checkpoint_claim_name(job_name),
                        "readOnly": True,
                    },
                },
                {"name": "store-tmp", "emptyDir": {}},
                _token_volume(),
            ],
        },
    }
    if service_account:
        pod["spec"]["serviceAccountName"] = service_account
    return pod
