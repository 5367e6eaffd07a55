"""The per-agent circuit breaker of each lane, kept durable in a ConfigMap.

The decisions are the engine's (`record_outcome`, `trial_started`, `blocked_agents`); this
module reads and writes their state. Each entry also lists the pods already counted, so a pass
repeated after a crash or a lost status write never counts one failure twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bakeline.api.lane import CircuitBreaker
from bakeline.engine import lanes as admission
from bakeline.engine.retry import AttemptOutcome
from bakeline.kube.client import MAX_DATA_KEY, Kube
from bakeline.kube.clock import epoch, timestamp

_COUNTED_MAX = 32  # pods remembered per entry; more than any threshold a lane may set


@dataclass(frozen=True)
class StageOutcome:
    """One finished stage attempt, as the circuit breaker counts it."""

    agent: str
    outcome: AttemptOutcome
    pod: str
    message: str = ""


def circuit_key(lane: str, agent: str) -> str:
    """The agent's entry for the lane: `lane.agent`, or the lane's digest in place of a name
    too long for a ConfigMap data key (a 253-character lane would make every write fail)."""
    key = f"{lane}.{agent}"
    return key if len(key) <= MAX_DATA_KEY else f"{_lane_digest(lane)}.{agent}"


def _lane_digest(lane: str) -> str:
    return "lane-" + hashlib.sha256(lane.encode()).hexdigest()[:32]


def lane_circuits(
    entries: Mapping[str, Mapping[str, Any]], lane: str
) -> dict[str, admission.Circuit]:
    """The lane's circuits by agent."""
    return {agent: circuit for agent, (circuit, _) in _lane_entries(entries, lane).items()}


def _lane_entries(entries: Mapping[str, Mapping[str, Any]], lane: str) -> dict[str, Any]:
    """The lane's entries by agent: {agent: (Circuit, counted pods)}."""
    found: dict[str, Any] = {}
    owners = {lane, _lane_digest(lane)}
    for key, entry in entries.items():
        owner, _, agent = key.rpartition(".")
        if owner in owners:
            circuit = admission.Circuit(
                int(entry.get("consecutiveFailures") or 0),
                epoch(entry.get("openedAt")),
                str(entry.get("lastFailure") or ""),
            )
            found[agent] = (circuit, list(entry.get("counted") or []))
    return found


def _entry(circuit: admission.Circuit, counted: list[str]) -> dict[str, Any] | None:
    if circuit.consecutive_failures == 0 and circuit.opened_at is None:
        return None  # closed and clean: nothing to keep
    return {
        "consecutiveFailures": circuit.consecutive_failures,
        "openedAt": timestamp(circuit.opened_at),
        "lastFailure": circuit.last_failure[:512],
        "counted": counted[-_COUNTED_MAX:],
    }


def count_outcomes(
    kube: Kube,
    namespace: str,
    lane: str,
    policy: CircuitBreaker,
    outcomes: Sequence[StageOutcome],
    now: float,
) -> dict[str, admission.Circuit]:
    """Count this pass's finished attempts into the lane's circuits and store what changed;
    returns the lane's circuits by agent."""
    current = _lane_entries(kube.circuits(namespace), lane)
    changes: dict[str, dict[str, Any] | None] = {}
    for seen in outcomes:
        circuit, counted = current.get(seen.agent, (admission.Circuit(), []))
        if seen.pod in counted:
            continue
        if seen.outcome is AttemptOutcome.SUCCEEDED and circuit == admission.Circuit():
            continue  # the common case: nothing to close, nothing to write
        updated = admission.record_outcome(
            {seen.agent: circuit}, seen.agent, seen.outcome, now, policy, seen.message
        )[seen.agent]
        if updated == circuit:
            continue  # a failed gate: about the model, not the agent
        counted = [] if updated == admission.Circuit() else [*counted, seen.pod]
        current[seen.agent] = (updated, counted)
        changes[circuit_key(lane, seen.agent)] = _entry(updated, counted)
    kube.save_circuits(namespace, changes)
    return {agent: circuit for agent, (circuit, _) in current.items()}


def trial_started(kube: Kube, namespace: str, lane: str, agent: str, now: float) -> None:
    """A half-open agent's trial run starts: keep others out for another cooldown meanwhile."""
    current = _lane_entries(kube.circuits(namespace), lane)
    if agent not in current:
        return
    circuit, counted = current[agent]
    if circuit.opened_at is None:
        return
    updated = admission.trial_started({agent: circuit}, agent, now)[agent]
    kube.save_circuits(namespace, {circuit_key(lane, agent): _entry(updated, counted)})


def open_circuits(
    entries: Mapping[str, Mapping[str, Any]], lane: str, policy: CircuitBreaker, now: float
) -> list[dict[str, Any]]:
    """The lane's `status.openCircuits`: agents quarantined now, or half-open awaiting a trial."""
    listed = []
    for agent, circuit in sorted(lane_circuits(entries, lane).items()):
        if circuit.opened_at is None:
            continue
        listed.append(
            {
                "agent": agent,
                "consecutiveFailures": circuit.consecutive_failures,
                "openedAt": timestamp(circuit.opened_at),
                "retryAfter": timestamp(circuit.opened_at + policy.cooldown_seconds),
                "lastFailure": circuit.last_failure[:1024] or None,
            }
        )
    return listed
