"""A test harness that plays a node: it runs pods bound to a fake Node as local processes.

There is no kubelet or scheduler on the test control plane. This harness registers a Node,
binds pending pods to it, runs each pod's single container command as a local process and
writes pod status back the way a kubelet does (Running, then Succeeded or Failed with the
exit code, reason and termination message). It is test code, not product.

What it maps:
- env (literal values, fieldRef to the pod's metadata and node, configMapKeyRef, secretKeyRef),
  envFrom configMapRef;
- volumes: configMap and secret as files, persistentVolumeClaim as one shared directory per
  (namespace, claim), emptyDir as a private directory, projected (configMaps, a bound
  ServiceAccount token from the TokenRequest API, downward API namespace/name/uid; the
  kube-root-ca.crt that kube-controller-manager would publish comes from the plane's CA);
- KUBERNETES_SERVICE_HOST/PORT in every container, pointing at the API server;
- container paths (volume mount paths and terminationMessagePath) are rewritten in the command,
  the args, the env values and workingDir to the local directories standing in for them, since
  the process shares this machine's filesystem;
- `activeDeadlineSeconds`: the process is killed and the pod fails with DeadlineExceeded;
- deleting a pod kills its process, then the pod is removed (grace period 0) as a kubelet does.

Not mapped: images (the process runs in this Python environment), init containers, more than
one container, restart policies other than Never (a pod runs once), users and read-only roots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("node-harness")

TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
STATUS_RETRY_S = 60.0
SCRIPTED_AGENT = Path(__file__).resolve().parent / "scripted_agent.py"


def container_path(*first: Path) -> str:
    """The PATH a container sees: `first`, then this Python environment's console scripts,
    then this machine's PATH. An image runs `bakeline` straight from its environment's bin
    directory; the host's PATH may lack it (an interpreter started by its path) or find a
    version manager's shim first (pyenv's costs a pod 45 ms of CPU in shell scripts)."""
    scripts = sysconfig.get_path("scripts")
    entries = [*map(str, first), scripts, *os.environ.get("PATH", "").split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(entry for entry in entries if entry))


def scripted_agent_env(bin_dir: Path, script: Path) -> dict[str, str]:
    """A namespace environment whose `bakeline-agent` is the scripted agent (scripted_agent.py)
    reading `script`: for NodeHarness.namespace_env."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "bakeline-agent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SCRIPTED_AGENT}" "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": container_path(bin_dir), "SCRIPTED_AGENT_SCRIPT": str(script)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UnsupportedPodError(ValueError):
    """The pod uses something this harness does not emulate; it fails with this message."""


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    process: subprocess.Popen[bytes]
    started_at: str
    termination_file: Path
    log_file: Path
    fallback_to_logs: bool
    deadline: float | None
    killed_for: str = ""
    deleted: bool = False


@dataclass
class NodeHarness:
    """Plays one node for the pods bound to it. Use as a context manager or start()/stop()."""

    api_client: Any
    workdir: Path
    node_name: str = "bakeline-node"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Per-namespace environment on top, e.g. a PATH whose `bakeline-agent` is scripted.
    namespace_env: dict[str, dict[str, str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _pods: dict[str, RunningPod] = field(default_factory=dict, repr=False)
    _handled: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api_client)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NodeHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        for target in (self._watch_loop, self._deadline_loop):
            thread = threading.Thread(target=target, name=f"node-harness-{target.__name__}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            self._kill(pod, "harness stopped")
        for thread in self._threads:
            thread.join(timeout=15)

    # ------------------------------------------------------------------ queries for tests
    def pid_of(self, namespace: str, name: str) -> int | None:
        with self._lock:
            for pod in self._pods.values():
                if (pod.namespace, pod.name) == (namespace, name):
                    return pod.process.pid
        return None

    def logs(self, namespace: str, name: str) -> str:
        path = self.workdir / "pods" / namespace / name / "log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def evict(self, namespace: str, name: str) -> bool:
        """Evict a running pod as a kubelet under memory pressure does: the process is killed
        and the pod fails with reason Evicted. False if it is not running here."""
        with self._lock:
            running = [p for p in self._pods.values() if (p.namespace, p.name) == (namespace, name)]
        for pod in running:
            self._kill(pod, "evicted")
        return bool(running)

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        return self.workdir / "pvc" / namespace / claim

    # ------------------------------------------------------------------ node
    def _register_node(self) -> None:
        node: Any = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "bakeline.io/harness": "true"},
            },
        }
        with contextlib.suppress(ApiException):
            self.core.create_node(node)
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "500"}
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "bakeline node harness is ready",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            }
        }
        self.core.patch_node_status(self.node_name, status)

    # ------------------------------------------------------------------ watching
    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces()
                for pod in listing.items:
                    self._on_pod(pod)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=listing.metadata.resource_version
                    if listing.metadata
                    else None,
                    timeout_seconds=5,  # short: stop() is noticed quickly
                )
                for event in stream:
                    if self._stop.is_set():
                        break
                    self._on_pod(event["object"])
            except Exception:  # the harness must outlive API hiccups, as a kubelet does
                if not self._stop.is_set():
                    log.exception("node harness watch failed; re-listing")
                    time.sleep(0.5)

    def _on_pod(self, pod: Any) -> None:
        meta, spec = pod.metadata, pod.spec
        key = meta.uid
        if spec.node_name in (None, "") and meta.deletion_timestamp is None:
            if (pod.status.phase or "Pending") == "Pending":
                self._bind(meta.namespace, meta.name)
            return
        if spec.node_name != self.node_name:
            return
        if meta.deletion_timestamp is not None:
            self._on_delete(pod)
            return
        with self._lock:
            if key in self._handled or pod.status.phase in ("Succeeded", "Failed"):
                return
            self._handled.add(key)
        threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()

    def _bind(self, namespace: str, name: str) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            # The client cannot deserialize the Status a binding returns: skip decoding.
            self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _on_delete(self, pod: Any) -> None:
        meta = pod.metadata
        with self._lock:
            running = self._pods.get(meta.uid)
            self._handled.add(meta.uid)
        if running is not None:
            running.deleted = True
            self._kill(running, "pod deleted")
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                meta.name,
                meta.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions={"uid": meta.uid}
                ),
            )

    # ------------------------------------------------------------------ running
    def _run_pod(self, pod: Any) -> None:
        meta = pod.metadata
        pod_dir = self.workdir / "pods" / meta.namespace / meta.name
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        log_file = pod_dir / "log"
        try:
            container, argv, env, cwd, termination_file = self._prepare(pod, pod_dir)
        except (UnsupportedPodError, ApiException) as exc:
            reason = "CreateContainerConfigError"
            message = _api_message(exc) if isinstance(exc, ApiException) else str(exc)
            self._write_terminated(pod, 128, reason, message[:1024], _now(), failed_reason=reason)
            return
        started_at = _now()
        with log_file.open("wb") as sink:
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a process group: kill takes its children too
                )
            except OSError as exc:
                message = f"failed to start {argv[0]!r}: {exc}"
                self._write_terminated(pod, 128, "StartError", message, started_at)
                return
        deadline = pod.spec.active_deadline_seconds
        running = RunningPod(
            namespace=meta.namespace,
            name=meta.name,
            uid=meta.uid,
            process=process,
            started_at=started_at,
            termination_file=termination_file,
            log_file=log_file,
            fallback_to_logs=container.termination_message_policy == "FallbackToLogsOnError",
            deadline=time.monotonic() + deadline if deadline else None,
        )
        with self._lock:
            self._pods[meta.uid] = running
        self._write_running(pod, started_at, container.name, container.image)
        exit_code = process.wait()
        with self._lock:
            self._pods.pop(meta.uid, None)
        if running.deleted:
            return
        self._finish(pod, running, exit_code)

    def _finish(self, pod: Any, running: RunningPod, exit_code: int) -> None:
        # A process killed by signal N reports -N; a container runtime reports 128 + N.
        code = 128 - exit_code if exit_code < 0 else exit_code
        message = ""
        if running.termination_file.is_file():
            message = running.termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(
                errors="replace"
            )
        if not message and code != 0 and running.fallback_to_logs:
            tail = running.log_file.read_bytes()[-2048:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-80:])
        if running.killed_for == "evicted":
            self._write_terminated(
                pod,
                code,
                "Error",
                message,
                running.started_at,
                failed_reason="Evicted",
                failed_message="The node was low on resource: memory. Threshold quantity: 100Mi, "
                "available: 42Mi. Container agent was using 900Mi, request is 0.",
            )
        elif code == 137 and (running.log_file.parent / ".oom-killed").is_file():
            # The scripted agent's stand-in for the kernel's OOM killer (see scripted_agent.py).
            self._write_terminated(pod, code, "OOMKilled", message, running.started_at)
        elif running.killed_for == "deadline":
            self._write_terminated(
                pod,
                code,
                "DeadlineExceeded",
                message,
                running.started_at,
                failed_reason="DeadlineExceeded",
                failed_message="Pod was active on the node longer than the specified deadline",
            )
        else:
            self._write_terminated(
                pod, code, "Completed" if code == 0 else "Error", message, running.started_at
            )

    def _deadline_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [p for p in self._pods.values() if p.deadline and now > p.deadline]
            for pod in expired:
                self._kill(pod, "deadline")

    def _kill(self, pod: RunningPod, why: str) -> None:
        if pod.process.poll() is not None:
            return
        pod.killed_for = pod.killed_for or why
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pod.process.pid, signal.SIGTERM)
        try:
            pod.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ pod spec -> process
    def _prepare(self, pod: Any, pod_dir: Path) -> tuple[Any, list[str], dict[str, str], str, Path]:
        spec, meta = pod.spec, pod.metadata
        if spec.init_containers:
            raise UnsupportedPodError("node harness: init containers are not supported")
        if len(spec.containers) != 1:
            raise UnsupportedPodError("node harness: exactly one container is supported")
        container = spec.containers[0]
        if not container.command:
            raise UnsupportedPodError(
                "node harness: the container must state its command (there is no image entrypoint)"
            )
        mounts = self._materialize_volumes(pod, pod_dir)
        termination_path = container.termination_message_path or DEFAULT_TERMINATION_PATH
        termination_file = pod_dir / "termination-log"
        mounts[termination_path] = termination_file
        rewrite = _path_rewriter(mounts)
        argv = [rewrite(part) for part in [*container.command, *(container.args or [])]]
        # The harness's own environment stands for the image's; only what the pod spec says is
        # rewritten (a mount at /tmp must not redirect this machine's /tmp paths in PATH).
        env = {
            **os.environ,
            "PATH": container_path(),
            **self.extra_env,
            **self.namespace_env.get(meta.namespace, {}),
        }
        env.pop("KUBECONFIG", None)  # the "container" has no admin credentials
        # What kubelet sets in every container: where in-cluster clients find the API server.
        address = urllib.parse.urlsplit(self.api_client.configuration.host)
        env["KUBERNETES_SERVICE_HOST"] = address.hostname or "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(address.port or 443)
        env.update(
            {key: rewrite(value) for key, value in self._container_env(pod, container).items()}
        )
        cwd = rewrite(container.working_dir) if container.working_dir else str(pod_dir)
        return container, argv, env, cwd, termination_file

    def _container_env(self, pod: Any, container: Any) -> dict[str, str]:
        meta = pod.metadata
        env: dict[str, str] = {}
        for source in container.env_from or []:
            if source.config_map_ref is not None:
                data = self._config_map(meta.namespace, source.config_map_ref.name)
                env.update({(source.prefix or "") + k: v for k, v in (data.data or {}).items()})
        fields = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.node_name,
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from
            if ref.field_ref is not None:
                path = ref.field_ref.field_path
                match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                if match:
                    source = meta.labels if match.group(1) == "labels" else meta.annotations
                    env[var.name] = (source or {}).get(match.group(2), "")
                elif path in fields:
                    env[var.name] = fields[path]
                else:
                    raise UnsupportedPodError(f"node harness: fieldRef {path} is not supported")
            elif ref.config_map_key_ref is not None:
                key_ref = ref.config_map_key_ref
                data = self._config_map(meta.namespace, key_ref.name).data or {}
                if key_ref.key not in data and not key_ref.optional:
                    raise UnsupportedPodError(
                        f"configmap {key_ref.name!r} has no key {key_ref.key!r}"
                    )
                env[var.name] = data.get(key_ref.key, "")
            elif ref.secret_key_ref is not None:
                secret = self.core.read_namespaced_secret(ref.secret_key_ref.name, meta.namespace)
                raw = (secret.data or {}).get(ref.secret_key_ref.key, "")
                env[var.name] = base64.b64decode(raw).decode()
            else:
                raise UnsupportedPodError(f"node harness: env {var.name} source is not supported")
        return env

    def _config_map(self, namespace: str, name: str) -> Any:
        return self.core.read_namespaced_config_map(name, namespace)

    def _materialize_volumes(self, pod: Any, pod_dir: Path) -> dict[str, Path]:
        meta = pod.metadata
        volumes: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            target = pod_dir / "volumes" / volume.name
            if volume.config_map is not None:
                cm = self._config_map(meta.namespace, volume.config_map.name)
                files = {k: v.encode() for k, v in (cm.data or {}).items()}
                files |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
                _write_files(target, files, volume.config_map.items)
            elif volume.secret is not None:
                secret = self.core.read_namespaced_secret(volume.secret.secret_name, meta.namespace)
                files = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                _write_files(target, files, volume.secret.items)
            elif volume.persistent_volume_claim is not None:
                claim = volume.persistent_volume_claim.claim_name
                self.core.read_namespaced_persistent_volume_claim(claim, meta.namespace)
                target = self.pvc_dir(meta.namespace, claim)
                target.mkdir(parents=True, exist_ok=True)
            elif volume.empty_dir is not None:
                target.mkdir(parents=True, exist_ok=True)
            elif volume.projected is not None:
                self._project(pod, volume.projected, target)
            else:
                raise UnsupportedPodError(
                    f"node harness: volume {volume.name!r} has a type it does not emulate"
                )
            volumes[volume.name] = target
        mounts: dict[str, Path] = {}
        for mount in pod.spec.containers[0].volume_mounts or []:
            if mount.name not in volumes:
                raise UnsupportedPodError(f"volumeMount {mount.name!r} names no volume")
            source = volumes[mount.name]
            mounts[mount.mount_path] = source / mount.sub_path if mount.sub_path else source
        return mounts

    def _project(self, pod: Any, projected: Any, target: Path) -> None:
        """A projected volume: configMaps, a bound ServiceAccount token, downward API fields."""
        meta = pod.metadata
        target.mkdir(parents=True, exist_ok=True)
        for source in projected.sources or []:
            if source.config_map is not None:
                ref = source.config_map
                try:
                    cm = self._config_map(meta.namespace, ref.name)
                    files = {k: v.encode() for k, v in (cm.data or {}).items()}
                    files |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    if ref.name == "kube-root-ca.crt":
                        # Published by kube-controller-manager, which this plane does not run.
                        files = {
                            "ca.crt": Path(self.api_client.configuration.ssl_ca_cert).read_bytes()
                        }
                    elif ref.optional:
                        continue
                    else:
                        raise UnsupportedPodError(f"configmap {ref.name!r} not found") from exc
                _write_files(target, files, ref.items)
            elif source.service_account_token is not None:
                token = source.service_account_token
                account = pod.spec.service_account_name or "default"
                request: Any = {
                    "spec": {
                        "audiences": [token.audience] if token.audience else None,
                        "expirationSeconds": token.expiration_seconds or 3600,
                        "boundObjectRef": {
                            "kind": "Pod",
                            "apiVersion": "v1",
                            "name": meta.name,
                            "uid": meta.uid,
                        },
                    }
                }
                try:
                    issued: Any = self.core.create_namespaced_service_account_token(
                        account, meta.namespace, request
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        raise UnsupportedPodError(f'serviceaccount "{account}" not found') from exc
                    raise
                _write_files(target, {token.path: issued.status.token.encode()}, None)
            elif source.downward_api is not None:
                values = {
                    "metadata.namespace": meta.namespace,
                    "metadata.name": meta.name,
                    "metadata.uid": meta.uid,
                }
                for item in source.downward_api.items or []:
                    path = item.field_ref.field_path if item.field_ref else ""
                    if path not in values:
                        raise UnsupportedPodError(f"node harness: downwardAPI {path} unsupported")
                    _write_files(target, {item.path: values[path].encode()}, None)
            else:
                raise UnsupportedPodError("node harness: projected source type not emulated")

    # ------------------------------------------------------------------ status
    def _write_running(self, pod: Any, started_at: str, name: str, image: str) -> None:
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": started_at}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started_at,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": name,
                    "image": image,
                    "imageID": "",
                    "containerID": f"harness://{pod.metadata.uid}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started_at}},
                }
            ],
        }
        self._patch_status(pod, status)

    def _write_terminated(
        self,
        pod: Any,
        exit_code: int,
        reason: str,
        message: str,
        started_at: str,
        failed_reason: str | None = None,
        failed_message: str | None = None,
    ) -> None:
        container = pod.spec.containers[0]
        finished = _now()
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": finished,
            "containerID": f"harness://{pod.metadata.uid}",
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if exit_code == 0 and failed_reason is None else "Failed"
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": finished,
                },
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": finished,
                },
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "containerID": f"harness://{pod.metadata.uid}",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        if failed_reason:
            status["reason"] = failed_reason
            status["message"] = failed_message or message
        self._patch_status(pod, status)

    def _patch_status(self, pod: Any, status: dict[str, Any]) -> None:
        # A kubelet keeps trying while the API server is away (a restart): so does the harness.
        deadline = time.monotonic() + STATUS_RETRY_S
        while True:
            try:
                self.core.patch_namespaced_pod_status(
                    pod.metadata.name, pod.metadata.namespace, {"status": status}
                )
                return
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report to
                    log.warning("could not write status of %s: %s", pod.metadata.name, exc.reason)
                return
            except urllib3.exceptions.HTTPError:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                time.sleep(0.5)


def _api_message(exc: ApiException) -> str:
    """What a kubelet would say: the API's own words (e.g. configmaps "m" not found)."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc)
    except (ValueError, AttributeError):
        return str(exc)


def _write_files(target: Path, files: dict[str, bytes], items: Any) -> None:
    target.mkdir(parents=True, exist_ok=True)
    selected = {item.key: item.path for item in items} if items else {k: k for k in files}
    for key, relative in selected.items():
        if key not in files:
            raise UnsupportedPodError(f"volume item {key!r} is not in its source")
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[key])


def _path_rewriter(mounts: dict[str, Path]) -> Callable[[str], str]:
    """Replace container paths (longest first) by the local paths that stand in for them."""
    ordered = sorted(mounts, key=len, reverse=True)
    if not ordered:
        return lambda value: value
    pattern = re.compile(
        "|".join(rf"(?<![\w./-]){re.escape(p.rstrip('/'))}(?=$|[/\s\"',;:=])" for p in ordered)
    )
    lookup = {p.rstrip("/"): str(mounts[p]) for p in ordered}

    def rewrite(value: str) -> str:
        return pattern.sub(lambda match: lookup[match.group(0)], value)

    return rewrite
