"""The operator's settings, as `bakeline operator` reads them from its command line."""

from __future__ import annotations

from dataclasses import dataclass

from bakeline import __version__


@dataclass(frozen=True)
class OperatorConfig:
    image: str = f"bakeline:{__version__}"  # of stage pods
    agent_version: str = __version__
    service_account: str | None = None  # for stage pods; None: the namespace default
    slo_interval_s: float = 30.0  # how often SLOPolicies are evaluated
    # Running jobs of all lanes of a namespace together (None: each lane's own limit only);
    # when short, lanes with a higher spec.priority are served first.
    max_running_jobs: int | None = None
    # A Succeeded Volume-lane job's package up to this size is copied into ConfigMaps, so the
    # view role can fetch it (handlers/job_export.py); 0: never. Each copy lives in etcd.
    export_max_bytes: int = 64 * 1024 * 1024
