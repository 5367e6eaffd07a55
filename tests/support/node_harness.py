"""A test harness that plays a node: it runs pods bound to a fake Node as local processes.

There is no kubelet or scheduler on the test control plane. This harness registers a Node,
binds pending pods to it, runs each container's command as a local process (init containers
one after another, each to completion; then the regular containers all at once) and writes pod
status back the way a kubelet does: Pending while initializing, Running, then Succeeded or
Failed, with each container's exit code, reason and termination message in
initContainerStatuses and containerStatuses. It is test code, not product.

What it maps:
- env (literal values, fieldRef to the pod's metadata and node, configMapKeyRef, secretKeyRef),
  envFrom configMapRef;
- volumes: configMap and secret as files, persistentVolumeClaim as one shared directory per
  (namespace, claim), emptyDir as a directory shared by the pod's containers, projected
  (configMaps, a bound ServiceAccount token from the TokenRequest API, downward API
  namespace/name/uid; the kube-root-ca.crt that kube-controller-manager would publish comes
  from the plane's CA); each container sees only the volumes it mounts (its paths are
  rewritten to them, no other container's), a token included;
- KUBERNETES_SERVICE_HOST/PORT in every container, pointing at the API server;
- container paths (volume mount paths and terminationMessagePath, one file per container) are
  rewritten in the command, the args, the env values and workingDir to the local directories
  standing in for them, since the process shares this machine's filesystem;
- `activeDeadlineSeconds`: the processes are killed and the pod fails with DeadlineExceeded;
- deleting a pod kills its processes, then the pod is removed (grace period 0) as a kubelet does.

Not mapped: images (the process runs in this Python environment), restart policies other than
Never (a pod runs once; no sidecars), users, read-only roots and mounts, and isolation: the
processes share this machine's filesystem and could open each other's files by their local
paths. What a container is given is recorded (`container_env`) for tests to check.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
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

from bakeline.contract import TERMINATION_LIMIT, TERMINATION_MESSAGE_PATH

log = logging.getLogger("node-harness")

TERMINATION_MESSAGE_LIMIT = TERMINATION_LIMIT  # what a kubelet keeps, as the contract says
DEFAULT_TERMINATION_PATH = TERMINATION_MESSAGE_PATH
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
class RunningContainer:
    name: str
    image: str
    process: subprocess.Popen[bytes]
    started_at: str
    termination_file: Path
    log_file: Path
    fallback_to_logs: bool


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    deadline: float | None
    started_at: str
    containers: list[RunningContainer] = field(default_factory=list)  # started so far
    killed_for: str = ""
    deleted: bool = False

    def running(self) -> list[RunningContainer]:
        return [c for c in self.containers if c.process.poll() is None]


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
    _envs: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict, repr=False)

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
    def pid_of(self, namespace: str, name: str, container: str | None = None) -> int | None:
        """The process of a running container: `container`, or the pod's first running one."""
        with self._lock:
            for pod in self._pods.values():
                if (pod.namespace, pod.name) == (namespace, name):
                    for running in pod.running():
                        if container in (None, running.name):
                            return running.process.pid
        return None

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's output, or every container's (init containers first)."""
        folder = self.workdir / "pods" / namespace / name / "logs"
        if container is not None:
            path = folder / container
            return path.read_text(errors="replace") if path.is_file() else ""
        paths = sorted(folder.glob("*"), key=lambda path: path.stat().st_mtime_ns)
        return "".join(path.read_text(errors="replace") for path in paths if path.is_file())

    def container_env(self, namespace: str, name: str, container: str) -> dict[str, str] | None:
        """The environment a container's process was started with (None if it never was)."""
        with self._lock:
            env = self._envs.get((namespace, name, container))
        return dict(env) if env is not None else None

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
        meta, spec = pod.metadata, pod.spec
        pod_dir = self.workdir / "pods" / meta.namespace / meta.name
        shutil.rmtree(pod_dir, ignore_errors=True)
        (pod_dir / "logs").mkdir(parents=True)
        deadline = spec.active_deadline_seconds
        running = RunningPod(
            namespace=meta.namespace,
            name=meta.name,
            uid=meta.uid,
            deadline=time.monotonic() + deadline if deadline else None,
            started_at=_now(),
        )
        inits, mains = list(spec.init_containers or []), list(spec.containers or [])
        try:
            volumes = self._materialize_volumes(pod, pod_dir)
            prepared = {c.name: self._prepare(pod, pod_dir, volumes, c) for c in [*inits, *mains]}
        except (UnsupportedPodError, ApiException) as exc:
            reason = "CreateContainerConfigError"
            message = (_api_message(exc) if isinstance(exc, ApiException) else str(exc))[:1024]
            failed = _terminated_state(128, reason, message, running.started_at, pod)
            states = {c.name: failed for c in mains}
            self._write_status(pod, running, "Failed", {}, states, reason, message)
            return
        with self._lock:
            self._pods[meta.uid] = running
        try:
            self._run_containers(pod, pod_dir, running, prepared)
        finally:
            with self._lock:
                self._pods.pop(meta.uid, None)

    def _run_containers(
        self,
        pod: Any,
        pod_dir: Path,
        running: RunningPod,
        prepared: dict[str, tuple[list[str], dict[str, str], str, Path]],
    ) -> None:
        inits, mains = list(pod.spec.init_containers or []), list(pod.spec.containers)
        init_states: dict[str, dict[str, Any]] = {}
        for container in inits:  # one after another, each to completion
            running_now = {**init_states, container.name: _running_state()}
            self._write_status(pod, running, "Pending", running_now, {})
            started = self._start(pod, pod_dir, container, prepared[container.name], running)
            code = started.process.wait() if started else 128
            if running.deleted:
                return
            init_states[container.name] = self._terminated(pod_dir, started, code, pod)
            if _exit_code(init_states[container.name]) != 0 or running.killed_for:
                self._finish(pod, running, init_states, {})
                return
        states: dict[str, dict[str, Any]] = {}
        waits: queue.Queue[tuple[RunningContainer, int]] = queue.Queue()
        for container in mains:  # all at once, in their order
            started = self._start(pod, pod_dir, container, prepared[container.name], running)
            if started is None:
                states[container.name] = self._terminated(pod_dir, None, 128, pod)
                continue
            states[container.name] = _running_state(started.started_at)
            threading.Thread(
                target=lambda c=started: waits.put((c, c.process.wait())), daemon=True
            ).start()
        self._write_status(pod, running, "Running", init_states, states)
        for _ in range(sum("running" in state for state in states.values())):
            finished, code = waits.get()
            if running.deleted:
                return
            states[finished.name] = self._terminated(pod_dir, finished, code, pod)
            if any("running" in state for state in states.values()):
                self._write_status(pod, running, "Running", init_states, states)
        if not running.deleted:
            self._finish(pod, running, init_states, states)

    def _start(
        self,
        pod: Any,
        pod_dir: Path,
        container: Any,
        prepared: tuple[list[str], dict[str, str], str, Path],
        running: RunningPod,
    ) -> RunningContainer | None:
        """The container's process, started; None when it could not be (its log says why)."""
        meta = pod.metadata
        argv, env, cwd, termination_file = prepared
        log_file = pod_dir / "logs" / container.name
        with self._lock:
            self._envs[(meta.namespace, meta.name, container.name)] = env
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
                sink.write(f"failed to start {argv[0]!r}: {exc}\n".encode())
                return None
        started = RunningContainer(
            name=container.name,
            image=container.image,
            process=process,
            started_at=started_at,
            termination_file=termination_file,
            log_file=log_file,
            fallback_to_logs=container.termination_message_policy == "FallbackToLogsOnError",
        )
        with self._lock:
            running.containers.append(started)
        if running.killed_for:  # the pod was killed while this one started
            self._kill(running, running.killed_for)
        return started

    def _terminated(
        self, pod_dir: Path, container: RunningContainer | None, exit_code: int, pod: Any
    ) -> dict[str, Any]:
        """A finished container's state, as a kubelet reports it."""
        if container is None:
            return _terminated_state(128, "StartError", "failed to start", _now(), pod)
        # A process killed by signal N reports -N; a container runtime reports 128 + N.
        code = 128 - exit_code if exit_code < 0 else exit_code
        message = ""
        if container.termination_file.is_file():
            message = container.termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(
                errors="replace"
            )
        if not message and code != 0 and container.fallback_to_logs:
            tail = container.log_file.read_bytes()[-2048:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-80:])
        # The scripted agent's stand-in for the kernel's OOM killer (see scripted_agent.py).
        oom = code == 137 and (pod_dir / ".oom-killed").is_file()
        reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
        return _terminated_state(code, reason, message, container.started_at, pod)

    def _finish(
        self,
        pod: Any,
        running: RunningPod,
        init_states: dict[str, dict[str, Any]],
        states: dict[str, dict[str, Any]],
    ) -> None:
        """The pod's final status. After a failed init container the others never start: a
        kubelet leaves them waiting."""
        init_failed = any(_exit_code(state) != 0 for state in init_states.values())
        for container in pod.spec.containers:
            if init_failed:
                states[container.name] = {"waiting": {"reason": "PodInitializing"}}
        failed = any(
            _exit_code(state) not in (None, 0)
            for state in [*init_states.values(), *states.values()]
        )
        if running.killed_for == "evicted":
            message = (
                "The node was low on resource: memory. Threshold quantity: 100Mi, "
                "available: 42Mi. Container agent was using 900Mi, request is 0."
            )
            self._write_status(pod, running, "Failed", init_states, states, "Evicted", message)
        elif running.killed_for == "deadline":
            message = "Pod was active on the node longer than the specified deadline"
            self._write_status(
                pod, running, "Failed", init_states, states, "DeadlineExceeded", message
            )
        else:
            phase = "Failed" if failed else "Succeeded"
            self._write_status(pod, running, phase, init_states, states)

    def _deadline_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [p for p in self._pods.values() if p.deadline and now > p.deadline]
            for pod in expired:
                self._kill(pod, "deadline")

    def _kill(self, pod: RunningPod, why: str) -> None:
        pod.killed_for = pod.killed_for or why
        with self._lock:
            alive = pod.running()
        for container in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGTERM)
        for container in alive:
            try:
                container.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ pod spec -> process
    def _prepare(
        self, pod: Any, pod_dir: Path, volumes: dict[str, Path], container: Any
    ) -> tuple[list[str], dict[str, str], str, Path]:
        meta = pod.metadata
        mounts = _mounts(container, volumes)
        termination_path = container.termination_message_path or DEFAULT_TERMINATION_PATH
        termination_file = pod_dir / "termination" / container.name
        termination_file.parent.mkdir(exist_ok=True)
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
        return argv, env, cwd, termination_file

    def _container_env(self, pod: Any, container: Any) -> dict[str, str]:
        meta = pod.metadata
        env: dict[str, str] = {}
        for source in container.env_from or []:
            if source.config_map_ref is not None:
                data = self._config_map(meta.namespace, source.config_map_ref.name)
                env.update({(source.prefix or "") + k: v for k, v in (data.data or {}).items()})
            elif source.secret_ref is not None:  # as a kubelet does: the values decoded
                secret = self.core.read_namespaced_secret(source.secret_ref.name, meta.namespace)
                env.update(
                    {
                        (source.prefix or "") + k: base64.b64decode(v).decode()
                        for k, v in (secret.data or {}).items()
                    }
                )
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
        """Every volume of the pod, by name: its local directory, shared by its containers."""
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
        return volumes

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
    def _write_status(
        self,
        pod: Any,
        running: RunningPod,
        phase: str,
        init_states: dict[str, dict[str, Any]],
        states: dict[str, dict[str, Any]],
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """The pod's status as a kubelet writes it: phase, conditions and every container's
        state (one not started yet is waiting)."""
        now = _now()
        done = phase in ("Succeeded", "Failed")
        ready = phase == "Running" and all("running" in state for state in states.values())
        initialized = bool(states) and not any("waiting" in state for state in states.values())
        conditions: list[dict[str, Any]] = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": _true(initialized), "lastTransitionTime": now},
            {"type": "ContainersReady", "status": _true(ready), "lastTransitionTime": now},
            {"type": "Ready", "status": _true(ready), "lastTransitionTime": now},
        ]
        if done:
            for condition in conditions[2:]:
                condition["reason"] = "PodCompleted"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": running.started_at,
            "conditions": conditions,
            "containerStatuses": [
                _container_status(pod, c, states.get(c.name), "ContainerCreating")
                for c in pod.spec.containers
            ],
        }
        if pod.spec.init_containers:
            status["initContainerStatuses"] = [
                _container_status(pod, c, init_states.get(c.name), "PodInitializing")
                for c in pod.spec.init_containers
            ]
        if reason:
            status["reason"], status["message"] = reason, message or ""
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


def _true(value: bool) -> str:
    return "True" if value else "False"


def _exit_code(state: dict[str, Any]) -> int | None:
    """A terminated state's exit code; None for one still waiting or running."""
    terminated = state.get("terminated")
    return int(terminated["exitCode"]) if terminated else None


def _running_state(started_at: str | None = None) -> dict[str, Any]:
    return {"running": {"startedAt": started_at or _now()}}


def _terminated_state(
    code: int, reason: str, message: str, started_at: str, pod: Any
) -> dict[str, Any]:
    terminated: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": started_at,
        "finishedAt": _now(),
        "containerID": f"harness://{pod.metadata.uid}",
    }
    if message:
        terminated["message"] = message
    return {"terminated": terminated}


def _container_status(
    pod: Any, container: Any, state: dict[str, Any] | None, waiting: str
) -> dict[str, Any]:
    state = state or {"waiting": {"reason": waiting}}
    return {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "containerID": f"harness://{pod.metadata.uid}/{container.name}",
        "ready": "running" in state,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
    }


def _mounts(container: Any, volumes: dict[str, Path]) -> dict[str, Path]:
    """The container's own mounts: container path -> local path (no other container's)."""
    mounts: dict[str, Path] = {}
    for mount in container.volume_mounts or []:
        if mount.name not in volumes:
            raise UnsupportedPodError(f"volumeMount {mount.name!r} names no volume")
        source = volumes[mount.name]
        mounts[mount.mount_path] = source / mount.sub_path if mount.sub_path else source
    return mounts


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
    """Replace container paths (longest first) by the local paths that stand in for them, alone
    or in a file:// URI (a job document names its dataset so)."""
    ordered = sorted(mounts, key=len, reverse=True)
    if not ordered:
        return lambda value: value
    start = r"(?:(?<![\w./-])|(?<=file://))"
    pattern = re.compile(
        "|".join(rf"{start}{re.escape(p.rstrip('/'))}(?=$|[/\s\"',;:=])" for p in ordered)
    )
    lookup = {p.rstrip("/"): str(mounts[p]) for p in ordered}

    def rewrite(value: str) -> str:
        return pattern.sub(lambda match: lookup[match.group(0)], value)

    return rewrite
