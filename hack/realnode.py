"""Run a real node for a local control plane: containerd with runc, a CNI bridge, the kubelet
and kube-scheduler, all on this machine (root, cgroup v1 with the memory controller).

The node harness (tests/support/node_harness.py) runs pods as local processes and enforces
nothing; this node runs them in containers, so the kernel enforces memory limits, runc a
read-only root filesystem and the API server's PodSecurity admission what it is told. No
registry is reachable: the pause image is built here (hack/tools/pause) and every image is
imported into containerd from an archive (`import_image`), never pulled.

    hack/controlplane up && hack/realnode up       # prints the node's name once it is Ready
    hack/realnode import IMAGE.tar                 # an OCI or docker archive, into k8s.io
    hack/realnode down

What the kubelet needs of the control plane is in hack/controlplane.py: the node's token
(user system:node:NAME in system:nodes), the Node authorizer and NodeRestriction. Pods reach
the API server at the `kubernetes` Service's address (10.0.0.1:443), which kubelet sets in
KUBERNETES_SERVICE_HOST: there is no kube-proxy, so the node holds that address itself (on `lo`)
and socat forwards its port 443 to the loopback API server, TLS untouched. A forwarder, not a
DNAT rule: it needs routing only, and nothing of it outlives its process but the address (a
DNAT rule left by a killed run, to that run's API server port, shadowed the next run's rule:
this machine's kernel outlives sessions and is CI's too). No DNS.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import (
    NODE_NAME,
    TOOLS_DIR,
    ControlPlane,
    ControlPlaneError,
    _pid_alive,
    _tail,
    cache_dir,
    default_workdir,
    ensure_binaries,
    free_port,
)

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
BRIDGE = "bklnode0"  # not podman's cni-podman0 / 10.88.0.0/16: both may run here
POD_SUBNET = "10.89.77.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of the control plane's range
PAUSE_IMAGE = "localhost/bakeline/pause:3.10"
NAMESPACE = "k8s.io"  # containerd's namespace for the CRI plugin's images
READY_TIMEOUT_S = 180.0
PACKAGES = "containerd runc containernetworking-plugins busybox-static socat"


class NodeError(ControlPlaneError):
    """The real node could not be set up or started; the message says why."""


# --------------------------------------------------------------------------- prerequisites


def runtime_binary() -> str:
    """runc, Debian's default for containerd; crun when runc is missing (the next real option)."""
    for name in ("runc", "crun"):
        if found := shutil.which(name):
            return found
    raise NodeError(f"neither runc nor crun is installed: apt-get install {PACKAGES}")


def check_prerequisites() -> None:
    """Root, the packages and a cgroup v1 memory controller; raise saying what is missing."""
    missing = [
        name
        for name in ("containerd", "containerd-shim-runc-v2", "ctr", "socat", "ip", "mount")
        if shutil.which(name) is None
    ]
    missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        raise NodeError(
            f"missing {', '.join(missing)}: as root, `apt-get install {PACKAGES}` "
            "(hack/install does it when run as root on Debian)"
        )
    runtime_binary()
    if os.geteuid() != 0:
        raise NodeError("a kubelet with containerd needs root (cgroups, mounts, network)")
    if (
        not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file()
        and not Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    ):
        raise NodeError("no cgroup memory controller under /sys/fs/cgroup")


# --------------------------------------------------------------------------- images


def _tar_bytes(entries: Sequence[tuple[str, bytes | str, int]]) -> bytes:
    """A layer: (path, content or symlink target prefixed '->', mode); parents made as dirs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for path, content, mode in entries:
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in made:
                    made.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            info = tarfile.TarInfo(path.strip("/"))
            info.mtime, info.mode = 0, mode  # fixed: the same inputs give the same digest
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            elif mode & 0o40000:
                info.type = tarfile.DIRTYPE
                info.mode = mode & 0o7777
                tar.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_oci_archive(
    target: Path, reference: str, layers: Sequence[bytes], config: Mapping[str, Any]
) -> Path:
    """An image as an OCI layout in a tar (with a docker `manifest.json` too, which names it
    for `ctr images import` unambiguously). Layers are uncompressed tars."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    layer_digests = [blob(layer) for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "history": [{"created_by": "hack/realnode.py"} for _ in layers],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_digest = blob(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest,
                "size": len(blobs[digest]),
            }
            for digest in layer_digests
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = blob(manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{config_digest[7:]}",
            "RepoTags": [reference],
            "Layers": [f"blobs/sha256/{d[7:]}" for d in layer_digests],
        }
    ]
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        "manifest.json": json.dumps(docker_manifest).encode(),
        **{f"blobs/sha256/{d[7:]}": data for d, data in blobs.items()},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    partial.replace(target)
    return target


def pause_archive(log: Any = print) -> Path:
    """The sandbox image: hack/tools/pause built static, cached by its source's hash."""
    source = TOOLS_DIR / "pause"
    digest = hashlib.sha256(
        b"".join((source / name).read_bytes() for name in ("go.mod", "main.go"))
    ).hexdigest()[:12]
    target = cache_dir() / "images" / f"pause-{digest}.tar"
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        raise NodeError("Go is needed to build the pause image (hack/tools/pause)")
    binary = target.with_suffix(".bin")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
        cwd=source,
        env=env,
        check=True,
        capture_output=True,
    )
    layer = _tar_bytes([("pause", binary.read_bytes(), 0o755)])
    binary.unlink()
    log(f"built the pause image -> {target}")
    # 65535: the pause image's own non-root user, so restricted pods' sandboxes are non-root.
    return write_oci_archive(
        target, PAUSE_IMAGE, [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"}
    )


BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, no libc needed
BUSYBOX_APPLETS = (
    "sh", "cat", "dd", "echo", "env", "head", "hostname", "id", "ls", "mkdir", "rm", "sleep",
    "tail", "touch", "true", "false", "printf", "test", "[", "wc", "grep", "sed", "tr", "cut",
    "wget", "nc",
)  # fmt: skip


def busybox_archive(
    reference: str,
    extra: Sequence[tuple[str, bytes | str, int]] = (),
    config: Mapping[str, Any] | None = None,
) -> Path:
    """A small image from Debian's busybox-static (and `extra` files), cached by content."""
    if not BUSYBOX.is_file():
        raise NodeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    entries: list[tuple[str, bytes | str, int]] = [
        ("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        *((f"bin/{applet}", "->busybox", 0o777) for applet in BUSYBOX_APPLETS),
        ("etc/passwd", "root:x:0:0::/root:/bin/sh\nnonroot:x:65532:65532::/tmp:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\nnonroot:x:65532:\n", 0o644),
        ("tmp", b"", 0o41777),
        *extra,
    ]
    layer = _tar_bytes(entries)
    full_config = {"Env": ["PATH=/usr/local/bin:/bin"], "User": "65532:65532", **(config or {})}
    key = hashlib.sha256(layer + reference.encode() + json.dumps(full_config).encode())
    target = cache_dir() / "images" / f"busybox-{key.hexdigest()[:12]}.tar"
    if target.is_file():
        return target
    return write_oci_archive(target, reference, [layer], full_config)


# --------------------------------------------------------------------------- the node


def _restrict_oom_score_adj() -> bool:
    """Whether to clamp containers' oom_score_adj at containerd's own. Lowering it takes
    CAP_SYS_RESOURCE, which root lacks on some VMs: there kubelet's -998 for the sandbox makes
    runc fail with "can't get final child's PID from pipe: EOF" (crun: "write to
    /proc/self/oom_score_adj: Permission denied")."""
    capabilities = Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0]
    return not int(capabilities, 16) & (1 << 24)  # CAP_SYS_RESOURCE


def host_ip() -> str:
    """The address the kubelet registers (not loopback: the kubelet refuses that)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "get", "192.0.2.255"], capture_output=True, text=True
    ).stdout
    parts = out.split()
    if "src" in parts:
        return parts[parts.index("src") + 1]
    raise NodeError(f"cannot find this machine's IPv4 address (ip route get: {out!r})")


@dataclass
class RealNode:
    """containerd, kubelet and kube-scheduler for one control plane, from one work directory."""

    workdir: Path
    plane: ControlPlane
    containerd_pid: int = 0
    kubelet_pid: int = 0
    scheduler_pid: int = 0
    forwarder_pid: int = 0  # socat: the `kubernetes` Service address to the API server
    started_s: float = 0.0  # how long the last start took, until the Node was Ready
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    # ---- paths
    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def save(self) -> None:
        keys = ("containerd_pid", "kubelet_pid", "scheduler_pid", "forwarder_pid", "started_s")
        self.state_file.write_text(json.dumps({k: getattr(self, k) for k in keys}, indent=2))

    @classmethod
    def load(cls, workdir: Path, plane: ControlPlane) -> RealNode:
        node = cls(workdir=workdir, plane=plane)
        if node.state_file.is_file():
            for key, value in json.loads(node.state_file.read_text()).items():
                setattr(node, key, value)
        return node

    # ---- lifecycle
    def start(self, log: Any = print) -> None:
        check_prerequisites()
        if not self.plane.node_token:
            raise NodeError("the control plane has no node token: start it with this checkout")
        # One real node per machine: the bridge, its subnet and the Service address are the
        # machine's.
        if other := _running_kubelet(exclude=self.kubelet_pid):
            raise NodeError(
                f"another real node's kubelet runs here (pid {other}): `hack/realnode down` "
                "it, or let its test session finish"
            )
        self.stop()
        binaries = ensure_binaries(("kubelet", "kube-scheduler"), log)
        pause = pause_archive(log)
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        self.import_image(pause)
        self._setup_network()
        self._start_kubelet(binaries["kubelet"])
        self._start_scheduler(binaries["kube-scheduler"])
        self._wait_node_ready()
        self.started_s = time.monotonic() - started
        self.save()
        log(f"node {NODE_NAME} ready in {self.started_s:.1f}s (containerd, kubelet, scheduler)")

    def stop(self) -> None:
        """Stop every container, then kube-scheduler, kubelet, containerd and the forwarder;
        remove the Service address, the bridge and the mounts under the work directory.
        Idempotent."""
        if self.containerd_pid and _pid_alive(self.containerd_pid):
            self._kill_all_tasks()
        for pid in (self.scheduler_pid, self.kubelet_pid, self.containerd_pid, self.forwarder_pid):
            _stop_group(pid)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        self._children.clear()
        self._kill_shims()
        self._teardown_network()
        self._unmount_all()
        self.containerd_pid = self.kubelet_pid = self.scheduler_pid = self.forwarder_pid = 0
        if self.workdir.is_dir():
            self.save()

    def assert_alive(self) -> None:
        for name, pid in (
            ("containerd", self.containerd_pid),
            ("kubelet", self.kubelet_pid),
            ("kube-scheduler", self.scheduler_pid),
            ("forwarder", self.forwarder_pid),
        ):
            if not pid or not _pid_alive(pid):
                raise NodeError(f"{name} (pid {pid}) is not running:\n{_tail(self.log_file(name))}")

    # ---- containerd
    def ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def import_image(self, archive: Path, reference: str | None = None) -> str:
        """Import an OCI or docker archive into the CRI plugin's namespace; no pull. With a
        `reference`, make sure the image answers to it as a pod names it (an OCI archive may
        carry only a tag, which ctr prefixes with `import-DATE`)."""
        # Gigabytes for the project's image: unpacking it takes minutes.
        result = self.ctr("images", "import", "--all-platforms", str(archive), timeout=3600)
        if result.returncode != 0:
            raise NodeError(f"ctr images import {archive} failed: {result.stderr.strip()}")
        if reference is not None:
            imported = [
                line.split()[1]
                for line in result.stdout.splitlines()
                if line.startswith("unpacking ")
            ]
            # How the CRI plugin normalizes a pod's image: no domain means docker.io/library.
            first = reference.split("/")[0]
            domain = "." in first or ":" in first or first == "localhost"
            wanted = reference if domain or "/" in reference else f"docker.io/library/{reference}"
            if not domain and "/" in reference:
                wanted = f"docker.io/{reference}"
            names = self.image_names()
            for name in {reference, wanted} - set(names):
                if not imported:
                    raise NodeError(f"{archive} holds no image to name {name}: {result.stdout}")
                tagged = self.ctr("images", "tag", imported[0], name)
                if tagged.returncode != 0:
                    raise NodeError(f"ctr images tag {imported[0]} {name}: {tagged.stderr}")
        return result.stdout

    def image_names(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def _start_containerd(self) -> None:
        root, state = self.workdir / "containerd" / "root", self.workdir / "containerd" / "state"
        for path in (root, state, self.workdir / "cni" / "net.d"):
            path.mkdir(parents=True, exist_ok=True)
        runtime = runtime_binary()
        config = f"""version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.workdir / "containerd" / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = {str(_restrict_oom_score_adj()).lower()}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runtime}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
"""
        # cgroupfs (SystemdCgroup = false): there is no systemd here, and kubelet says the same.
        (self.workdir / "containerd.toml").write_text(config)
        self.containerd_pid = self._spawn(
            "containerd", ["containerd", "--config", str(self.workdir / "containerd.toml")]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not _pid_alive(self.containerd_pid):
                raise NodeError(f"containerd exited:\n{_tail(self.log_file('containerd'))}")
            if self.socket.exists() and self.ctr("version").returncode == 0:
                return
            time.sleep(0.2)
        raise NodeError(f"containerd not ready in 30s:\n{_tail(self.log_file('containerd'))}")

    def _kill_all_tasks(self) -> None:
        """SIGKILL every container's task and delete it, so that no process outlives the node."""
        tasks = self.ctr("tasks", "ls", "-q", timeout=30).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, timeout=30)
        deadline = time.monotonic() + 10
        for task in tasks:
            while time.monotonic() < deadline:
                if self.ctr("tasks", "delete", task, timeout=30).returncode == 0:
                    break
                time.sleep(0.2)

    def _kill_shims(self) -> None:
        """The shims are their own sessions: find ours by the socket in their command line."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ours = str(self.socket).encode() in cmdline
            if ours and cmdline[0].endswith(b"containerd-shim-runc-v2"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    # ---- network
    def _setup_network(self) -> None:
        """A bridge conflist for containerd's CRI (loopback is added by containerd from the
        same plugin directory), and the Service address of the API server for pods."""
        gateway = POD_SUBNET.rsplit(".", 1)[0] + ".1"
        conflist = {
            "cniVersion": "1.0.0",
            "name": "bakeline-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk to this machine only; nothing to masquerade
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.workdir / "cni" / "net.d" / "10-bakeline.conflist").write_text(
            json.dumps(conflist, indent=2)
        )
        _drop_old_dnat_rules()
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # The Service address is this machine's own (on lo: the bridge plugin allows one IPv4
        # address on its bridge), so a pod's packet to it is delivered here by routing alone.
        if SERVICE_IP not in _run(["ip", "-4", "-o", "addr", "show", "dev", "lo"]):
            _run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "lo"])
        self.forwarder_pid = self._spawn(
            "forwarder",
            [
                "socat",
                "-d",
                "-d",  # each connection in forwarder.log
                f"TCP4-LISTEN:443,bind={SERVICE_IP},reuseaddr,fork",
                f"TCP4:127.0.0.1:{self.plane.apiserver_port}",
            ],
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((SERVICE_IP, 443), 1):
                return
            if not _pid_alive(self.forwarder_pid) or time.monotonic() > deadline:
                raise NodeError(
                    f"socat is not listening on {SERVICE_IP}:443:\n"
                    f"{_tail(self.log_file('forwarder'))}"
                )
            time.sleep(0.1)

    def _teardown_network(self) -> None:
        # Only a node that set the network up takes it down: never another node's bridge.
        if self.forwarder_pid:
            subprocess.run(
                ["ip", "addr", "del", f"{SERVICE_IP}/32", "dev", "lo"], capture_output=True
            )
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    def _unmount_all(self) -> None:
        """Overlay and tmpfs mounts containerd and kubelet left under the work directory."""
        prefix = str(self.workdir.resolve()) + "/"
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)

    # ---- kubelet and scheduler
    def _start_kubelet(self, kubelet: Path) -> None:
        kubeconfig = self.plane.write_kubeconfig_for_token(
            self.workdir / "kubelet.kubeconfig", self.plane.node_token, f"system:node:{NODE_NAME}"
        )
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",  # no systemd on this machine; containerd agrees
            "failSwapOn": False,
            "failCgroupV1": False,  # cgroup v1 is what this machine has (maintenance mode)
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": host_ip(),
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The API server reaches the kubelet (logs, exec) without a client certificate;
            # a test node on this machine's own address, never a production setting.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.workdir / "pod-logs"),
            # Others share this machine's disk: never evict for it, never collect our images.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
        }
        (self.workdir / "kubelet.json").write_text(json.dumps(config, indent=2))
        self.kubelet_pid = self._spawn(
            "kubelet",
            [
                str(kubelet),
                f"--config={self.workdir / 'kubelet.json'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={self.workdir / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={config['address']}",
                "--v=1",
            ],
        )

    def _start_scheduler(self, scheduler: Path) -> None:
        admin = str(self.plane.kubeconfig)
        self.scheduler_pid = self._spawn(
            "kube-scheduler",
            [
                str(scheduler),
                f"--kubeconfig={admin}",
                f"--authentication-kubeconfig={admin}",
                f"--authorization-kubeconfig={admin}",
                "--leader-elect=false",
                "--authentication-skip-lookup=true",  # no extension-apiserver-authentication
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _wait_node_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.assert_alive()
            result = self.plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if result.returncode == 0:
                conditions = json.loads(result.stdout).get("status", {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    # What the node lifecycle controller (kube-controller-manager, absent
                    # here) does once a node is Ready: lift the taint the kubelet registered.
                    self.plane.kubectl(
                        "taint",
                        "node",
                        NODE_NAME,
                        "node.kubernetes.io/not-ready:NoSchedule-",
                        check=False,
                    )
                    return
            time.sleep(0.5)
        raise NodeError(
            f"node {NODE_NAME} not Ready in {READY_TIMEOUT_S:.0f}s. kubelet:\n"
            f"{_tail(self.log_file('kubelet'), 40)}\n"
            f"containerd:\n{_tail(self.log_file('containerd'))}"
        )

    def _spawn(self, name: str, argv: list[str]) -> int:
        with self.log_file(name).open("ab") as sink:
            child = subprocess.Popen(
                argv,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children.append(child)
        return child.pid


def _running_kubelet(exclude: int = 0) -> int:
    """The pid of a kubelet registered as NODE_NAME on this machine, other than `exclude`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == exclude:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--hostname-override={NODE_NAME}".encode() in cmdline and _pid_alive(int(proc.name)):
            return int(proc.name)
    return 0


def _stop_group(pid: int) -> None:
    if not pid or not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _drop_old_dnat_rules() -> None:
    """Delete the DNAT rules an earlier hack/realnode used for the Service address. This
    machine's kernel outlives sessions and CI runs: a run killed before its teardown left one,
    and it sent the next run's pods to a closed port ahead of the forwarder."""
    if shutil.which("iptables") is None:
        return
    listed = subprocess.run(["iptables", "-t", "nat", "-S", "PREROUTING"], capture_output=True)
    for line in listed.stdout.decode().splitlines():
        if "bakeline-realnode" in line and line.startswith("-A "):
            _run(["iptables", "-t", "nat", "-D", *shlex.split(line)[1:]])


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def kube_root_ca(plane: ControlPlane, namespace: str) -> None:
    """What kube-controller-manager's root-ca publisher would put in every namespace: projected
    token volumes name it. There is no controller-manager here."""
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": namespace},
        "data": {"ca.crt": plane.ca_file.read_text()},
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(body))


@contextlib.contextmanager
def running(workdir: Path, plane: ControlPlane, log: Any = print) -> Iterator[RealNode]:
    node = RealNode(workdir=workdir, plane=plane)
    try:
        node.start(log)
        yield node
    finally:
        node.stop()


# --------------------------------------------------------------------------- command line


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/realnode", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "import"])
    parser.add_argument("archive", nargs="?", type=Path, help="for import: an image archive")
    parser.add_argument("--dir", type=Path, default=cache_dir() / "realnode")
    parser.add_argument("--controlplane-dir", type=Path, default=default_workdir())
    args = parser.parse_args(argv)
    plane = ControlPlane.load(args.controlplane_dir)
    node = RealNode.load(args.dir, plane)
    try:
        if args.command == "up":
            if not plane.is_healthy():
                raise NodeError("the control plane is down: run `hack/controlplane up` first")
            node.start(_log)
            node._children.clear()  # they outlive this command: `down` stops them
            print(NODE_NAME)
        elif args.command == "down":
            node.stop()
            _log("node stopped")
        elif args.command == "status":
            node.assert_alive()
            print(f"ready {NODE_NAME}")
        elif args.command == "import":
            if args.archive is None:
                parser.error("import needs an archive")
            print(node.import_image(args.archive).strip())
        return 0
    except (ControlPlaneError, subprocess.CalledProcessError) as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
