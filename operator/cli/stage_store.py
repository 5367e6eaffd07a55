"""`bakeline stage` on lanes with `storage: ConfigMap`: the job's ConfigMap checkpoint store,
reached with the stage pod's own short-lived token (bakeline.cli.stage says what and why).

Apart from bakeline.cli.stage so that stage pods on Volume lanes never import the kubernetes
client: its import alone takes half a second, on every stage.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
from bakeline.cli.stage import (
    EXIT_INVALID,
    EXIT_TRANSIENT,
    TERMINATION_BYTES,
    StageStoreError,
    fail,
    run_agent,
    verify_output,
)


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
        raise StageStoreError(
            f"input checkpoint {checkpoint_id} is gone: {exc}", EXIT_INVALID
        ) from exc
    except (ChecksumMismatchError, ManifestError) as exc:
        raise StageStoreError(
            f"input checkpoint {checkpoint_id} is corrupt: {exc}", EXIT_INVALID
        ) from exc


def store_output(store: ConfigMapStore, output: Path, stage: str, termination: Path) -> None:
    """Store the agent's checkpoint and name it in the termination message."""
    verify_output(output, termination)
    try:
        ref = store.put(output, stage=stage)
    except (ChecksumMismatchError, ManifestError) as exc:
        raise StageStoreError(
            f"the agent's checkpoint does not verify: {exc}", EXIT_TRANSIENT
        ) from exc
    result = json.loads(termination.read_text()) if termination.is_file() else {}
    result["store"] = {"prefix": store.prefix, "id": ref.id}
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_BYTES:
        raise StageStoreError(f"termination message over {TERMINATION_BYTES} bytes", EXIT_TRANSIENT)
    termination.write_text(text)


def run_with_store(command: Sequence[str], termination: Path) -> int:
    """Restore the input from the store, run the agent, verify and store its output."""
    try:
        store = _store()
        input_id, given = (
            os.environ.get("BAKELINE_STORE_INPUT_ID"),
            os.environ.get("BAKELINE_INPUT"),
        )
        if input_id and given:
            restore_input(store, input_id, Path(given))
    except StageStoreError as error:
        return fail(termination, error)
    except (ApiException, OSError, KeyError, ValueError) as error:
        return fail(
            termination, StageStoreError(f"could not restore the input: {error}", EXIT_TRANSIENT)
        )
    code = run_agent(command)
    if code != 0:
        return code
    try:
        store_output(
            store, Path(os.environ["BAKELINE_OUTPUT"]), os.environ["BAKELINE_STAGE"], termination
        )
    except StageStoreError as error:
        return fail(termination, error)
    except (ApiException, OSError, ValueError) as error:
        return fail(
            termination, StageStoreError(f"could not store the checkpoint: {error}", EXIT_TRANSIENT)
        )
    return 0
