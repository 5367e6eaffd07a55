"""End-to-end fixtures: the CRDs installed, and the operator running as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane, free_port
from support.node_harness import NodeHarness


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
    of ConfigMap lanes (the default store) use to store their checkpoints."""
    rendered = cluster.helm(
        "template",
        "rel",
        str(repo_root / "charts" / "bakeline"),
        "--show-only",
        "templates/stage-rbac.yaml",
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
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script_path = tmp_path / "script.json"
    agent = Path(__file__).resolve().parent.parent / "support" / "scripted_agent.py"
    wrapper = bin_dir / "bakeline-agent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{agent}" "$@"\n')
    wrapper.chmod(0o755)
    node.namespace_env[namespace] = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SCRIPTED_AGENT_SCRIPT": str(script_path),
    }

    def write(script: dict[str, Any]) -> Path:
        script_path.write_text(json.dumps(script))
        return script_path

    yield write
    node.namespace_env.pop(namespace, None)
