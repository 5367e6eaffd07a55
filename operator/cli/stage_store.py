"""`bakeline stage` on lanes with `storage: ConfigMap`: the job's ConfigMap checkpoint store,
reached with the stage pod's own short-lived token (bakeline.cli.stage says what and why).

Stage pods talk to the API server over plain HTTPS (`ApiServer`), not through the kubernetes
client: the store makes four kinds of ConfigMap call, and importing the client alone took
0.44 s of CPU in every stage pod, more than the wrapper and a no-op agent together (issue #8's
throughput run: 200 single-stage jobs on two cores). They speak protobuf
(bakeline.cli.kube_protobuf): checkpoint bytes travel as bytes, not as base64 inside JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bakeline.agents.reads import roles_left_in_store
from bakeline.checkpoints.configmap import (
    ConfigMapData,
    ConfigMapExistsError,
    ConfigMapStore,
)
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError
from bakeline.checkpoints.store import CheckpointNotFoundError
from bakeline.cli import kube_protobuf
from bakeline.cli.stage import (
    EXIT_INVALID,
    EXIT_TRANSIENT,
    TERMINATION_BYTES,
    StageStoreError,
    fail,
    run_agent,
    verify_output,
)

T = TypeVar("T")
REQUEST_TIMEOUT_S = 60.0


class ApiError(Exception):
    """The API server answered with an error status; `message` is its Status message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class ApiServer:
    """JSON requests to the API server over kept-alive HTTPS connections, one per thread (the
    store writes several ConfigMaps at once), authenticated with a bearer token that `token`
    reads afresh for every request (kubelet rotates it)."""

    server: str  # https://host:port
    ca_file: Path
    token: Callable[[], str]
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def in_cluster(cls, account: Path) -> ApiServer:
        """The pod's view: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA."""
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(
            f"https://{netloc}",
            account / "ca.crt",
            lambda: (account / "token").read_text().strip(),
        )

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The response's protobuf bytes (kube_protobuf); ApiError for a status of 400 or more."""
        status, data = self._exchange(method, path, body, kube_protobuf.CONTENT_TYPE)
        if status >= 400:
            message = kube_protobuf.decode_status_message(data)
            raise ApiError(status, f"{method} {path}: {message or data[:200]!r}")
        return data

    def _exchange(
        self, method: str, target: str, payload: bytes | None, content_type: str
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token()}", "Accept": content_type}
        if payload is not None:
            headers["Content-Type"] = content_type
        reused = getattr(self._local, "connection", None) is not None
        try:
            try:
                return self._send(method, target, payload, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle kept-alive connection: once more on a new one.
                # Every call the store makes may be repeated (creates of equal bytes get 409).
                return self._send(method, target, payload, headers)
        except http.client.HTTPException as exc:  # an answer cut short: transient, as OSError
            raise ConnectionError(
                f"{method} {target}: the API server's answer broke off: {exc}"
            ) from exc

    def _send(
        self, method: str, target: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            url = urllib.parse.urlsplit(self.server)
            context = ssl.create_default_context(cafile=str(self.ca_file))
            connection = http.client.HTTPSConnection(
                url.hostname or "", url.port or 443, timeout=REQUEST_TIMEOUT_S, context=context
            )
            self._local.connection = connection
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()
            self._local.connection = None
            raise


@dataclass
class KubeConfigMapClient:
    """The store's ConfigMapClient over the API server, in one namespace; what it creates is
    immutable and owned by the job, so deleting the job deletes its checkpoints."""

    api: ApiServer
    namespace: str
    owner: Mapping[str, Any]
    labels: Mapping[str, str]

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{urllib.parse.quote(self.namespace)}/configmaps"

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        body = kube_protobuf.encode_configmap(
            name=name,
            namespace=self.namespace,
            labels={**self.labels, **labels},
            owner_references=[self.owner],
            data=data,
            binary_data=binary_data,
            immutable=True,
        )
        try:
            self.api.request("POST", self._path, body)
        except ApiError as exc:
            if exc.status == 409:
                raise ConfigMapExistsError(name) from exc
            raise

    def get(self, name: str) -> ConfigMapData | None:
        """From the API server's watch cache (resourceVersion=0: no etcd read, a restore -40%),
        a miss confirmed from etcd. What stage pods read is immutable and never replaced under
        its name once committed (crash debris is replaced before its index is written), so a
        cached copy is the copy; the cache may only lag behind a create by milliseconds."""
        path = f"{self._path}/{urllib.parse.quote(name)}"
        for query in ("?resourceVersion=0", ""):
            try:
                found = self.api.request("GET", path + query)
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            return _decoded(kube_protobuf.decode_configmap, found, f"ConfigMap {name}")
        return None

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        selector = urllib.parse.urlencode(
            {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())}
        )
        found = self.api.request("GET", f"{self._path}?{selector}")
        return _decoded(kube_protobuf.decode_configmap_list, found, f"ConfigMaps {selector}")

    def delete(self, name: str) -> None:
        try:
            self.api.request("DELETE", f"{self._path}/{urllib.parse.quote(name)}")
        except ApiError as exc:
            if exc.status != 404:
                raise


def _decoded(decode: Callable[[bytes], T], body: bytes, what: str) -> T:
    """An answer that does not decode is a broken answer: transient, as OSError."""
    try:
        return decode(body)
    except (kube_protobuf.ProtobufError, UnicodeDecodeError) as exc:
        raise ConnectionError(f"{what}: the API server's answer does not decode: {exc}") from exc


def _service_account_dir() -> Path:
    return Path(
        os.environ.get(
            "BAKELINE_SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"
        )
    )


def _store() -> ConfigMapStore:
    """The job's store, with the pod's own token (kubelet's in-cluster layout)."""
    account = _service_account_dir()
    kube = KubeConfigMapClient(
        api=ApiServer.in_cluster(account),
        namespace=(account / "namespace").read_text().strip(),
        owner=json.loads(os.environ["BAKELINE_STORE_OWNER"]),
        labels=json.loads(os.environ.get("BAKELINE_STORE_LABELS") or "{}"),
    )
    return ConfigMapStore(kube, prefix=os.environ["BAKELINE_STORE_PREFIX"])


def restore_input(
    store: ConfigMapStore,
    checkpoint_id: str,
    destination: Path,
    leave_roles: frozenset[str] = frozenset(),
) -> None:
    try:
        store.restore(checkpoint_id, destination, leave_roles)
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
    verify_output(output, termination, by_store=True)
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
            # What the agent never reads stays in the store (its output carries it by sha256).
            leave = roles_left_in_store(os.environ.get("BAKELINE_AGENT"))
            restore_input(store, input_id, Path(given), leave)
    except StageStoreError as error:
        return fail(termination, error)
    except (ApiError, OSError, KeyError, ValueError) as error:
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
    except (ApiError, OSError, ValueError) as error:
        return fail(
            termination, StageStoreError(f"could not store the checkpoint: {error}", EXIT_TRANSIENT)
        )
    return 0
