"""End-to-end fixtures: the CRDs installed, and the operator running as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane, free_port
from support.node_harness import NodeHarness, scripted_agent_env


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane, repo_root: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(repo_root / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", timeout=60)


class OperatorProcess:
    """`bakeline operator` as a child process, so tests can kill and restart it."""

    def __init__(self, cluster: ControlPlane, namespace: str, log_path: Path) -> None:
        self.cluster, self.namespace, self.log_path = cluster, namespace, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port, self.health_port = free_port(), free_port()
        self.extra_args: list[str] = []  # more `bakeline operator` flags, for the next start()

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        sink = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                "bakeline",
                "operator",
                "-n",
                self.namespace,
                f"--metrics-port={self.metrics_port}",
                f"--health-port={self.health_port}",
                "--slo-interval=1",  # SLO tests use windows of seconds
                *self.extra_args,
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.log_path.parent,  # never the repo root: operator/ would shadow `operator`
        )
        sink.close()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def install_stage_rbac(cluster: ControlPlane, namespace: str, repo_root: Path) -> None:
    """The chart's stage ServiceAccount, Role and RoleBinding in `namespace`: what stage pods
    of ConfigMap lanes (the default store) use to store their checkpoints; and its admission
    policy, so that every store write of every e2e job passes it (cluster-scoped, named after
    the namespace, bound to it alone)."""
    rendered = cluster.helm(
        "template",
        "rel",
        str(repo_root / "charts" / "bakeline"),
        "-n",
        namespace,
        "--show-only",
        "templates/stage-rbac.yaml",
        "--show-only",
        "templates/stage-admission-policy.yaml",
        "--set",
        f"watch.namespaces={{{namespace}}}",
    ).stdout
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)


@pytest.fixture
def operator(
    cluster: ControlPlane, namespace: str, crds: None, tmp_path: Path, repo_root: Path
) -> Iterator[OperatorProcess]:
    install_stage_rbac(cluster, namespace, repo_root)
    process = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def scripted_agent(
    node: NodeHarness, namespace: str, tmp_path: Path
) -> Iterator[Callable[[dict[str, Any]], Path]]:
    """Pods of this test's namespace run the scripted agent; call it with the script."""
    script_path = tmp_path / "script.json"
    node.namespace_env[namespace] = scripted_agent_env(tmp_path / "bin", script_path)

    def write(script: dict[str, Any]) -> Path:
        script_path.write_text(json.dumps(script))
        return script_path

    yield write
    node.namespace_env.pop(namespace, None)
