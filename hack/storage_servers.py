"""Run the artifact delivery servers of the tests on loopback: an S3 store and an OCI registry.

As with the control plane (hack/controlplane.py), both are real servers built once from Go
modules pinned in hack/tools/*/go.mod into the per-user cache, keyed by version and flags:

- S3: SeaweedFS (`weed server -filer -s3`), Apache-2.0. MinIO is not used: it is under the
  AGPL, which this workplace's package notes put out of use.
- OCI: the CNCF distribution registry (`registry serve`), filesystem storage, htpasswd basic
  auth (bcrypt entries written with the `bcrypt` package) unless started without a user.

The same code serves `python hack/storage_servers.py s3|oci|build` and the pytest fixtures
(tests/support/storage_servers.py). Each server gets free loopback ports and its own data
directory; stop() kills its process group and removes what it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
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

from controlplane import ControlPlaneError, _pid_alive, _tail, build_binary, free_port

READY_TIMEOUT_S = 90.0
PORT_ATTEMPTS = 5
S3_BINARY = "weed"
OCI_BINARY = "registry"
STORAGE_TOOLS = (S3_BINARY, OCI_BINARY)
# Variables the servers would otherwise act on: SeaweedFS turns AWS_* into an admin identity,
# and the registry's OpenTelemetry SDK would try to export spans.
_SCRUBBED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "S3_BUCKET")


class StorageServerError(ControlPlaneError):
    """A storage server could not be built, started or kept alive; the message says why."""


def ensure_binaries(log: Any = print) -> dict[str, Path]:
    return {name: build_binary(name, log) for name in STORAGE_TOOLS}


def _get(url: str, auth: tuple[str, str] | None = None, timeout: float = 2) -> tuple[int, bytes]:
    """One GET to our own loopback server: (status, body); a refused connection raises."""
    request = urllib.request.Request(url)  # noqa: S310 (http to our own loopback server)
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


@dataclass
class _Server:
    """One server process in its own process group, with a data dir and a log."""

    name: str = ""
    workdir: Path | None = None
    pid: int = 0
    stop_grace_s: float = 10.0
    _owns_workdir: bool = False
    _child: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    # ---- lifecycle
    def start(self, log: Any = print) -> None:
        """Build the binary if needed, start on free loopback ports, wait until it serves."""
        if self.pid and _pid_alive(self.pid):
            return
        binary = build_binary(self._binary_name(), log)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"bakeline-{self.name}-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._pick_ports()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir.mkdir(parents=True)
            self._spawn(self._argv(binary))
            try:
                self._wait_ready()
                break
            except StorageServerError:
                text = _tail(self.log_file, 80)
                self._kill()
                if "address already in use" not in text or attempt == PORT_ATTEMPTS:
                    raise
        log(f"{self.name} ready in {time.monotonic() - started:.1f}s at {self.endpoint}")

    def stop(self) -> None:
        """TERM the process group, then KILL; remove the data. Idempotent."""
        self._kill(graceful=True)
        self._cleanup()
        if self.workdir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping its data: a crash, for reliability tests."""
        self._kill()

    def restart(self, log: Any = print) -> None:
        """Start again on the same ports with the same data (after kill()). SeaweedFS's master
        holds writes for a warm-up of 15 s (3 of its fixed 5 s pulses) after a restart."""
        self._kill()
        self._spawn(self._argv(build_binary(self._binary_name(), log)))
        self._wait_ready()

    def is_healthy(self) -> bool:
        if not self.pid or not _pid_alive(self.pid):
            return False
        try:
            return self._probe()
        except OSError:
            return False

    def assert_alive(self) -> None:
        if not self.pid or not _pid_alive(self.pid):
            raise StorageServerError(
                f"{self.name} (pid {self.pid}) is not running. Last lines of its log:\n"
                f"{_tail(self.log_file)}"
            )

    # ---- for subclasses
    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def _binary_name(self) -> str:
        raise NotImplementedError

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _argv(self, binary: Path) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}

    def _cleanup(self) -> None:
        """Remove what the server leaves outside its working directory."""

    # ---- internals
    def _spawn(self, argv: list[str]) -> None:
        log = self.log_file.open("ab")
        self._child = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() kills it with its children
        )
        log.close()
        self.pid = self._child.pid

    def _kill(self, graceful: bool = False) -> None:
        pid = self.pid
        if pid and _pid_alive(pid):
            if graceful:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + self.stop_grace_s
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=5)
            self._child = None
        self.pid = 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                raise StorageServerError(
                    f"{self.name} exited during start-up. Last lines of its log:\n"
                    f"{_tail(self.log_file)}"
                )
            with contextlib.suppress(OSError, ValueError):
                if self._probe():
                    return
            time.sleep(0.25)
        raise StorageServerError(
            f"{self.name} was not ready within {READY_TIMEOUT_S:.0f}s. Last lines of its log:\n"
            f"{_tail(self.log_file)}"
        )


@dataclass
class S3Server(_Server):
    """SeaweedFS master + volume + filer + S3 gateway in one `weed server` process.

    One identity (access_key/secret_key) with every S3 action; requests signed with anything
    else are refused (403). Path-style addressing at `endpoint`; region is not checked.
    """

    name: str = "s3"
    stop_grace_s: float = 2.0  # weed keeps retrying its own peers after TERM: test data only
    access_key: str = field(default_factory=lambda: "bakeline-" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    region: str = "us-east-1"
    port: int = 0
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _binary_name(self) -> str:
        return S3_BINARY

    def _pick_ports(self) -> None:
        wanted = self.port if not self.ports else 0  # a given port is tried once, then any
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
        self.ports = {name: free_port() for name in (*names, "s3.grpc")}
        self.port = wanted or free_port()

    def _argv(self, binary: Path) -> list[str]:
        assert self.workdir is not None
        config = self.workdir / "s3.json"
        identity = {
            "name": "bakeline",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}, indent=2))
        config.chmod(0o600)
        p = self.ports
        return [
            str(binary),
            "-logtostderr",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",  # never reach out of the machine
            "-master.resumeState=false",  # one master: no raft election to wait for on restart
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={config}",
            "-s3.iam=false",
        ]

    def _cleanup(self) -> None:
        # `weed server` registers a gRPC socket per component under /tmp, named by port.
        grpc = {"master": "master.grpc", "volume": "volume.grpc", "filer": "filer.grpc"}
        for component, port_name in (*grpc.items(), ("s3", "s3.grpc")):
            if port := self.ports.get(port_name):
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    def _probe(self) -> bool:
        """The gateway answers, and the master can place a write (a writable volume exists)."""
        if _get(f"{self.endpoint}/healthz")[0] != 200:
            return False
        if _get(f"http://127.0.0.1:{self.ports['filer']}/healthz")[0] != 200:
            return False
        status, body = _get(f"http://127.0.0.1:{self.ports['master']}/dir/assign", timeout=10)
        return status == 200 and "fid" in json.loads(body or b"{}")


@dataclass
class OCIRegistry(_Server):
    """The distribution registry on filesystem storage; basic auth when username is set."""

    name: str = "oci"
    username: str | None = "bakeline"
    password: str | None = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 0
    debug_port: int = 0

    @property
    def host(self) -> str:
        """host:port, as in an image reference: `{host}/repo:tag`."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    def _binary_name(self) -> str:
        return OCI_BINARY

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}

    def _pick_ports(self) -> None:
        wanted = self.port if not self.debug_port else 0
        self.port, self.debug_port = wanted or free_port(), free_port()

    def _argv(self, binary: Path) -> list[str]:
        assert self.workdir is not None
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": secrets.token_hex(16),
                "debug": {"addr": f"127.0.0.1:{self.debug_port}"},
            },
        }
        if self.username:
            if not self.password:
                raise StorageServerError("an OCI registry user needs a password")
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.username}:{_bcrypt(self.password)}\n")
            htpasswd.chmod(0o600)
            config["auth"] = {"htpasswd": {"realm": "bakeline", "path": str(htpasswd)}}
        path = self.workdir / "config.json"  # JSON is YAML: the registry reads it as is
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return [str(binary), "serve", str(path)]

    def _probe(self) -> bool:
        # /v2/ answers 200, or 401 with a challenge when auth is on: either way it serves.
        status, _ = _get(f"{self.endpoint}/v2/")
        return status in (200, 401)


def _bcrypt(password: str) -> str:
    import bcrypt  # a dev dependency (pyproject.toml); only an authenticated registry needs it

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()


@contextlib.contextmanager
def running(server: _Server, log: Any = print) -> Iterator[Any]:
    """A started server for the duration of a `with` block."""
    try:
        server.start(log)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- command line


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/storage_servers.py",
        description="Run an S3 store (SeaweedFS) or an OCI registry (distribution) on loopback "
        "in the foreground until interrupted, or build both into the cache.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build both binaries into the cache (as hack/install does)")
    s3 = sub.add_parser("s3", help="run an S3-compatible store")
    s3.add_argument("--access-key")
    s3.add_argument("--secret-key")
    oci = sub.add_parser("oci", help="run an OCI registry")
    oci.add_argument("--user", default="bakeline", help="basic-auth user ('' for no auth)")
    oci.add_argument("--password", help="basic-auth password (default: random)")
    for command in (s3, oci):
        command.add_argument("--port", type=int, default=0, help="listen port (default: free)")
        command.add_argument("--dir", type=Path, help="working directory (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in ensure_binaries(log=_log).items():
                print(f"{name}={path}")
            return 0
        server: S3Server | OCIRegistry
        if args.command == "s3":
            server = S3Server(workdir=args.dir, port=args.port)
            server.access_key = args.access_key or server.access_key
            server.secret_key = args.secret_key or server.secret_key
        else:
            server = OCIRegistry(workdir=args.dir, port=args.port, username=args.user or None)
            server.password = (args.password or server.password) if args.user else None
        stop = False

        def _stop(signum: int, frame: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        with running(server, _log):
            if isinstance(server, S3Server):
                print(f"S3_ENDPOINT={server.endpoint}")
                print(f"AWS_ACCESS_KEY_ID={server.access_key}")
                print(f"AWS_SECRET_ACCESS_KEY={server.secret_key}")
                print(f"AWS_REGION={server.region}")
            else:
                print(f"OCI_REGISTRY={server.host}")
                if server.username:
                    print(f"OCI_USERNAME={server.username}")
                    print(f"OCI_PASSWORD={server.password}")
            print(f"LOG={server.log_file}", flush=True)
            _log("serving; Ctrl-C or SIGTERM stops it and removes its data")
            while not stop:
                server.assert_alive()
                time.sleep(0.5)
        return 0
    except ControlPlaneError as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
