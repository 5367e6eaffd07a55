"""`bakeline operator`: load credentials, serve metrics, win the leader Lease if asked to, run
kopf over our handlers."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence

import kopf
from aiohttp import web
from kubernetes import client, config
from prometheus_client import start_http_server

from bakeline.handlers import app
from bakeline.handlers.config import OperatorConfig
from bakeline.kube.client import Kube
from bakeline.kube.leader import ElectionConfig, LeaderElector, default_identity
from bakeline.metrics.collectors import LEADER, REGISTRY

RECURSION_LIMIT = 50_000
MALLOC_ARENAS = 2
MALLOC_TRIM_INTERVAL_S = 30.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)

log = logging.getLogger("bakeline.operator")


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as MALLOC_ARENA_MAX would, unless that is set already.

    glibc gives each thread that contends for the heap an arena of its own, up to 8 per core,
    and memory freed into one is rarely returned or reused by another thread. With kopf's and
    the reconcile pool's threads, a 10-minute soak of 1,700 jobs grew the operator's RSS by
    1.35 MB/min; with two arenas, 0.21 MB/min (BENCHMARKS.md section 2). Called before any
    thread starts. Returns whether the cap was applied (not on other C libraries).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl, macOS: no such knob
        return False


def trim_free_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the OS (malloc_trim(0)); whether any
    were. False where the C library has no such call."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def trim_free_heap_every(interval_s: float = MALLOC_TRIM_INTERVAL_S) -> threading.Event:
    """Call trim_free_heap every `interval_s` on a daemon thread, until the returned event is
    set.

    glibc returns freed memory to the OS only from the top of a heap. The operator's heap is
    churned by watch events, LIST answers and status patches, and what is freed between
    long-lived blocks stays resident: in a 10-minute soak of 3,000 jobs its Python blocks fell
    by 6.5 MB while glibc's free-but-kept bytes rose by 3.2 MB, and RSS with them (BENCHMARKS.md
    section 2). A trim walks the heaps in milliseconds.
    """
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            trim_free_heap()

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return stop


def election_config(args: argparse.Namespace) -> ElectionConfig | None:
    """The --leader-elect-* flags as settings; None without --leader-elect."""
    if not args.leader_elect:
        return None
    namespace = args.leader_elect_resource_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace and len(args.namespace) == 1:
        namespace = args.namespace[0]
    if not namespace:
        raise SystemExit(
            "bakeline operator: --leader-elect needs --leader-elect-resource-namespace "
            "(or POD_NAMESPACE) when it does not watch exactly one namespace"
        )
    try:
        return ElectionConfig(
            namespace=namespace,
            name=args.leader_elect_resource_name,
            identity=default_identity(),
            lease_duration_s=args.leader_elect_lease_duration,
            renew_deadline_s=args.leader_elect_renew_deadline,
            retry_period_s=args.leader_elect_retry_period,
        )
    except ValueError as exc:
        raise SystemExit(f"bakeline operator: {exc}") from None


def run_operator(
    namespaces: Sequence[str],
    all_namespaces: bool,
    operator_config: OperatorConfig,
    metrics_port: int | None = 8080,
    health_port: int | None = 8081,
    verbose: bool = False,
    election: ElectionConfig | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or, with `election`, until the Lease is lost: then the
    process exits with status 1). Watches `namespaces`, or every namespace."""
    if not namespaces and not all_namespaces:
        raise ValueError("name at least one --namespace, or --all-namespaces")
    if not limit_malloc_arenas():
        log.debug("malloc arenas left as they are")
    trim_free_heap_every()
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    app.RUNTIME.config = operator_config
    app.RUNTIME.kube = Kube(client.ApiClient())
    # The API server admits JSON nested up to 10,000 levels (free-form params included); at
    # Python's default limit of 1,000 one such object makes kopf's watch stream raise
    # RecursionError, and a watcher that raises stops the whole operator. Decoding, copying and
    # diffing take 2-3 frames a level; measured safe on an 8 MiB stack at 20,000 levels.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    if metrics_port:
        start_http_server(metrics_port, registry=REGISTRY)
    kopf.configure(verbose=verbose)
    logging.getLogger("kopf.objects").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("bakeline.leader").setLevel(logging.INFO)
    asyncio.run(_operate(namespaces, all_namespaces, health_port, election))


async def _operate(
    namespaces: Sequence[str],
    all_namespaces: bool,
    health_port: int | None,
    election: ElectionConfig | None,
) -> None:
    renewing: asyncio.Task[None] | None = None
    if election is None:
        LEADER.set(1)
    else:
        # A client of its own: renewals never queue for a connection behind reconciles.
        elector = LeaderElector(Kube(client.ApiClient()), election)
        # kopf's liveness endpoint starts with kopf, after the Lease is won: until then the
        # probes get this one, so that a standby is not restarted for standing by.
        standby = (
            await _serve_standby_health(health_port, lambda: elector.looked)
            if health_port
            else None
        )
        await elector.acquire()
        if standby is not None:
            await standby.cleanup()
        renewing = asyncio.create_task(elector.keep_leading(), name="bakeline-lease")
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    try:
        await kopf.operator(
            # kopf's peering is not leader election (notes/kopf.md): exclusion is the Lease's
            # job, or, without --leader-elect, the one replica's.
            standalone=True,
            clusterwide=all_namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
        )
    finally:
        if renewing is not None:
            renewing.cancel()


async def _serve_standby_health(port: int, looked: Callable[[], bool]) -> web.AppRunner:
    """/healthz while standing by: this event loop answers, so the process is alive; 503 until
    it has read the Lease once, since a standby's wait for an expiry starts at its first look
    (so a rollout, or the disruption budget, does not count it as ready before that)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(
            {"leader": False, "looked": looked()}, status=200 if looked() else 503
        )

    server = web.Application()
    server.router.add_get("/healthz", healthz)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 (kubelet probes the pod IP)
    return runner
