"""Content-addressed cache keys: the same input, agent, version and params give the same key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from bakeline.contract import HOST_DEPENDENT_AGENTS, job_view

# Bump when the key's composition changes, so old cache entries stop matching.
_KEY_SCHEMA = 2

# Agents whose output depends on the machine they ran on (what it supports, how fast it is):
# their keys also name the host, so a result measured on one machine is never reused on another.
HARDWARE_DEPENDENT_AGENTS = HOST_DEPENDENT_AGENTS


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values always give equal text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(
    input_sha256: str | None,
    agent: str,
    agent_version: str,
    params: Mapping[str, Any],
    job: Mapping[str, Any] | None = None,
) -> str:
    """The sha256 naming a stage's output before it runs.

    `input_sha256` is the input checkpoint's artifact digest (the model file's for the first
    stage). `job` holds the job-level settings the agent also reads (target, quality): two jobs
    with the same model but different latency budgets must not share a HardwareAdapter result.
    """
    record = {
        "v": _KEY_SCHEMA,
        "input": input_sha256,
        "agent": agent,
        "agentVersion": agent_version,
        "params": dict(params),
        "job": dict(job or {}),
    }
    return hashlib.sha256(canonical_json(record).encode()).hexdigest()


def job_key(document: Mapping[str, Any], agent: str) -> dict[str, Any]:
    """What a cache key holds of the job: the parts `agent` is handed (contract.job_view),
    without what names the job rather than what it computes (its name, where the driver put
    the model file or the dataset: their bytes are in the key by sha256). Both drivers' keys
    come from here, so the same job baked by either keys the same."""
    view = job_view(document, agent)
    view.pop("name", None)
    if "model" in view:
        view["model"] = {k: v for k, v in view["model"].items() if k != "localPath"}
    dataset = str((view.get("quality") or {}).get("dataset") or "")
    if dataset.startswith("file://") and "#sha256=" in dataset:
        # A local dataset keys by its bytes, not by where this machine keeps it.
        view["quality"] = {**view["quality"], "dataset": "sha256:" + dataset.split("#sha256=")[1]}
    return view
