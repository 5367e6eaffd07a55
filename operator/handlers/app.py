"""The kopf registrations: thin handlers that hand each change to a plain reconcile function.

Only `on.event` handlers are used: they keep no progress annotations and add no finalizers, so
the operator writes status only (GitOps sees no drift) and a job can be deleted while the
operator is down. Backoff and deadlines are served by a scheduler thread that re-runs a job's
reconcile when the engine asked to look again.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config

from bakeline.handlers.config import OperatorConfig
from bakeline.handlers.job_admission import admission_decision
from bakeline.handlers.jobs import reconcile_job
from bakeline.handlers.lanes import lane_presence_changed, lanes_falling_back_to, reconcile_lane
from bakeline.handlers.slo import policies_watching, reconcile_slo
from bakeline.handlers.workflows import reconcile_workflow
from bakeline.kube.client import POD, RECORD, RECORD_SELECTOR, Kube
from bakeline.kube.informer import Informer
from bakeline.kube.job_status import TERMINAL
from bakeline.metrics.collectors import RECONCILE_ERRORS, RECONCILES, track_job_phase
from bakeline.runtime.pods import ANNOTATION_RERUN, LABEL_COMPONENT, LABEL_JOB

log = logging.getLogger("bakeline.operator")


class ObjectLock:
    """One object's reconcile lock, weakly kept: a table of plain locks grew by one entry per
    job ever seen, for as long as the operator ran."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> ObjectLock:
        self._lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self._lock.release()


@dataclass
class Runtime:
    """What the handlers share: the API wrapper, the settings and the wake-up schedule."""

    kube: Kube | None = None
    informer: Informer = field(default_factory=Informer)
    config: OperatorConfig = field(default_factory=OperatorConfig)
    locks: weakref.WeakValueDictionary[tuple[str, str], ObjectLock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    schedule: list[tuple[float, str, str, str]] = field(default_factory=list)
    pending: dict[tuple[str, str, str], float] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def lock_for(self, namespace: str, name: str) -> ObjectLock:
        """The object's lock; the table forgets it once no thread holds or awaits it."""
        with self.guard:
            lock = self.locks.get((namespace, name))
            if lock is None:
                lock = self.locks[(namespace, name)] = ObjectLock()
            return lock

    def wake_later(self, kind: str, namespace: str, name: str, delay: float) -> None:
        """Look at the object again after `delay`; one pending look per object, the earliest."""
        key, at = (kind, namespace, name), time.time() + delay
        with self.guard:
            if self.pending.get(key, float("inf")) <= at:
                return
            self.pending[key] = at
            heapq.heappush(self.schedule, (at, kind, namespace, name))

    def due(self) -> list[tuple[str, str, str]]:
        """What is due now; entries superseded by an earlier look are dropped."""
        now, ready = time.time(), []
        with self.guard:
            while self.schedule and self.schedule[0][0] <= now:
                at, kind, namespace, name = heapq.heappop(self.schedule)
                if self.pending.get((kind, namespace, name)) == at:
                    del self.pending[(kind, namespace, name)]
                    ready.append((kind, namespace, name))
        return ready


RUNTIME = Runtime()


def configure(
    settings: kopf.OperatorSettings, operator_config: OperatorConfig, api_client: Any
) -> None:
    """kopf's settings per its own advice (shared notes/kopf.md)."""
    RUNTIME.config = operator_config
    RUNTIME.kube = Kube(api_client, RUNTIME.informer)
    settings.persistence.finalizer = "bakeline.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="bakeline.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="bakeline.io", key="last-handled-configuration"
    )
    # Against silent watch stalls: server- and client-side timeouts, and inactivity restarts.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 600
    settings.posting.level = logging.WARNING  # our own Events tell the story; not kopf's
    # No namespace listing or CRD watching: both are cluster-scoped reads that a namespaced
    # install is not granted (kopf would retry them for a minute before carrying on).
    settings.scanning.disabled = True
    settings.execution.max_workers = 8
    # Filter the core watches on the server: the handlers' label filters are kopf's own,
    # client-side, so without these every ConfigMap of the namespace (checkpoint chunks of
    # up to 1 MiB, the SLO ledger) and every pod streamed through the operator and was parsed.
    settings.watching.label_selectors["", "v1", "configmaps"] = RECORD_SELECTOR
    settings.watching.label_selectors["", "v1", "pods"] = LABEL_JOB


RECONCILERS: dict[str, Callable[[Kube, dict[str, Any]], float | None]] = {
    "BakingJob": lambda kube, obj: reconcile_job(kube, RUNTIME.config, obj, time.time()),
    "Workflow": lambda kube, obj: reconcile_workflow(kube, obj),
    "Lane": lambda kube, obj: reconcile_lane(kube, obj, time.time()),
    "SLOPolicy": lambda kube, obj: reconcile_slo(
        kube, obj, time.time(), RUNTIME.config.slo_interval_s
    ),
}
LANE_REFRESH_S = 2.0  # lane counts lag job changes by at most this, at one list per lane


def reconcile(kind: str, namespace: str, name: str) -> None:
    """Reconcile one object under its lock, then schedule the next look it asked for."""
    kube = RUNTIME.kube
    assert kube is not None, "configure() runs at start-up"
    with RUNTIME.lock_for(namespace, f"{kind}/{name}"):
        obj = kube.get(kind, namespace, name)
        if obj is None:
            return
        try:
            with RECONCILES.labels(kind).time():
                wake = RECONCILERS[kind](kube, obj)
        except client.exceptions.ApiException as exc:
            if exc.status == 409:  # a concurrent write: look again shortly
                wake = 0.5
            else:
                RECONCILE_ERRORS.labels(kind).inc()
                log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
                wake = 5.0
        except Exception:  # one bad object must not take the operator down
            RECONCILE_ERRORS.labels(kind).inc()
            log.exception("reconcile of %s %s/%s failed", kind, namespace, name)
            wake = 10.0
    if wake is not None:
        RUNTIME.wake_later(kind, namespace, name, wake)
    if kind == "BakingJob" and _left_its_lane(obj, kube.get(kind, namespace, name)):
        wake_admitted(namespace)
    if kind == "BakingJob" and _ended(obj, kube.get(kind, namespace, name)):
        workflow = (obj.get("spec") or {}).get("workflowRef")
        if workflow:
            # The job's durations joined the namespace's history: its workflow's predictions
            # follow them (kube/durations.py).
            RUNTIME.wake_later("Workflow", namespace, workflow, LANE_REFRESH_S)
    if kind == "BakingJob":
        lane = (obj.get("status") or {}).get("lane") or (obj.get("spec") or {}).get("laneRef")
        if lane:
            RUNTIME.wake_later("Lane", namespace, lane, LANE_REFRESH_S)


def _left_its_lane(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    """The pass ended a job that held a lane's slot, or sent it back to the queue."""
    was = before.get("status") or {}
    now = (after or {}).get("status") or {}
    return bool(was.get("lane")) and (now.get("phase") in TERMINAL or not now.get("lane"))


def _ended(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    """The pass finished the job (Succeeded or Failed)."""
    was = (before.get("status") or {}).get("phase")
    return was not in TERMINAL and ((after or {}).get("status") or {}).get("phase") in TERMINAL


def wake_admitted(namespace: str) -> None:
    """Room may have opened in the namespace's lanes (a job ended or left, a lane changed):
    the jobs the admission decision now admits are looked at at once. Queued jobs poll only
    slowly by themselves, since each pass of 1,000 queued jobs costs the same as one."""
    kube = RUNTIME.kube
    assert kube is not None, "configure() runs at start-up"
    for name in admission_decision(
        kube, namespace, time.time(), RUNTIME.config.max_running_jobs
    ).admit:
        RUNTIME.wake_later("BakingJob", namespace, name, 0.0)


def wake_lane_referrers(namespace: str, lane: str) -> None:
    """Lane `lane` appeared, went or was relabelled: the lanes that fall back to it and the
    SLOPolicies that may select it look again (their FallbackLaneFound and LanesFound follow).
    Both are served from the informer; the looks are deduplicated like any other."""
    kube = RUNTIME.kube
    assert kube is not None, "configure() runs at start-up"
    for name in lanes_falling_back_to(kube.list_objects("Lane", namespace), lane):
        RUNTIME.wake_later("Lane", namespace, name, 0.0)
    for name in policies_watching(kube.list_objects("SLOPolicy", namespace), lane):
        RUNTIME.wake_later("SLOPolicy", namespace, name, 0.0)


def scheduler_loop() -> None:
    while not RUNTIME.stop.wait(0.25):
        for kind, namespace, name in RUNTIME.due():
            reconcile(kind, namespace, name)


# ---------------------------------------------------------------------------- kopf handlers


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    if RUNTIME.kube is None:  # `bakeline operator` configures first; this is the fallback
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configure(settings, RUNTIME.config, client.ApiClient())
    else:
        configure(settings, RUNTIME.config, RUNTIME.kube.api_client)
    RUNTIME.stop.clear()
    threading.Thread(target=scheduler_loop, name="bakeline-scheduler", daemon=True).start()


@kopf.on.cleanup()
def _cleanup(**_: Any) -> None:
    RUNTIME.stop.set()


def _observe(kind: str, event: kopf.RawEvent) -> None:
    """Keep what the watch delivered (type None: kopf's initial listing)."""
    RUNTIME.informer.observe(kind, str(event.get("type") or ""), event["object"])


@kopf.on.event("bakeline.io", "v1alpha1", "bakingjobs")
def _job_event(
    type: str, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any
) -> None:
    if not namespace:
        return
    _observe("BakingJob", event)
    if type == "DELETED":
        track_job_phase(namespace, name, None)
        wake_admitted(namespace)  # a running job deleted frees its slot
    elif not _own_status_write(type, body):
        reconcile("BakingJob", namespace, name)


@kopf.on.event("", "v1", "configmaps", labels={LABEL_COMPONENT: "checkpoint"})
def _record_event(event: kopf.RawEvent, **_: Any) -> None:
    _observe(RECORD, event)  # records are ours; their changes need no reconcile


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def _pod_event(
    type: str, body: kopf.Body, event: kopf.RawEvent, namespace: str | None, **_: Any
) -> None:
    _observe(POD, event)
    # Only an ended, vanishing or vanished pod moves its job; Pending -> Running does not.
    phase = (body.get("status") or {}).get("phase")
    ending = phase in ("Succeeded", "Failed") or body.metadata.get("deletionTimestamp")
    if not namespace or not (ending or type == "DELETED"):
        return
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == "BakingJob":
            reconcile("BakingJob", namespace, owner["name"])


def _own_status_write(type: str, body: kopf.Body) -> bool:
    """A MODIFIED event that only echoes our status patch: the spec's generation is already
    observed and any rerun request already acted on. Progress comes from pod events and the
    scheduler, so skipping these saves a full reconcile per status write."""
    status = body.get("status") or {}
    rerun = (body.metadata.get("annotations") or {}).get(ANNOTATION_RERUN)
    return bool(
        type == "MODIFIED"
        and status.get("observedGeneration") == body.metadata.get("generation")
        and status.get("phase") not in (None, "Queued", "Pending")
        and (not rerun or rerun == status.get("rerunRequest"))
    )


@kopf.on.event("bakeline.io", "v1alpha1", "workflows")
def _workflow_event(
    type: str, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any
) -> None:
    _observe("Workflow", event)
    if type != "DELETED" and namespace:
        reconcile("Workflow", namespace, name)
        wake_admitted(namespace)  # jobs waiting for it may go on


@kopf.on.event("bakeline.io", "v1alpha1", "slopolicies")
def _slo_event(type: str, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
    _observe("SLOPolicy", event)
    if type != "DELETED" and namespace:
        reconcile("SLOPolicy", namespace, name)


@kopf.on.event("bakeline.io", "v1alpha1", "lanes")
def _lane_event(
    type: str, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any
) -> None:
    before = RUNTIME.informer.get("Lane", namespace or "", name)
    _observe("Lane", event)
    if namespace and lane_presence_changed(type, before, event["object"]):
        wake_lane_referrers(namespace, name)
    if type != "DELETED" and namespace:
        reconcile("Lane", namespace, name)
        # Changed (opened, widened, unfrozen) or new: waiting jobs may go in. On the lane's
        # events, not its reconciles: those follow every job pass, and would wake the same
        # waiting job every few seconds.
        wake_admitted(namespace)
