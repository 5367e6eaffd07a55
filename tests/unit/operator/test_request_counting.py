"""The operator's request counter labels by method and resource, never by object name."""

from __future__ import annotations

import pytest

from bakeline.kube.client import request_resource

BASE = "https://127.0.0.1:6443"
GROUP = f"{BASE}/apis/bakeline.io/v1alpha1"


@pytest.mark.parametrize(
    ("url", "resource"),
    [
        (f"{GROUP}/namespaces/ns/bakingjobs/job-1/status?x=1", "bakingjobs/status"),
        (f"{GROUP}/namespaces/ns/lanes/standard", "lanes"),
        (f"{BASE}/api/v1/namespaces/ns/pods?labelSelector=bakeline.io%2Fjob%3Dj", "pods"),
        (f"{BASE}/api/v1/namespaces/ns/configmaps/bakeline-slo-ledger", "configmaps"),
        (f"{BASE}/api/v1/namespaces/ns/pods/p-1/eviction", "pods/eviction"),
        (f"{GROUP}/bakingjobs", "bakingjobs"),
        (f"{BASE}/api/v1/nodes/node-1", "nodes"),
    ],
)  # fmt: skip
def test_request_resource(url: str, resource: str) -> None:
    assert request_resource(url) == resource
