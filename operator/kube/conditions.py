"""Status conditions per the Kubernetes API conventions (metav1.Condition, keyed by type)."""

from __future__ import annotations

from typing import Any

from bakeline.kube.clock import now_timestamp


def set_condition(
    status: dict[str, Any],
    kind: str,
    value: str,
    reason: str,
    message: str,
    meta: dict[str, Any],
) -> None:
    """Set one condition in `status["conditions"]`, in place.

    lastTransitionTime moves only when `status` flips, so a condition tells how long it has
    held; observedGeneration records which spec it was computed from.
    """
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    now = now_timestamp()
    for index, condition in enumerate(conditions):
        if condition.get("type") == kind:
            transition = (
                condition.get("lastTransitionTime") if condition.get("status") == value else now
            )
            conditions[index] = {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message[:32768],
                "lastTransitionTime": transition or now,
                "observedGeneration": meta.get("generation"),
            }
            break
    else:
        conditions.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message[:32768],
                "lastTransitionTime": now,
                "observedGeneration": meta.get("generation"),
            }
        )
    status["conditions"] = conditions


def condition_status(status: dict[str, Any], kind: str) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return None
