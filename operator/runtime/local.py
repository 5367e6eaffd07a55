"""Run one stage on this machine: the agent contract as a subprocess (DESIGN §3.3).

`bakeline-agent <Agent> --input DIR --output DIR --params JSON --job JSON --stage NAME
--termination-log PATH`; the exit code says what happened and the termination log holds a short
JSON result. The pod the operator creates runs the same command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from bakeline import contract
from bakeline.checkpoints.manifest import sha256_file, sha256_path
from bakeline.contract import TERMINATION_LIMIT, TerminationMessage, parse_termination
from bakeline.runtime.download import DownloadError, fetch, is_remote

_KILL_GRACE_SECONDS = 5.0
_LOG_TAIL_LINES = 20


class ModelSourceError(ValueError):
    """The job's model source cannot be used on this machine."""


@dataclass(frozen=True)
class StageInvocation:
    agent: str  # CamelCase, e.g. ModelOptimizer
    stage: str
    params: Mapping[str, Any]
    job: Mapping[str, Any]  # the job-level spec parts, camelCase (see job_document)
    input_dir: Path | None  # None for the first stage (BakingCoordinator)
    output_dir: Path
    termination_log: Path
    log_path: Path  # the agent's stdout and stderr
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class StageRun:
    exit_code: int | None  # None when killed by a signal we did not send
    timed_out: bool
    seconds: float
    result: TerminationMessage | None
    log_tail: str

    @property
    def message(self) -> str:
        """The agent's own words when it left any, else the end of its log."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s"
        if self.result is not None and self.result.message:
            return self.result.message
        return self.log_tail.strip().splitlines()[-1] if self.log_tail.strip() else ""


class LocalRunner:
    """Runs agents as child processes in their own process group, so a timeout or Ctrl-C
    stops the agent and everything it started."""

    def __init__(
        self,
        command: Sequence[str] = ("bakeline-agent",),
        env: Mapping[str, str] | None = None,
        poll_seconds: float = 0.2,
    ) -> None:
        self.command = tuple(command)
        self._env = dict(env) if env is not None else None
        self._poll_seconds = poll_seconds
        self._version: str | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None

    def agent_version(self) -> str:
        """The agents' version, part of every cache key: `<command> --version`, else the
        installed bakeline distribution's version."""
        if self._version is None:
            self._version = _installed_version()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                done = subprocess.run(
                    [*self.command, "--version"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=self._environment(),
                    check=False,
                )
                words = done.stdout.strip().split()
                if done.returncode == 0 and words:
                    self._version = words[-1]
        return self._version

    def argv(self, invocation: StageInvocation) -> list[str]:
        args = [
            *self.command,
            invocation.agent,
            "--output",
            str(invocation.output_dir),
            "--params",
            json.dumps(dict(invocation.params), sort_keys=True),
            "--job",
            json.dumps(dict(invocation.job), sort_keys=True),
            "--stage",
            invocation.stage,
            "--termination-log",
            str(invocation.termination_log),
        ]
        if invocation.input_dir is not None:
            args[len(self.command) + 1 : len(self.command) + 1] = [
                "--input",
                str(invocation.input_dir),
            ]
        return args

    def run(
        self,
        invocation: StageInvocation,
        on_tick: Callable[[float], None] | None = None,
    ) -> StageRun:
        """Run the stage to its end, its timeout, or a KeyboardInterrupt (which stops the
        agent and propagates). `on_tick(elapsed)` is called while it runs, for progress."""
        invocation.output_dir.mkdir(parents=True, exist_ok=True)
        invocation.termination_log.parent.mkdir(parents=True, exist_ok=True)
        invocation.termination_log.unlink(missing_ok=True)
        invocation.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        timed_out = False
        with invocation.log_path.open("wb") as log:
            process = subprocess.Popen(
                self.argv(invocation),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
            try:
                while process.poll() is None:
                    elapsed = time.monotonic() - started
                    if (
                        invocation.timeout_seconds is not None
                        and elapsed > invocation.timeout_seconds
                    ):
                        timed_out = True
                        _stop(process)
                        break
                    if on_tick is not None:
                        on_tick(elapsed)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(self._poll_seconds)
            except BaseException:
                _stop(process)
                raise
        seconds = time.monotonic() - started
        code = process.returncode
        return StageRun(
            exit_code=None if timed_out or code is None or code < 0 else code,
            timed_out=timed_out,
            seconds=seconds,
            result=_read_result(invocation.termination_log),
            log_tail=_tail(invocation.log_path),
        )

    def _environment(self) -> dict[str, str]:
        """An explicit `env` as given; otherwise this process's environment less anything
        that could be a credential (`agent_environment`), with a HOME of the agents' own."""
        if self._env is not None:
            env = dict(self._env)
        else:
            if self._home is None:
                self._home = tempfile.TemporaryDirectory(prefix="bakeline-agent-home-")
            env = agent_environment(os.environ, home=self._home.name)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


# What an agent inherits from `bakeline run`'s environment: where programs and libraries are,
# language and thread settings, and Bakeline's own. Everything else (cloud keys, KUBECONFIG,
# tokens, proxies with passwords) stays behind: the import stage opens files from outside.
_INHERITED = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
    }
)
_INHERITED_PREFIXES = (
    "LC_",
    "OMP_",
    "MKL_",
    "KMP_",
    "GOMP_",
    "OPENBLAS_",
    "BAKELINE_",
    "TORCHINDUCTOR_",
)


def agent_environment(parent: Mapping[str, str], home: str) -> dict[str, str]:
    """The environment an agent process gets: `parent` filtered by name, HOME replaced."""
    env = {
        key: value
        for key, value in parent.items()
        if key in _INHERITED or key.startswith(_INHERITED_PREFIXES)
    }
    env["HOME"] = home
    return env


def host_fingerprint() -> str:
    """What makes this machine's measurements its own: architecture, CPU model and flags."""
    model, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    text = f"{platform.system()}|{platform.machine()}|{model}|{flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_document(
    name: str,
    model: Mapping[str, Any],
    target: Mapping[str, Any],
    quality: Mapping[str, Any],
    base_dir: Path,
) -> dict[str, Any]:
    """The `--job` JSON: the job-level spec parts, with the model resolved to a local file.

    `builtin` models pass through (the agents know them); a `url` is `file://` (a path relative
    to `base_dir`, the manifest's folder, is accepted too) or https:// / http:// (downloaded by
    `download.fetch` into a cache), and must match its sha256 (a folder's: `sha256_tree`).
    """
    resolved = dict(model)
    source = dict(model.get("source") or {})
    url = source.get("url")
    if isinstance(url, Mapping):  # the API's UrlModel: {url, sha256}
        address, expected = str(url.get("url", "")), url.get("sha256")
    else:
        address, expected = str(url or ""), source.get("sha256")
    expected = expected or model.get("sha256")
    if address:
        if not expected:
            raise ModelSourceError("a url model source needs its sha256")
        if is_remote(address):
            try:  # fetch keeps only the bytes that have `expected`
                path, actual = fetch(address, str(expected))
            except DownloadError as exc:
                raise ModelSourceError(str(exc)) from None
        else:
            path = _local_path(address, base_dir)
            if not path.is_file() and not path.is_dir():
                raise ModelSourceError(f"model file {path} does not exist")
            # A folder (a Hugging Face model directory) by the digest of its files' sha256s.
            actual = sha256_path(path)
        if actual != expected:
            what = "folder" if path.is_dir() else "file"
            how = " (`bakeline digest` prints a folder's)" if path.is_dir() else ""
            raise ModelSourceError(
                f"model {what} {path} has sha256 {actual}, expected {expected}{how}"
            )
        resolved["localPath"] = str(path)
        resolved["sha256"] = actual
    elif not source.get("builtin"):
        kinds = ", ".join(sorted(k for k, v in source.items() if v)) or "none"
        raise ModelSourceError(
            f"model source {kinds} is not available to `bakeline run` on one machine: "
            "use `builtin` or a file:// or https:// `url` with its sha256"
        )
    quality = resolve_dataset(quality, base_dir)
    return contract.job_document(name, {"target": target, "quality": quality}, resolved)


def resolve_dataset(quality: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """`quality` with its dataset resolved for the import stage: a file:// url or a path
    (relative to `base_dir`, the manifest's folder, as a model url's is), or an https:// one
    (downloaded afresh), becomes `file://ABSOLUTE#sha256=HEX`: the agent reads that file and
    checks it has those bytes, and the sha256, part of the job document, is part of the import
    stage's cache key."""
    resolved = dict(quality)
    dataset = str(resolved.get("dataset") or "builtin")
    if dataset == "builtin":
        return resolved
    if is_remote(dataset):
        try:
            path, digest = fetch(dataset, None)
        except DownloadError as exc:
            raise ModelSourceError(f"quality.dataset: {exc}") from None
        resolved["dataset"] = f"{path.as_uri()}#sha256={digest}"
        return resolved
    if dataset.startswith(("configmap/", "pvc://")):
        kind = "a ConfigMap" if dataset.startswith("configmap/") else "a PersistentVolumeClaim"
        raise ModelSourceError(
            f"quality.dataset {dataset} is {kind}, which the operator mounts in a cluster; "
            "`bakeline run` reads a local file: file://PATH or a path relative to the job file"
        )
    try:
        path = _local_path(dataset, base_dir)
    except ModelSourceError:
        raise ModelSourceError(
            f"quality.dataset {dataset}: datasets by this scheme are not fetched yet; `bakeline "
            "run` reads a local file (file://PATH or a path relative to the job file) or an "
            "https:// address"
        ) from None
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise ModelSourceError(f"dataset file {path} (quality.dataset) does not exist")
    resolved["dataset"] = f"{path.resolve().as_uri()}#sha256={sha256_file(path)}"
    return resolved


def _local_path(url: str, base_dir: Path) -> Path:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.netloc + parsed.path))
    if parsed.scheme == "":
        path = Path(url)
        return path if path.is_absolute() else (base_dir / path)
    raise ModelSourceError(
        f"{parsed.scheme}:// is not a model source `bakeline run` reads: file://, a path, "
        "https:// or http://"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the agent's process group, then SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_result(path: Path) -> TerminationMessage | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(TERMINATION_LIMIT)
    except OSError:
        return None
    return parse_termination(data)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_LOG_TAIL_LINES:])


def _installed_version() -> str:
    try:
        return metadata.version("bakeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"
