"""Build and run a local Kubernetes control plane (etcd + kube-apiserver) on loopback.

No Docker engine or binary download exists where Bakeline is developed, so the binaries are
built from the Go modules pinned in hack/tools/*/go.mod, once, into a per-user cache keyed by
version. The same code serves `hack/controlplane up|down|status|build` and the pytest fixtures.

Identities: an admin bearer token in `system:masters`; ServiceAccount tokens are signed with a
key generated per control plane, so least-privilege identities can be tested via TokenRequest.
There is no kube-controller-manager: no garbage collection, no namespace finalization and no
default ServiceAccount (the ServiceAccount admission plugin is off, as in envtest).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS_DIR = Path(__file__).resolve().parent / "tools"
ADMIN_USER = "bakeline-admin"
# The one real node's identity (hack/realnode.py): the Node authorizer and NodeRestriction
# know a kubelet by this user name and group, so it may touch only its Node and its pods.
NODE_NAME = "bakeline-realnode"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0
PORT_ATTEMPTS = 5


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or kept alive; the message says why."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Tool:
    """One binary: the Go module that pins it and the package to build."""

    name: str
    module_dir: str
    module: str
    package: str

    def version(self) -> str:
        gomod = (TOOLS_DIR / self.module_dir / "go.mod").read_text()
        match = re.search(rf"^\s*{re.escape(self.module)} (v\S+)", gomod, re.MULTILINE)
        if not match:
            raise ControlPlaneError(f"{self.module} is not pinned in hack/tools/{self.module_dir}")
        return match.group(1)

    def ldflags(self) -> str:
        version = self.version()
        flags = ["-s", "-w"]
        if self.module == "k8s.io/kubernetes":
            # Without these the server reports v0.0.0-master and helm refuses kubeVersion checks.
            major, minor = version.lstrip("v").split(".")[:2]
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [
                    f"-X {pkg}.gitVersion={version}",
                    f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}",
                    f"-X {pkg}.gitTreeState=clean",
                    f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
                ]
        elif self.module == "helm.sh/helm/v3":
            flags.append(f"-X helm.sh/helm/v3/internal/version.version={version}")
            # helm template and lint assume Kubernetes 1.20 unless told: tell them ours.
            major, minor = TOOLS["kube-apiserver"].version().lstrip("v").split(".")[:2]
            for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
                flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
        elif self.module == "github.com/distribution/distribution/v3":
            flags.append(f"-X github.com/distribution/distribution/v3/version.version={version}")
        return " ".join(flags)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "kube-apiserver",
            "kubernetes",
            "k8s.io/kubernetes",
            "k8s.io/kubernetes/cmd/kube-apiserver",
        ),
        Tool("kubectl", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubectl"),
        # The real node of the real_node tests (hack/realnode.py): same pinned module.
        Tool("kubelet", "kubernetes", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubelet"),
        Tool(
            "kube-scheduler",
            "kubernetes",
            "k8s.io/kubernetes",
            "k8s.io/kubernetes/cmd/kube-scheduler",
        ),
        Tool("etcd", "kubernetes", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        Tool("helm", "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm"),
        # Artifact delivery servers for the tests (hack/storage_servers.py): an S3 store,
        # SeaweedFS (Apache-2.0; MinIO is AGPL, which the workplace's package notes rule out),
        # and the CNCF distribution registry for OCI artifacts.
        Tool(
            "weed",
            "seaweedfs",
            "github.com/seaweedfs/seaweedfs",
            "github.com/seaweedfs/seaweedfs/weed",
        ),
        Tool(
            "registry",
            "distribution",
            "github.com/distribution/distribution/v3",
            "github.com/distribution/distribution/v3/cmd/registry",
        ),
    )
}


def cache_dir() -> Path:
    if explicit := os.environ.get("BAKELINE_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bakeline"


def binary_path(name: str) -> Path:
    """Keyed by version and build flags: changing either builds a new binary."""
    tool = TOOLS[name]
    flags = hashlib.sha256(tool.ldflags().encode()).hexdigest()[:8]
    return cache_dir() / "bin" / f"{tool.name}-{tool.version()}-{flags}"


def build_binary(name: str, log: Any = print) -> Path:
    """Build one pinned binary into the cache unless it is already there."""
    target = binary_path(name)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError(
            "Go is not installed: install Go 1.24 or newer (Debian: `apt-get install golang`, "
            "or the official tarball) and make sure `go` is on PATH, then run again."
        )
    tool = TOOLS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    log(f"building {name} {tool.version()} (pinned in hack/tools/{tool.module_dir}/go.mod)...")
    started = time.monotonic()
    env = {**os.environ, "GOTOOLCHAIN": "local"}  # never download another toolchain
    result = subprocess.run(
        [go, "build", "-trimpath", "-ldflags", tool.ldflags(), "-o", str(partial), tool.package],
        cwd=TOOLS_DIR / tool.module_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise ControlPlaneError(
            f"building {name} failed (exit {result.returncode}). Check that Go is 1.24 or newer "
            f"(`go version`) and that the Go module proxy is reachable. Output:\n{tail}"
        )
    partial.replace(target)  # atomic: a half-written binary never sits at the final path
    log(f"built {name} in {time.monotonic() - started:.0f}s -> {target}")
    return target


def ensure_binaries(names: Sequence[str] = tuple(TOOLS), log: Any = print) -> dict[str, Path]:
    return {name: build_binary(name, log) for name in names}


# --------------------------------------------------------------------------- control plane


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): reap it if it is ours, and read its state if it is not
    # (an orphan whose parent, e.g. a container's PID 1, never reaps it).
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ControlPlane:
    """etcd and kube-apiserver started from a working directory that records their state."""

    workdir: Path
    etcd_pid: int = 0
    apiserver_pid: int = 0
    etcd_port: int = 0
    apiserver_port: int = 0
    admin_token: str = ""
    node_token: str = ""
    data_dir: str = ""
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    # ---- paths
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # ---- state
    def save(self) -> None:
        state = {
            "etcd_pid": self.etcd_pid,
            "apiserver_pid": self.apiserver_pid,
            "etcd_port": self.etcd_port,
            "apiserver_port": self.apiserver_port,
            "admin_token": self.admin_token,
            "node_token": self.node_token,
            "data_dir": self.data_dir,
        }
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)

    @classmethod
    def load(cls, workdir: Path) -> ControlPlane:
        plane = cls(workdir=workdir)
        if plane.state_file.is_file():
            for key, value in json.loads(plane.state_file.read_text()).items():
                setattr(plane, key, value)
        return plane

    # ---- lifecycle
    def start(self, log: Any = print) -> None:
        """Start etcd and kube-apiserver, or do nothing if this workdir's pair is healthy."""
        if self.is_healthy():
            return
        self.stop()
        binaries = ensure_binaries(("etcd", "kube-apiserver", "kubectl"), log)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        started = time.monotonic()
        self._start_with_port_retries("etcd", lambda: self._spawn_etcd(binaries["etcd"]))
        self._start_with_port_retries(
            "kube-apiserver", lambda: self._spawn_apiserver(binaries["kube-apiserver"])
        )
        self._write_kubeconfig()
        self.save()
        log(f"control plane ready in {time.monotonic() - started:.1f}s at {self.server}")

    def stop(self) -> None:
        """Stop both processes (TERM, then KILL) and remove the data directory. Idempotent."""
        # One after the other: kube-apiserver shuts down slowly while etcd is already gone.
        for pid in (self.apiserver_pid, self.etcd_pid):
            if not pid or not _pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        self._children.clear()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.etcd_pid = self.apiserver_pid = 0
        self.data_dir = ""
        if self.workdir.is_dir():
            self.save()

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port, keeping etcd's data."""
        if self.apiserver_pid and _pid_alive(self.apiserver_pid):
            os.killpg(self.apiserver_pid, signal.SIGTERM)
            while _pid_alive(self.apiserver_pid):
                time.sleep(0.1)
        self._spawn_apiserver(binary_path("kube-apiserver"), keep_port=True)
        self._wait_ready("kube-apiserver")
        self.save()

    def is_healthy(self) -> bool:
        if not (self.etcd_pid and self.apiserver_pid):
            return False
        if not (_pid_alive(self.etcd_pid) and _pid_alive(self.apiserver_pid)):
            return False
        try:
            return self.readyz() == "ok"
        except OSError:
            return False

    def assert_alive(self) -> None:
        """Raise with the logs' tails if either process has died."""
        for name, pid in (("etcd", self.etcd_pid), ("kube-apiserver", self.apiserver_pid)):
            if not pid or not _pid_alive(pid):
                raise ControlPlaneError(
                    f"{name} (pid {pid}) is not running. Last lines of its log:\n"
                    f"{_tail(self.log_file(name))}"
                )

    def readyz(self) -> str:
        request = urllib.request.Request(  # noqa: S310 (https to our own loopback server)
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
            return str(response.read().decode())

    # ---- clients
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run(binary_path("kubectl"), args, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self._run(build_binary("helm"), args, input, check, timeout)

    def api_client(self, token: str | None = None) -> Any:
        """A kubernetes.client.ApiClient for the admin, or for a bearer token."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return client.ApiClient(configuration)

    def write_kubeconfig_for_token(self, path: Path, token: str, user: str = "user") -> Path:
        path.write_text(self._kubeconfig_text(user, token))
        path.chmod(0o600)
        return path

    # ---- internals
    def _run(
        self,
        binary: Path,
        args: Sequence[str],
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [str(binary), *args],
            input=input,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def _write_credentials(self) -> None:
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        key, pub = certs / "sa.key", certs / "sa.pub"
        if not key.is_file():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                check=True,
                capture_output=True,
            )
        self.admin_token = self.admin_token or secrets.token_hex(24)
        self.node_token = self.node_token or secrets.token_hex(24)
        node_user = f"system:node:{NODE_NAME}"
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f'{self.node_token},{node_user},{node_user},"system:nodes"\n'
        )
        tokens.chmod(0o600)

    def _start_with_port_retries(self, name: str, spawn: Any) -> None:
        """Spawn and wait for readiness; a port taken in the meantime is retried on another."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            spawn()
            try:
                self._wait_ready(name)
                return
            except ControlPlaneError:
                log_text = _tail(self.log_file(name), 60)
                self._kill(name)
                if "address already in use" not in log_text or attempt == PORT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _kill(self, name: str) -> None:
        pid = self.etcd_pid if name == "etcd" else self.apiserver_pid
        if pid and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _spawn(self, name: str, argv: list[str]) -> int:
        log = self.log_file(name).open("ab")
        child = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: `down` kills it with its children
        )
        log.close()
        self._children.append(child)
        return child.pid

    def _spawn_etcd(self, etcd: Path) -> None:
        self.data_dir = self.data_dir or tempfile.mkdtemp(prefix="bakeline-etcd-")
        self.etcd_port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        self.etcd_pid = self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=bakeline",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bakeline={peer_url}",
                "--unsafe-no-fsync",  # test data: durability across power loss is not the point
                "--log-level=warn",
            ],
        )

    def _spawn_apiserver(self, apiserver: Path, keep_port: bool = False) -> None:
        if not keep_port:
            self.apiserver_port = free_port()
        certs = self.workdir / "certs"
        self.apiserver_pid = self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--cert-dir={certs}",
                f"--secure-port={self.apiserver_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                # Node: a kubelet reads only what its pods need (hack/realnode.py); it
                # decides nothing for anyone else, so RBAC tests see RBAC alone.
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                # PodSecurity is on by default; named so that no one turns it off unawares:
                # tests/reliability/test_security.py enforces `restricted` on stage pods.
                "--enable-admission-plugins=PodSecurity,NodeRestriction",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                # The real node's name resolves nowhere: logs and exec go to its address.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--v=1",
            ],
        )

    def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pid = self.etcd_pid if name == "etcd" else self.apiserver_pid
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise ControlPlaneError(
                    f"{name} exited during start-up. Last lines of its log:\n"
                    f"{_tail(self.log_file(name))}"
                )
            if self._probe(name):
                return
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{name} was not ready within {READY_TIMEOUT_S:.0f}s. Last lines of its log:\n"
            f"{_tail(self.log_file(name))}"
        )

    def _probe(self, name: str) -> bool:
        try:
            if name == "etcd":
                url = f"http://127.0.0.1:{self.etcd_port}/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(json.loads(response.read()).get("health") == "true")
            return self.ca_file.is_file() and self.readyz() == "ok"
        except (OSError, ValueError, urllib.error.HTTPError, ssl.SSLError):
            return False

    def _kubeconfig_text(self, user: str, token: str) -> str:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bakeline-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "bakeline-test", "context": {"cluster": "bakeline-test", "user": user}}
            ],
            "current-context": "bakeline-test",
        }
        return json.dumps(config, indent=2)  # JSON is YAML: no PyYAML needed here

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(self._kubeconfig_text(ADMIN_USER, self.admin_token))
        self.kubeconfig.chmod(0o600)


@contextlib.contextmanager
def running(workdir: Path, log: Any = print) -> Iterator[ControlPlane]:
    """A control plane for the duration of a `with` block."""
    plane = ControlPlane(workdir=workdir)
    try:
        plane.start(log)
        yield plane
    finally:
        plane.stop()


# --------------------------------------------------------------------------- command line


def default_workdir() -> Path:
    return Path(os.environ.get("BAKELINE_CONTROLPLANE_DIR") or cache_dir() / "controlplane")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/controlplane", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "build", "env"])
    parser.add_argument("--dir", type=Path, default=default_workdir(), help="state directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in ensure_binaries(log=_log).items():
                print(f"{name}={path}")
            return 0
        plane = ControlPlane.load(args.dir)
        if args.command == "up":
            plane.start(_log)
            plane._children.clear()  # they outlive this command: `down` stops them
            print(f"KUBECONFIG={plane.kubeconfig}")
        elif args.command == "down":
            plane.stop()
            shutil.rmtree(args.dir, ignore_errors=True)
            _log("control plane stopped")
        elif args.command == "status":
            healthy = plane.is_healthy()
            print(f"{'ready' if healthy else 'down'} {plane.server if healthy else ''}".strip())
            return 0 if healthy else 1
        elif args.command == "env":
            for name in TOOLS:
                print(f"{name}={binary_path(name)}")
        return 0
    except ControlPlaneError as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
