"""A Succeeded BakingJob's delivery to spec.output: a pod per attempt (runtime/pods.py
`build_delivery_pod`), its outcome in `status.output` and the `Delivered` condition. Part of
the job pass (`handlers/jobs.py`), which hands a finished job here while it has an output
not yet delivered.

Transient failures (the server away, a timeout) are tried again after 10 s, doubling to 5
minutes; a refusal (credentials, no such bucket) after 5 minutes, doubling to 30, so a fixed
Secret is picked up without a retry storm. A changed spec.output (a new generation) or a new
result (a rerun) is delivered afresh. Nothing is baked again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bakeline.delivery.outcome import parse_outcome
from bakeline.handlers.config import OperatorConfig
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.clock import epoch, timestamp
from bakeline.kube.conditions import set_condition
from bakeline.runtime import pods as manifests

CONDITION = "Delivered"
RETRY_FIRST_S, RETRY_MAX_S = 10.0, 300.0
REFUSED_FIRST_S, REFUSED_MAX_S = 300.0, 1800.0
POLL_S = 30.0  # a safety net: the pod's end wakes the job


def needs_delivery(obj: Mapping[str, Any]) -> bool:
    """Whether a finished job still has its package to deliver."""
    status = obj.get("status") or {}
    output = (obj.get("spec") or {}).get("output")
    if status.get("phase") != "Succeeded" or not output:
        return False
    done = status.get("output") or {}
    return not (
        done.get("phase") == "Delivered"
        and done.get("checkpoint") == status.get("currentCheckpoint")
        and done.get("generation") == obj["metadata"].get("generation")
    )


def reconcile_delivery(
    kube: Kube, config: OperatorConfig, obj: dict[str, Any], now: float
) -> float | None:
    """One look at the delivery; seconds until the next (None: delivered)."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    observed = dict(obj.get("status") or {})
    status = dict(observed)
    output = dict(obj["spec"]["output"])
    checkpoint = str(status.get("currentCheckpoint") or "")
    current = dict(status.get("output") or {})
    if current.get("checkpoint") != checkpoint or current.get("generation") != meta.get(
        "generation"
    ):
        # A new result or a changed output: deliver afresh (attempt numbers keep counting,
        # so no pod name is used twice).
        current = {"attempts": int(current.get("attempts") or 0), "phase": "Pending"}
    current.update(uri=output["uri"], checkpoint=checkpoint, generation=meta.get("generation"))
    events: list[tuple[str, str, str]] = []
    wake: float | None = POLL_S
    attempts = int(current.get("attempts") or 0)
    pod_name = manifests.delivery_pod_name(name, attempts)
    if current.get("phase") == "Delivering" and attempts:
        pod = kube.job_pods(namespace, name).get(pod_name)
        if pod is None:
            pod = kube.job_pods(namespace, name, fresh=True).get(pod_name)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is None or phase in ("Succeeded", "Failed"):
            wake = _finished(current, output, pod, now, events)
    elif current.get("phase") in ("Pending", "Retrying", "Refused"):
        retry_at = epoch(current.get("retryAt"))
        if retry_at is not None and retry_at > now:
            wake = retry_at - now
        else:
            wake = _start(kube, config, obj, current, checkpoint, output, events)
    _say(status, current, meta)
    status["output"] = current
    if status_changes(status, observed):
        kube.patch_status("BakingJob", namespace, name, status)
    for kind, reason, message in events:
        kube.post_event(obj, kind, reason, message)
    return None if current.get("phase") == "Delivered" else wake


def _start(
    kube: Kube,
    config: OperatorConfig,
    obj: dict[str, Any],
    current: dict[str, Any],
    checkpoint: str,
    output: Mapping[str, Any],
    events: list[tuple[str, str, str]],
) -> float:
    meta = obj["metadata"]
    record = next(
        (
            r
            for r in kube.job_records(meta["namespace"], meta["name"])
            if (r.get("data") or {}).get("checkpoint") == checkpoint
        ),
        None,
    )
    if record is None:
        current.update(phase="Refused", message=f"the result checkpoint {checkpoint} is gone")
        current["retryAt"] = None
        return REFUSED_MAX_S
    attempt = int(current.get("attempts") or 0) + 1
    pod = manifests.build_delivery_pod(
        obj,
        attempt=attempt,
        checkpoint=checkpoint,
        record=dict(record.get("data") or {}),
        output=output,
        image=config.image,
        service_account=config.service_account,
    )
    kube.create_pod(pod)
    current.update(attempts=attempt, phase="Delivering", retryAt=None)
    current["message"] = f"delivering {checkpoint} to {output['uri']} (attempt {attempt})"
    events.append(("Normal", "Delivering", current["message"]))
    return POLL_S


def _finished(
    current: dict[str, Any],
    output: Mapping[str, Any],
    pod: Mapping[str, Any] | None,
    now: float,
    events: list[tuple[str, str, str]],
) -> float | None:
    terminated = manifests.terminated_state(pod) if pod else {}
    text = str(terminated.get("message") or "")
    if pod is None:
        text = "the delivery pod disappeared before it finished"
    outcome = parse_outcome(text, terminated.get("exitCode"))
    failures = int(current.get("failures") or 0)
    if outcome.delivered:
        current.update(phase="Delivered", digest=outcome.digest, deliveredAt=timestamp(now))
        current.update(failures=0, retryAt=None)
        current["message"] = (
            f"delivered to {outcome.uri} ({outcome.digest}): {outcome.written} files written, "
            f"{outcome.present} already there"
        )
        events.append(("Normal", "Delivered", current["message"]))
        return None
    error = outcome.error
    secret = output.get("credentialsSecret")
    if outcome.refused and secret:
        error += f" (credentials: Secret {secret})"
    first, most = (
        (REFUSED_FIRST_S, REFUSED_MAX_S) if outcome.refused else (RETRY_FIRST_S, RETRY_MAX_S)
    )
    delay = min(most, first * 2.0**failures)
    current.update(
        phase="Refused" if outcome.refused else "Retrying",
        failures=failures + 1,
        retryAt=timestamp(now + delay),
        message=f"{error}; trying again in {delay:.0f}s",
    )
    events.append(
        ("Warning", "DeliveryRefused" if outcome.refused else "DeliveryFailed", current["message"])
    )
    return delay


def _say(status: dict[str, Any], current: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    phase = str(current.get("phase"))
    message = str(current.get("message") or f"delivering to {current.get('uri')}")
    if phase == "Delivered":
        set_condition(status, CONDITION, "True", "Delivered", message, dict(meta))
    else:
        reason = {"Refused": "DeliveryRefused", "Retrying": "DeliveryFailed"}.get(
            phase, "Delivering"
        )
        set_condition(status, CONDITION, "False", reason, message, dict(meta))
