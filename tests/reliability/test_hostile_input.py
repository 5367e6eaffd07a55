"""Hostile input on the real API server while the operator runs.

Every hostile resource is either refused at admission (schema or CEL, with words a person can
act on) or accepted and then failed, or held, with a condition that names the problem. Meanwhile
the operator does not crash, does not hot-loop (its own request counter and its log over a quiet
window), and keeps serving a normal job to Succeeded.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from e2e.conftest import OperatorProcess
from reliability import hostile
from reliability.probes import api_requests, condition_of, scrape, total, wait_terminal
from support.kube import apply, get, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LANE = hostile.lane({"maxConcurrentJobs": 4}, name="standard")
QUIET_WINDOW_S = 12.0
# Waiting jobs are looked at every few seconds and failed ones never again; a pass served from
# the watch caches costs no request at all. Far below one request per waiting object per second.
MAX_REQUESTS_PER_S = 4.0


def _create(cluster: ControlPlane, namespace: str, body: dict[str, Any] | str) -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return cluster.kubectl("create", "-n", namespace, "-f", "-", input=text, check=False)


def test_hostile_resources_are_refused_at_admission(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, hostile.job("steady-before")], namespace)
    assert len(hostile.ADMISSION) >= 40
    wrong: list[str] = []
    for case_id, body, words in hostile.ADMISSION:
        done = _create(cluster, namespace, body)
        message = " ".join(done.stderr.split())
        if done.returncode == 0:
            wrong.append(f"{case_id}: ACCEPTED ({done.stdout.strip()})")
        elif words not in message:
            wrong.append(f"{case_id}: refused without {words!r}: {message[:400]}")
        print(f"{case_id}: {message[:300]}")
    assert wrong == [], "\n".join(wrong)
    # Nothing was left behind by a refusal.
    for kind in ("bakingjobs", "workflows", "lanes", "slopolicies"):
        names = cluster.kubectl("get", kind, "-n", namespace, "-o", "name").stdout.split()
        assert all("hostile" not in n and "big" not in n for n in names), names
    assert wait_terminal(cluster, "steady-before", namespace)["status"]["phase"] == "Succeeded"
    assert operator.process is not None and operator.process.poll() is None, operator.log()
