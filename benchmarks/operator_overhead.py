"""Orchestration overhead of the operator on the local control plane; prints one JSON line.

Measured in one run, on loopback, with the node harness running a no-op agent:
- per-stage overhead: a stage's pod seen finished -> the next stage's pod seen created, both by
  one watch client, over `--jobs` jobs of nine stages (p50, p99);
- the floor: how late the same kind of watch client sees a pod status change it did itself
  (patch returned -> event seen), p50 and p99 over `--floor-samples` changes once the jobs are
  done, and under load: sampled every 0.2 s while the jobs run (the operator's delays come
  from the same API server and CPUs);
- API requests per stage, counted at the operator's client (bakeline_api_requests_total);
- throughput: `--throughput-jobs` single-stage jobs created at once in a lane that runs them all
  concurrently, jobs per minute from the first create to the last job finished;
- memory: the operator's RSS with `--present-jobs` more BakingJobs present (queued in a held
  lane), then over a `--soak-seconds` soak of continuous status patching (a steady stream of
  single-stage jobs, each deleted with its pods and ConfigMaps once finished: the test plane
  has no garbage collector), sampled every few seconds; the growth is the slope of a line
  fitted to the soak's second half, in MB per minute, and the last sample minus the first;
- the operator's peak RSS (VmHWM) at the end.

    python benchmarks/operator_overhead.py --jobs 10
    python benchmarks/operator_overhead.py --jobs 5 --throughput-jobs 200 --present-jobs 1000 \
        --soak-seconds 600
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import itertools
import json
import os
import resource
import signal
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
from support.node_harness import NodeHarness, scripted_agent_env  # noqa: E402

STAGES = 9
GROUP, VERSION = "bakeline.io", "v1alpha1"
SINGLE_STAGE = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "Workflow",
    "metadata": {"name": "single"},
    "spec": {"stages": [{"name": "import", "agent": "BakingCoordinator"}]},
}


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


def _percentiles(values: list[float]) -> dict[str, float]:
    data = np.array(values) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(data, 50)), 1),
        "p99_ms": round(float(np.percentile(data, 99)), 1),
        "n": len(values),
    }


def _floor_pod(api: client.CoreV1Api, namespace: str) -> None:
    """A pod bound to no real node (the harness leaves it alone), for the floor's patches."""
    pod: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "floor"},
        "spec": {
            "nodeName": "no-such-node",
            "containers": [{"name": "c", "image": "none", "command": ["true"]}],
        },
    }
    api.create_namespaced_pod(namespace, pod)


def _floor_sample(api: client.CoreV1Api, clock: PodClock, namespace: str, marker: str) -> float:
    """Watch delay of one pod change: the floor pod's annotation patched -> the event seen."""
    patch: Any = {"metadata": {"annotations": {"bench/marker": marker}}}
    sent = time.perf_counter()
    api.patch_namespaced_pod("floor", namespace, patch)
    wait_for(functools.partial(clock.changed.get, marker), 10, 0.001, "the watch event")
    return clock.changed[marker] - sent


def _floor(api: client.CoreV1Api, clock: PodClock, namespace: str, samples: int) -> list[float]:
    return [_floor_sample(api, clock, namespace, f"m{index}") for index in range(samples)]


class FloorUnderLoad:
    """The floor sampled every `every` seconds while the jobs run: the same API server and
    CPUs the operator is waiting on, so the two delays are compared under the same load."""

    def __init__(self, api: client.CoreV1Api, clock: PodClock, namespace: str, every: float):
        self.delays: list[float] = []
        self._stop = threading.Event()
        self._args = (api, clock, namespace)
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FloorUnderLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for index in itertools.count():
            if self._stop.wait(self._every):
                return
            self.delays.append(_floor_sample(*self._args, f"load{index}"))


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
    return sum(_metric_by_labels(port, name).values())


def _metric_by_labels(port: int, name: str) -> dict[str, float]:
    """A counter's samples keyed by their label values joined with spaces."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        " ".join(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="nine-stage jobs for the overhead")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="how many of them run at once (the lane's width; default: all): more jobs at the "
        "same load give the p99 more transitions to stand on",
    )
    parser.add_argument("--floor-samples", type=int, default=50)
    parser.add_argument("--throughput-jobs", type=int, default=0)
    parser.add_argument("--present-jobs", type=int, default=0)
    parser.add_argument("--soak-seconds", type=float, default=0)
    parser.add_argument(
        "--census",
        action="store_true",
        help="count the operator's live objects by type at the soak's start and end "
        "(benchmarks/object_census.py) and report what grew",
    )
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
            harness.namespace_env[namespace] = scripted_agent_env(tmp / "bin", tmp / "script.json")
            metrics_port = free_port()
            env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
            with harness, (tmp / "operator.log").open("wb") as log:
                launcher = ["bakeline"]
                args.census_dir = tmp / "census" if args.census else None
                if args.census:
                    census = ROOT / "benchmarks" / "object_census.py"
                    launcher = [sys.executable, str(census), str(tmp / "census")]
                operator = subprocess.Popen(
                    [
                        *launcher,
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
        "spec": {"maxConcurrentJobs": args.concurrency or args.jobs, "maxQueuedJobs": args.jobs},
    }
    apply(plane, lane, namespace)
    wait_for(lambda: _serving(metrics_port), 60, what="the operator's metrics endpoint")
    before = _metric_by_labels(metrics_port, "bakeline_api_requests")
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
    _floor_pod(core, namespace)
    started = time.perf_counter()
    with FloorUnderLoad(core, clock, namespace, every=0.2) as loaded:
        apply(plane, jobs, namespace)
        statuses = {
            name: wait_for(
                functools.partial(_finished, plane, name, namespace), 600, 0.5, f"{name} to finish"
            )
            for name in names
        }
    elapsed = time.perf_counter() - started
    after = _metric_by_labels(metrics_port, "bakeline_api_requests")
    by_kind = {key: value - before.get(key, 0.0) for key, value in after.items()}
    requests = sum(by_kind.values())
    overheads = []
    for status in statuses.values():
        pods = [s.get("pod") for s in status["stages"]]
        for done, nxt in itertools.pairwise(pods):
            if done in clock.done and nxt in clock.added:
                overheads.append(clock.added[nxt] - clock.done[done])
    floor = _floor(core, clock, namespace, args.floor_samples)
    stage_overhead = _percentiles(overheads)
    floor_ms = _percentiles(floor)
    loaded_ms = _percentiles(loaded.delays)
    stream = Jobs(client.CustomObjectsApi(core.api_client), core, namespace)
    extra: dict[str, Any] = {}
    if args.throughput_jobs or args.soak_seconds:
        apply(plane, SINGLE_STAGE, namespace)
        wait_for(
            lambda: _condition_true(plane, "workflow", "single", namespace, "Ready"),
            60,
            what="the single-stage workflow to be Ready",
        )
    if args.throughput_jobs:
        _say(f"throughput: {args.throughput_jobs} single-stage jobs")
        extra["throughput"] = _throughput(plane, stream, args.throughput_jobs, operator.pid)
    if args.present_jobs:
        _say(f"memory: {args.present_jobs} queued jobs")
        extra["present"] = _present(plane, stream, args.present_jobs, operator.pid)
    if args.soak_seconds:
        _say(f"soak: {args.soak_seconds:.0f} s")
        extra["soak"] = _soak(plane, stream, args.soak_seconds, operator.pid, args.census_dir)
    return {
        "benchmark": "operator_overhead",
        "jobs": args.jobs,
        "concurrency": args.concurrency or args.jobs,
        "succeeded": sum(s["phase"] == "Succeeded" for s in statuses.values()),
        "stage_overhead": stage_overhead,
        "watch_floor": floor_ms,
        "p99_overhead_over_floor": round(
            stage_overhead["p99_ms"] / max(floor_ms["p99_ms"], 0.1), 1
        ),
        "watch_floor_under_load": loaded_ms,
        "p99_overhead_over_floor_under_load": round(
            stage_overhead["p99_ms"] / max(loaded_ms["p99_ms"], 0.1), 1
        ),
        "api_requests_per_stage": round(requests / (args.jobs * STAGES), 2),
        "api_requests_per_stage_by_kind": {
            key: round(value / (args.jobs * STAGES), 2)
            for key, value in sorted(by_kind.items())
            if value
        },
        "jobs_per_minute": round(args.jobs / elapsed * 60, 1),
        **extra,
        "operator_peak_rss_mb": round(_memory_kb(operator.pid, "VmHWM") / 1024, 1),
    }


def _say(message: str) -> None:
    """Progress on stderr; the result is the one JSON line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _condition_true(plane: Any, resource: str, name: str, namespace: str, kind: str) -> bool:
    obj = get(plane, resource, name, namespace) or {}
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by each part between start and `per_job`: the operator, the API
    server and etcd, the stage pods (this process's reaped children: the harness runs them),
    and this process (the harness, the watch clock and the benchmark's own requests)."""

    def __init__(self, plane: Any, operator_pid: int) -> None:
        self.pids = {
            "operator": operator_pid,
            "apiserver": plane.apiserver_pid,
            "etcd": plane.etcd_pid,
        }
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        now = {part: _cpu_seconds(pid) for part, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        now["stage_pods"] = children.ru_utime + children.ru_stime
        now["harness_and_benchmark"] = own.ru_utime + own.ru_stime
        return now

    def per_job(self, jobs: int) -> dict[str, float]:
        end = self._now()
        return {part: round((end[part] - self.start[part]) / jobs, 3) for part in end}


def _memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


class Jobs:
    """BakingJobs of the benchmark's namespace by set label, through the Python client."""

    def __init__(
        self, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
    ) -> None:
        self.custom, self.core, self.namespace = custom, core, namespace
        self.pool = concurrent.futures.ThreadPoolExecutor(8)  # creates overlap their round trips

    def create(self, names: list[str], lane: str, workflow: str | None, bench_set: str) -> None:
        def one(name: str) -> None:
            spec: dict[str, Any] = {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": lane}
            if workflow:
                spec["workflowRef"] = workflow
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BakingJob",
                "metadata": {"name": name, "labels": {"bench/set": bench_set}},
                "spec": spec,
            }
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "bakingjobs", body
            )

        list(self.pool.map(one, names))

    def listed(self, bench_set: str) -> list[dict[str, Any]]:
        found: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "bakingjobs", label_selector=f"bench/set={bench_set}"
        )
        return list(found["items"])

    def delete_with_children(self, jobs: list[dict[str, Any]]) -> None:
        """Deletes the jobs, then the pods and ConfigMaps they own (no garbage collector here)."""
        uids = {job["metadata"]["uid"] for job in jobs}

        def owned(items: list[Any]) -> list[str]:
            return [
                item.metadata.name
                for item in items
                if any(ref.uid in uids for ref in item.metadata.owner_references or [])
            ]

        def delete_job(name: str) -> None:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "bakingjobs", name
            )

        list(self.pool.map(delete_job, [job["metadata"]["name"] for job in jobs]))
        pods = owned(self.core.list_namespaced_pod(self.namespace).items)
        maps = owned(self.core.list_namespaced_config_map(self.namespace).items)
        list(self.pool.map(lambda n: self.core.delete_namespaced_pod(n, self.namespace), pods))
        list(
            self.pool.map(lambda n: self.core.delete_namespaced_config_map(n, self.namespace), maps)
        )


def _phase(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "")


def _lane(
    plane: Any, jobs: Jobs, name: str, concurrent_jobs: int, queued: int, stop: str = "None"
) -> None:
    lane = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Lane",
        "metadata": {"name": name},
        "spec": {
            "maxConcurrentJobs": concurrent_jobs,
            "maxQueuedJobs": queued,
            "stopPolicy": stop,
        },
    }
    apply(plane, lane, jobs.namespace)


def _throughput(plane: Any, jobs: Jobs, count: int, operator_pid: int) -> dict[str, Any]:
    """`count` single-stage jobs created at once in a lane as wide as they are."""
    _lane(plane, jobs, "wide", min(count, 1000), max(count, 1000))
    names = [f"burst-{i}" for i in range(count)]
    cpu = CpuMeter(plane, operator_pid)
    started = time.perf_counter()
    jobs.create(names, "wide", "single", "burst")
    created = time.perf_counter() - started

    def all_finished() -> list[dict[str, Any]] | None:
        listed = jobs.listed("burst")
        done = [job for job in listed if _phase(job) in ("Succeeded", "Failed")]
        return listed if len(done) == count else None

    finished = wait_for(all_finished, 1800, 0.25, f"{count} single-stage jobs to finish")
    elapsed = time.perf_counter() - started
    return {
        "jobs": count,
        "succeeded": sum(_phase(job) == "Succeeded" for job in finished),
        "create_seconds": round(created, 1),
        "seconds": round(elapsed, 1),
        "jobs_per_minute": round(count / elapsed * 60, 1),
        "cpu_seconds_per_job": cpu.per_job(count),
    }


def _present(plane: Any, jobs: Jobs, count: int, pid: int) -> dict[str, Any]:
    """The operator's RSS once it has seen `count` more jobs, queued in a held lane."""
    _lane(plane, jobs, "held", 1, max(count, 100), stop="Hold")
    started = time.perf_counter()
    jobs.create([f"queued-{i}" for i in range(count)], "held", None, "queued")

    def all_seen() -> bool:
        return all(_phase(job) for job in jobs.listed("queued"))

    wait_for(all_seen, 1800, 1.0, f"the operator to give {count} queued jobs a phase")
    return {
        "jobs": count,
        "seconds_to_see_all": round(time.perf_counter() - started, 1),
        "rss_mb": round(_memory_kb(pid, "VmRSS") / 1024, 1),
        "peak_rss_mb": round(_memory_kb(pid, "VmHWM") / 1024, 1),
    }


def _soak(
    plane: Any,
    jobs: Jobs,
    seconds: float,
    pid: int,
    census_dir: Path | None = None,
    in_flight: int = 10,
) -> dict[str, Any]:
    """A steady stream of single-stage jobs for `seconds`; the operator's RSS every 5 s; with
    `census_dir`, a census of its objects after the first half-minute and at the end."""
    _lane(plane, jobs, "wide", 1000, 1000)
    censuses: list[dict[str, Any]] = []
    counter = itertools.count()
    samples: list[tuple[float, float]] = []
    started = last_sample = time.perf_counter()
    completed = 0
    while (now := time.perf_counter()) - started < seconds:
        listed = jobs.listed("soak")
        finished = [job for job in listed if _phase(job) in ("Succeeded", "Failed")]
        if finished:
            jobs.delete_with_children(finished)
            completed += len(finished)
        missing = in_flight - (len(listed) - len(finished))
        if missing > 0:
            jobs.create([f"soak-{next(counter)}" for _ in range(missing)], "wide", "single", "soak")
        if now - last_sample >= 5 or not samples:
            samples.append((now - started, _memory_kb(pid, "VmRSS") / 1024))
            last_sample = now
        if census_dir is not None and not censuses and now - started >= 30:
            censuses.append(_take_census(census_dir, pid, 0))
        time.sleep(0.5)
    if census_dir is not None and censuses:
        censuses.append(_take_census(census_dir, pid, 1))
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples])
    half = times >= seconds / 2
    slope = float(np.polyfit(times[half], rss[half], 1)[0]) * 60 if half.sum() >= 2 else 0.0
    return {
        "seconds": round(seconds),
        "jobs_completed": completed,
        "jobs_per_minute": round(completed / seconds * 60, 1),
        "rss_first_mb": round(float(rss[0]), 1),
        "rss_last_mb": round(float(rss[-1]), 1),
        "rss_max_mb": round(float(rss.max()), 1),
        "second_half_slope_mb_per_min": round(slope, 2),
        # The last sample of each minute: growth that levels off shows as a plateau.
        "rss_by_minute_mb": [
            round(float(rss[times < minute * 60][-1]), 1)
            for minute in range(1, int(times[-1] // 60) + 2)
            if (times < minute * 60).any()
        ],
        **({"census": _census_growth(*censuses)} if len(censuses) == 2 else {}),
    }


def _take_census(directory: Path, pid: int, number: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGUSR2)
    path = directory / f"census-{number}.json"
    wait_for(lambda: path.exists() and path.stat().st_size > 0, 120, 0.5, "the census")
    time.sleep(0.5)  # written in one call; let it finish
    return dict(json.loads(path.read_text()))


def _census_growth(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """What grew between two censuses: object counts and bytes by type, and the allocator."""
    grown = []
    for name, (count, size) in last["by_type"].items():
        before_count, before_size = first["by_type"].get(name, [0, 0])
        if count > before_count:
            grown.append((size - before_size, name, count - before_count))
    grown.sort(reverse=True)
    allocator = {
        key: round((last["allocator"].get(key, 0) - first["allocator"].get(key, 0)) / 2**20, 2)
        for key in ("arena", "hblkhd", "uordblks", "fordblks")
    }
    pymalloc = {
        key: round((last["pymalloc"].get(key, 0) - value) / (1 if "arenas" in key else 2**20), 2)
        for key, value in first.get("pymalloc", {}).items()
    }
    return {
        "objects_grown": last["objects"] - first["objects"],
        "allocated_blocks_grown": last.get("allocated_blocks", 0)
        - first.get("allocated_blocks", 0),
        "pymalloc_grown": pymalloc,
        "threads": [first["threads"], last["threads"]],
        "top_types": [
            {"type": name, "count": count, "shallow_kb": round(size / 1024, 1)}
            for size, name, count in grown[:12]
        ],
        "allocator_mb_grown": allocator,
    }


if __name__ == "__main__":
    main()
