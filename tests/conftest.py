"""Session fixtures: a real kube-apiserver + etcd (hack/controlplane.py), fresh namespaces.

The control plane starts only when a test asks for `cluster`; a build or start failure fails
those tests with the reason and the log's tail, never skips them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import ControlPlane, running
from support.node_harness import NodeHarness
from support.storage_servers import oci_registry, s3_server  # noqa: F401 (fixtures)

# real_cluster and real_node: the real kubelet's fixtures (tests/e2e/test_real_node.py).
pytest_plugins = ["support.real_node"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir = tmp_path_factory.mktemp("controlplane")
    with running(workdir, log=lambda message: print(message, flush=True)) as plane:
        yield plane


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test. There is no namespace controller to finalize deletions, so
    namespaces are left in place and go away with the session's control plane."""
    cluster.assert_alive()
    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.assert_alive()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def node(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHarness]:
    """One harness node for the session: it runs every pod the tests (or the operator) create."""
    with NodeHarness(cluster.api_client(), tmp_path_factory.mktemp("node")) as harness:
        yield harness
