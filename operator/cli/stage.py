"""`bakeline stage -- AGENT...`: a stage pod's command on lanes with `storage: ConfigMap`.

The agent itself never talks to the API server; this wrapper does, around it, through the
ConfigMap checkpoint store (bakeline.checkpoints.configmap): before the agent it restores the
input checkpoint where the agent reads it (every file checked against its sha256), after a
successful agent it stores the output checkpoint, and adds the stored checkpoint's id to the
agent's termination message, where the operator reads it into the checkpoint record.

Exit codes: the agent's own when it failed; 2 when the input checkpoint is missing or corrupt
(not worth retrying: the operator rolls back or fails the stage); 1 when the API refused a
read or write (transient: retried).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from bakeline.checkpoints.configmap import (
    ConfigMapData,
    ConfigMapExistsError,
    ConfigMapStore,
)
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError
from bakeline.checkpoints.store import CheckpointNotFoundError

TERMINATION_BYTES = 4096
EXIT_TRANSIENT = 1
EXIT_INVALID = 2


@dataclass
class KubeConfigMapClient:
    """The store's ConfigMapClient over the kubernetes client, in one namespace; what it
    creates is immutable and owned by the job, so deleting the job deletes its checkpoints."""

    core: Any
    namespace: str
    owner: Mapping[str, Any]
    labels: Mapping[str, str]

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {**self.labels, **labels},
                "ownerReferences": [dict(self.owner)],
            },
            "data": dict(data),
            "binaryData": {k: base64.b64encode(v).decode() for k, v in binary_data.items()},
            "immutable": True,
        }
        try:
            self.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise ConfigMapExistsError(name) from exc
            raise

    def get(self, name: str) -> ConfigMapData | None:
        try:
            found = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _data(found)

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = self.core.list_namespaced_config_map(self.namespace, label_selector=selector)
        return [_data(item) for item in found.items]

    def delete(self, name: str) -> None:
        try:
            self.core.delete_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _data(found: Any) -> ConfigMapData:
    return ConfigMapData(
        name=found.metadata.name,
        labels=dict(found.metadata.labels or {}),
        data=dict(found.data or {}),
        binary_data={k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()},
    )


class StageStoreError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _service_account_dir() -> Path:
    return Path(
        os.environ.get(
            "BAKELINE_SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"
        )
    )


def _store() -> ConfigMapStore:
    """The job's store, with the pod's own token (kubelet's in-cluster layout)."""
    account = _service_account_dir()
    configuration = client.Configuration()
    InClusterConfigLoader(
        token_filename=str(account / "token"), cert_filename=str(account / "ca.crt")
    ).load_and_set(configuration)
    kube = KubeConfigMapClient(
        core=client.CoreV1Api(client.ApiClient(configuration)),
        namespace=(account / "namespace").read_text().strip(),
        owner=json.loads(os.environ["BAKELINE_STORE_OWNER"]),
        labels=json.loads(os.environ.get("BAKELINE_STORE_LABELS") or "{}"),
    )
    return ConfigMapStore(kube, prefix=os.environ["BAKELINE_STORE_PREFIX"])


def restore_input(store: ConfigMapStore, checkpoint_id: str, destination: Path) -> None:
    try:
        store.restore(checkpoint_id, destination)
    except CheckpointNotFoundError as exc:
        raise StageStoreError(f"input checkpoint {checkpoint_id} is gone: {exc}", 2) from exc
    except (ChecksumMismatchError, ManifestError) as exc:
        raise StageStoreError(f"input checkpoint {checkpoint_id} is corrupt: {exc}", 2) from exc


def store_output(store: ConfigMapStore, output: Path, stage: str, termination: Path) -> None:
    """Store the agent's checkpoint and name it in the termination message."""
    try:
        ref = store.put(output, stage=stage)
    except (ChecksumMismatchError, ManifestError) as exc:
        raise StageStoreError(f"the agent's checkpoint does not verify: {exc}", 2) from exc
    result = json.loads(termination.read_text()) if termination.is_file() else {}
    result["store"] = {"prefix": store.prefix, "id": ref.id}
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_BYTES:
        raise StageStoreError(f"termination message over {TERMINATION_BYTES} bytes", 1)
    termination.write_text(text)


def _fail(termination: Path, error: StageStoreError) -> int:
    termination.write_text(json.dumps({"status": "failed", "message": str(error)[:3000]}))
    print(f"bakeline stage: {error}", file=sys.stderr)
    return error.code


def run_stage(command: Sequence[str]) -> int:
    """Restore the input, run the agent (forwarding SIGTERM), store the output."""
    termination = Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"])
    try:
        store = _store()
        input_id, given = (
            os.environ.get("BAKELINE_STORE_INPUT_ID"),
            os.environ.get("BAKELINE_INPUT"),
        )
        if input_id and given:
            restore_input(store, input_id, Path(given))
    except StageStoreError as error:
        return _fail(termination, error)
    except (ApiException, OSError, KeyError, ValueError) as error:
        return _fail(termination, StageStoreError(f"could not restore the input: {error}", 1))
    child = subprocess.Popen(list(command))

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = child.wait()
    if code != 0:
        return code if code > 0 else 128 - code
    try:
        store_output(
            store, Path(os.environ["BAKELINE_OUTPUT"]), os.environ["BAKELINE_STAGE"], termination
        )
    except StageStoreError as error:
        return _fail(termination, error)
    except (ApiException, OSError, ValueError) as error:
        return _fail(termination, StageStoreError(f"could not store the checkpoint: {error}", 1))
    return 0
