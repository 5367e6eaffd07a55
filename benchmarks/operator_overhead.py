"""Orchestration overhead of the operator on the local control plane; prints one JSON line.

Measured in one run, on loopback, with the node harness running a no-op agent:
- per-stage overhead: a stage's pod seen finished -> the next stage's pod seen created, both by
  one watch client, over `--jobs` jobs of nine stages (p50, p99);
- the floor: how late the same kind of watch client sees a pod status change it did itself
  (patch returned -> event seen), p50 and p99 over `--floor-samples` changes;
- API requests per stage, counted at the operator's client (bakeline_api_requests_total);
- the operator's peak RSS (VmHWM) at the end.

    python benchmarks/operator_overhead.py --jobs 10
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The control plane and the node harness are test infrastructure; never put ROOT itself on
# sys.path (operator/ would shadow the standard library's `operator`).
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]

from e2e.conftest import install_stage_rbac  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from controlplane import free_port, running  # noqa: E402
from support.kube import apply, get, wait_for  # noqa: E402
from support.node_harness import NodeHarness  # noqa: E402

STAGES = 9


class PodClock:
    """Watches pods of a namespace and notes when each was first seen and seen finished."""

    def __init__(self, api: client.CoreV1Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.added: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.changed: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                self.api.list_namespaced_pod, self.namespace, timeout_seconds=5
            )
            for event in stream:
                now = time.perf_counter()
                pod = event["object"]
                name = pod.metadata.name
                self.added.setdefault(name, now)
                if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                    self.done.setdefault(name, now)
                marker = (pod.metadata.annotations or {}).get("bench/marker")
                if marker:
                    self.changed.setdefault(marker, now)
                if self._stop.is_set():
                    break

    def stop(self) -> None:
        self._stop.set()


def _no_op_agent(directory: Path) -> dict[str, str]:
    agent = ROOT / "tests" / "support" / "scripted_agent.py"
    wrapper = directory / "bakeline-agent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{agent}" "$@"\n')
    wrapper.chmod(0o755)
    script = directory / "script.json"
    script.write_text("{}")
    return {"PATH": f"{directory}:{os.environ['PATH']}", "SCRIPTED_AGENT_SCRIPT": str(script)}


def _percentiles(values: list[float]) -> dict[str, float]:
    data = np.array(values) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(data, 50)), 1),
        "p99_ms": round(float(np.percentile(data, 99)), 1),
        "n": len(values),
    }


def _floor(api: client.CoreV1Api, clock: PodClock, namespace: str, samples: int) -> list[float]:
    """Watch delay of pod changes: a pod bound to no real node, its annotations patched."""
    pod: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "floor"},
        "spec": {
            "nodeName": "no-such-node",  # the harness leaves it alone
            "containers": [{"name": "c", "image": "none", "command": ["true"]}],
        },
    }
    api.create_namespaced_pod(namespace, pod)
    delays = []
    for index in range(samples):
        marker = f"m{index}"
        patch: Any = {"metadata": {"annotations": {"bench/marker": marker}}}
        sent = time.perf_counter()
        api.patch_namespaced_pod("floor", namespace, patch)
        wait_for(functools.partial(clock.changed.get, marker), 10, 0.001, "the watch event")
        delays.append(clock.changed[marker] - sent)
    return delays


def _finished(plane: Any, name: str, namespace: str) -> dict[str, Any] | None:
    status = (get(plane, "bj", name, namespace) or {}).get("status") or {}
    return dict(status) if status.get("phase") in ("Succeeded", "Failed") else None


def _serving(port: int) -> bool:
    try:
        _metric_total(port, "bakeline_api_requests")
    except OSError:
        return False
    return True


def _metric_total(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--floor-samples", type=int, default=50)
    args = parser.parse_args()
    namespace = "bench"
    with tempfile.TemporaryDirectory(prefix="bakeline-bench-") as tmp_text:
        tmp = Path(tmp_text)
        with running(tmp / "cp", log=lambda _: None) as plane:
            plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd", "--all")
            plane.kubectl("create", "namespace", namespace)
            install_stage_rbac(plane, namespace, ROOT)  # stage pods run as bakeline-stage
            api_client = plane.api_client()
            core = client.CoreV1Api(api_client)
            (tmp / "bin").mkdir()
            harness = NodeHarness(api_client, tmp / "node")
            harness.namespace_env[namespace] = _no_op_agent(tmp / "bin")
            metrics_port = free_port()
            env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
            with harness, (tmp / "operator.log").open("wb") as log:
                operator = subprocess.Popen(
                    [
                        "bakeline",
                        "operator",
                        "-n",
                        namespace,
                        f"--metrics-port={metrics_port}",
                        f"--health-port={free_port()}",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                )
                clock = PodClock(core, namespace)
                try:
                    result = _measure(plane, core, clock, namespace, args, metrics_port, operator)
                finally:
                    clock.stop()
                    operator.terminate()
                    operator.wait(timeout=30)
                    if os.environ.get("BENCH_KEEP_LOG"):  # a path to keep the operator's log
                        (tmp / "operator.log").replace(os.environ["BENCH_KEEP_LOG"])
    print(json.dumps(result, sort_keys=True))


def _measure(
    plane: Any,
    core: client.CoreV1Api,
    clock: PodClock,
    namespace: str,
    args: argparse.Namespace,
    metrics_port: int,
    operator: subprocess.Popen[bytes],
) -> dict[str, Any]:
    lane = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": "standard"},
        "spec": {"maxConcurrentJobs": args.jobs, "maxQueuedJobs": args.jobs},
    }
    apply(plane, lane, namespace)
    wait_for(lambda: _serving(metrics_port), 60, what="the operator's metrics endpoint")
    before = _metric_total(metrics_port, "bakeline_api_requests")
    names = [f"job-{i}" for i in range(args.jobs)]
    jobs: list[dict[str, Any]] = [
        {
            "apiVersion": "bakeline.io/v1alpha1",
            "kind": "BakingJob",
            "metadata": {"name": name},
            "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"},
        }
        for name in names
    ]
    started = time.perf_counter()
    apply(plane, jobs, namespace)
    statuses = {
        name: wait_for(
            functools.partial(_finished, plane, name, namespace), 600, 0.5, f"{name} to finish"
        )
        for name in names
    }
    elapsed = time.perf_counter() - started
    requests = _metric_total(metrics_port, "bakeline_api_requests") - before
    overheads = []
    for status in statuses.values():
        pods = [s.get("pod") for s in status["stages"]]
        for done, nxt in itertools.pairwise(pods):
            if done in clock.done and nxt in clock.added:
                overheads.append(clock.added[nxt] - clock.done[done])
    floor = _floor(core, clock, namespace, args.floor_samples)
    rss_kb = 0
    for line in Path(f"/proc/{operator.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss_kb = int(line.split()[1])
    stage_overhead = _percentiles(overheads)
    floor_ms = _percentiles(floor)
    return {
        "benchmark": "operator_overhead",
        "jobs": args.jobs,
        "succeeded": sum(s["phase"] == "Succeeded" for s in statuses.values()),
        "stage_overhead": stage_overhead,
        "watch_floor": floor_ms,
        "p99_overhead_over_floor": round(
            stage_overhead["p99_ms"] / max(floor_ms["p99_ms"], 0.1), 1
        ),
        "api_requests_per_stage": round(requests / (args.jobs * STAGES), 2),
        "jobs_per_minute": round(args.jobs / elapsed * 60, 1),
        "operator_peak_rss_mb": round(rss_kb / 1024, 1),
    }


if __name__ == "__main__":
    main()
