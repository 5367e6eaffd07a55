"""The operator's core watches are filtered by the API server, not only by kopf in memory:
without the selectors every ConfigMap of a namespace (1 MiB checkpoint chunks, the SLO ledger)
and every pod streamed through the operator."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource
from kubernetes import client

from bakeline.handlers.app import RUNTIME, configure
from bakeline.handlers.config import OperatorConfig


def _selectors(settings: kopf.OperatorSettings, group: str, version: str, plural: str) -> list[str]:
    resource = Resource(group=group, version=version, plural=plural, namespaced=True)
    return list(settings.watching.label_selectors.collect(resource))


def test_configmap_and_pod_watches_carry_label_selectors() -> None:
    settings = kopf.OperatorSettings()
    kept = RUNTIME.kube, RUNTIME.config
    try:
        configure(settings, OperatorConfig(), client.ApiClient())
    finally:
        RUNTIME.kube, RUNTIME.config = kept
    assert _selectors(settings, "", "v1", "configmaps") == ["bakeline.io/component=checkpoint"]
    assert _selectors(settings, "", "v1", "pods") == ["bakeline.io/job"]
    # Bakeline's own kinds are all watched: every one of them is ours.
    assert _selectors(settings, "bakeline.io", "v1alpha1", "bakingjobs") == []
