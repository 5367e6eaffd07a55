"""`bakeline stage restore` and `bakeline stage store`, the store containers of stage pods on
lanes with `storage: ConfigMap`: the job's ConfigMap checkpoint store, reached with the stage
pod's own short-lived token, which the agent's container never holds (bakeline.stagepod.wrapper says
what and why).

Stage pods talk to the API server over plain HTTPS (`ApiServer`), not through the kubernetes
client: the store makes four kinds of ConfigMap call, and importing the client alone took
0.44 s of CPU in every stage pod, more than the wrapper and a no-op agent together (issue #8's
throughput run: 200 single-stage jobs on two cores). They speak protobuf
(bakeline.stagepod.protobuf): checkpoint bytes travel as bytes, not as base64 inside JSON.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bakeline.agents.reads import roles_left_in_store
from bakeline.checkpoints.configmap import (
    ConfigMapData,
    ConfigMapExistsError,
    ConfigMapStore,
    label_selector,
)
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError, read_manifest
from bakeline.checkpoints.store import CheckpointNotFoundError
from bakeline.contract import TerminationMessage, parse_termination, status_of_exit
from bakeline.stagepod import protobuf as kube_protobuf
from bakeline.stagepod.wrapper import (
    EXIT_INVALID,
    EXIT_TRANSIENT,
    HANDOFF_LOCK,
    HANDOFF_STARTED,
    TERMINATION_BYTES,
    StageStoreError,
    fail,
    read_outcome,
    verify_output,
)

T = TypeVar("T")
REQUEST_TIMEOUT_S = 60.0
# The agent's container starts before the store's (kubelet starts a pod's containers in order,
# and the wrapper takes the lock before it imports anything heavy): a container that has not
# said so by then never will (it failed to start, or died first).
AGENT_START_TIMEOUT_S = 180.0


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
        selector = urllib.parse.urlencode({"labelSelector": label_selector(labels)})
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
    _refuse_links(output)
    verify_output(output, termination, by_store=True)
    try:
        ref = store.put(output, stage=stage)
    except (ChecksumMismatchError, ManifestError) as exc:
        raise StageStoreError(
            f"the agent's checkpoint does not verify: {exc}", EXIT_TRANSIENT
        ) from exc
    message = parse_termination(termination.read_bytes()) if termination.is_file() else None
    message = message or TerminationMessage(status=status_of_exit(0))
    message.store = {"prefix": store.prefix, "id": ref.id}
    # Within the limit: the message and the last metrics give way, the store's id never does.
    termination.write_text(message.to_text())


def _refuse_links(output: Path) -> None:
    """The agent wrote `output`; this process holds the token. A symlink there, or a manifest
    path that leaves the checkpoint (absolute, or through ..), could name a file of this
    container's (its token) for the store to read: only plain files and directories inside
    the checkpoint are stored, whatever the manifest lists."""
    for path in [output, *output.rglob("*")]:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise StageStoreError(
                f"the agent's checkpoint holds {path.relative_to(output.parent)}, which is not "
                "a plain file or directory",
                EXIT_TRANSIENT,
            )
    try:
        manifest = read_manifest(output)
    except (ManifestError, OSError):
        return  # verify_output says what is wrong with it
    root = output.resolve()
    for entry in manifest.files:
        if not (output / entry.path).resolve().is_relative_to(root):
            raise StageStoreError(
                f"the agent's manifest lists {entry.path!r}, outside its checkpoint",
                EXIT_TRANSIENT,
            )


def run_restore(termination: Path) -> int:
    """`bakeline stage restore`: the input checkpoint from the store, where the agent reads it."""
    try:
        input_id, given = os.environ["BAKELINE_STORE_INPUT_ID"], os.environ["BAKELINE_INPUT"]
        store = _store()
        # What the agent never reads stays in the store (its output carries it by sha256).
        leave = roles_left_in_store(os.environ.get("BAKELINE_AGENT"))
        restore_input(store, input_id, Path(given), leave)
    except StageStoreError as error:
        return fail(termination, error)
    except (ApiError, OSError, KeyError, ValueError) as error:
        return fail(
            termination, StageStoreError(f"could not restore the input: {error}", EXIT_TRANSIENT)
        )
    return 0


def run_export(termination: Path) -> int:
    """`bakeline stage export`: a checkpoint on the job's claim (`BAKELINE_EXPORT`, mounted
    read-only) into the job's ConfigMap store, where `bakeline fetch` reads it with no more
    than the namespace's view rights; its id in the termination message."""
    try:
        source = Path(os.environ["BAKELINE_EXPORT"])
        _refuse_links(source)
        store = _store()
        ref = store.put(source, stage=os.environ.get("BAKELINE_STAGE", "export"))
    except StageStoreError as error:
        return fail(termination, error)
    except (ChecksumMismatchError, ManifestError) as error:
        return fail(
            termination, StageStoreError(f"the checkpoint does not verify: {error}", EXIT_INVALID)
        )
    except (ApiError, OSError, KeyError, ValueError) as error:
        return fail(termination, StageStoreError(f"could not export: {error}", EXIT_TRANSIENT))
    message = TerminationMessage(status=status_of_exit(0))
    message.store = {"prefix": store.prefix, "id": ref.id}
    termination.write_text(message.to_text())
    return 0


def wait_for_agent(
    handoff: Path, start_timeout: float = AGENT_START_TIMEOUT_S
) -> tuple[int | None, str]:
    """The agent's exit code and termination message once its container has ended; None for
    the code when the container ended without leaving one (killed, or its wrapper failed)."""
    deadline = time.monotonic() + start_timeout
    while not (handoff / HANDOFF_STARTED).exists():
        if time.monotonic() > deadline:
            raise StageStoreError(
                f"the agent's container did not start within {start_timeout:.0f} s", EXIT_TRANSIENT
            )
        time.sleep(0.05)
    lock = os.open(handoff / HANDOFF_LOCK, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # blocks while the agent's container runs
    finally:
        os.close(lock)
    outcome = read_outcome(handoff)
    return outcome if outcome is not None else (None, "")


def run_store(termination: Path) -> int:
    """`bakeline stage store`: once the agent has finished, store its checkpoint if it
    succeeded. Exits as the agent did when it failed (nothing stored), 1 when its container
    left no outcome or storing failed, 0 with the checkpoint stored."""
    # PID 1 ignores SIGTERM without a handler: a deleted pod's store stops at once.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    try:
        code, message = wait_for_agent(Path(os.environ["BAKELINE_HANDOFF"]))
    except StageStoreError as error:
        return fail(termination, error)
    if code is None:
        gone = "the agent's container ended without an outcome (killed?): nothing stored"
        return fail(termination, StageStoreError(gone, EXIT_TRANSIENT))
    termination.write_text(message[:TERMINATION_BYTES])
    if code != 0:
        print(f"bakeline stage: the agent exited {code}: nothing stored", file=sys.stderr)
        return code if 0 < code < 256 else EXIT_TRANSIENT
    try:
        store_output(
            _store(),
            Path(os.environ["BAKELINE_OUTPUT"]),
            os.environ["BAKELINE_STAGE"],
            termination,
        )
    except StageStoreError as error:
        return fail(termination, error)
    except (ApiError, OSError, KeyError, ValueError) as error:
        return fail(
            termination, StageStoreError(f"could not store the checkpoint: {error}", EXIT_TRANSIENT)
        )
    return 0
