"""Stage pods that never ran their agent: refused by the API server, or not started for want
of what the installation provides (the stage ServiceAccount).

Neither is the agent's failure nor the job's: the job's StagePodsBlocked condition names the
cause, the operator tries again with backoff (5 s, then as long again as the trouble has
lasted, at most 5 minutes), no retry of the stage is spent and the lane's circuit breaker for
the agent counts nothing. Fixing the cause (installing the chart's stage RBAC, raising a quota)
lets the job go on by itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from bakeline.kube.clock import epoch, timestamp
from bakeline.kube.conditions import set_condition

CONDITION = "StagePodsBlocked"
# The engine events that say a stage pod did not run its agent (its cause is their message).
EVENT_KINDS = ("PodNotCreated", "PodNotStarted")
RETRY_AT = "stagePodsRetryAt"
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
# Refusals that the cluster's configuration decides and may change without the job changing:
# Forbidden (RBAC, a missing ServiceAccount, an exceeded quota), Invalid and Bad Request (an
# admission policy or webhook). Anything else (the API server away, a conflict) is raised.
_REFUSED = frozenset({400, 403, 422})
# A node that cannot mount the stage ServiceAccount's token: the installation's gap, whereas a
# missing model ConfigMap is the job's own input and fails its stage as before.
_NO_SERVICE_ACCOUNT = re.compile(r'serviceaccounts? "[^"]*" not found', re.IGNORECASE)
_NOT_STARTED_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


def refusal(exc: ApiException, pod_name: str) -> str | None:
    """Why the API server refused to create `pod_name`, in its words; None when the error is
    not a refusal of this pod and should be raised."""
    if exc.status not in _REFUSED:
        return None
    return f"pod {pod_name} refused: {api_message(exc)}"


def not_started(pod: Mapping[str, Any]) -> str | None:
    """Why a node could not start a stage pod's containers when the cause is the
    installation's (the stage ServiceAccount is missing); None otherwise."""
    status = pod.get("status") or {}
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    states = [
        state
        for container in containers
        for kind in ("waiting", "terminated")
        if (state := (container.get("state") or {}).get(kind))
    ]
    for state in [status, *states]:
        reason, message = str(state.get("reason") or ""), str(state.get("message") or "")
        if reason in _NOT_STARTED_REASONS and _NO_SERVICE_ACCOUNT.search(message):
            name = pod.get("metadata", {}).get("name", "")
            return f"pod {name} could not start ({reason}): {message}"
    return None


def retry_delay(blocked_since: float | None, now: float) -> float:
    """Seconds until the next try: as long again as the pods have been blocked, within
    [RETRY_FIRST_S, RETRY_MAX_S]."""
    elapsed = now - blocked_since if blocked_since is not None else 0.0
    return min(RETRY_MAX_S, max(RETRY_FIRST_S, elapsed))


def block(status: dict[str, Any], cause: str, now: float, meta: dict[str, Any]) -> float:
    """Say in `status` why no stage pod runs and when the next try is; returns its delay."""
    held = _condition(status)
    since = epoch(held.get("lastTransitionTime")) if held.get("status") == "True" else None
    delay = retry_delay(since, now)
    message = f"{cause}; trying again in {delay:.0f}s (not counted against the agent)"
    set_condition(status, CONDITION, "True", "PodNotStarted", message, meta)
    status[RETRY_AT] = timestamp(now + delay)
    return delay


def unblock(status: dict[str, Any], meta: dict[str, Any]) -> None:
    """A stage pod was created and started: the trouble is over."""
    if status.get(RETRY_AT):
        status[RETRY_AT] = None  # None, not absent: the status is merge-patched
    if _condition(status).get("status") == "True":
        set_condition(status, CONDITION, "False", "PodsStarted", "stage pods start again", meta)


def wait_seconds(status: Mapping[str, Any], now: float) -> float | None:
    """Seconds to wait before creating another stage pod; None: no wait."""
    at = epoch(status.get(RETRY_AT))
    return at - now if at is not None and at > now else None


def _condition(status: Mapping[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == CONDITION), {})


def api_message(exc: ApiException) -> str:
    """The API server's own words for an error."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
