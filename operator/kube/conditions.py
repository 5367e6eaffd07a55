"""Status conditions per the Kubernetes API conventions (metav1.Condition, keyed by type)."""

from __future__ import annotations

from collections.abc import Mapping
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


def find_condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """A copy of the condition of type `kind` in `status`; None when it has none."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def condition_event(
    before: Mapping[str, Any], after: Mapping[str, Any], kind: str
) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) for a change of condition `kind` from status `before`
    to status `after`: a Warning when it turns False, or stays False but says something new (another
    reason or message, such as other missing names); a Normal one when it turns True from False.
    None otherwise, so a pass that leaves the condition as it was posts nothing, however often
    it runs."""
    was, now = find_condition(before, kind), find_condition(after, kind)
    if now is None:
        return None
    reason, message = str(now.get("reason")), str(now.get("message") or "")
    if now.get("status") == "False":
        if was is not None and [was.get(k) for k in ("status", "reason", "message")] == [
            "False",
            reason,
            message,
        ]:
            return None
        return "Warning", reason, message
    if now.get("status") == "True" and was is not None and was.get("status") == "False":
        return "Normal", reason, message
    return None
