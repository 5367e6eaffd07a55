"""Reliability fixtures: the end-to-end ones (CRDs, the operator as a process, the scripted
agent), shared rather than copied, plus a few probes the reliability tests all use."""

from __future__ import annotations

from e2e.conftest import OperatorProcess, crds, operator, scripted_agent

__all__ = ["OperatorProcess", "crds", "operator", "scripted_agent"]
