"""Building the control plane fails with a message that says what to install."""

from __future__ import annotations

from pathlib import Path

import pytest

import controlplane


def test_versions_are_pinned_in_the_go_modules() -> None:
    assert controlplane.TOOLS["kube-apiserver"].version() == "v1.34.4"
    assert controlplane.TOOLS["etcd"].version().startswith("v3.")
    assert controlplane.TOOLS["helm"].version().startswith("v3.")
    flags = controlplane.TOOLS["kubectl"].ldflags()
    assert "k8s.io/component-base/version.gitVersion=v1.34.4" in flags
    assert "k8s.io/client-go/pkg/version.gitMinor=34" in flags


def test_binaries_are_cached_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAKELINE_CACHE_DIR", str(tmp_path))
    path = controlplane.binary_path("etcd")
    assert path.parent == tmp_path / "bin"
    assert path.name.startswith("etcd-" + controlplane.TOOLS["etcd"].version() + "-")
    helm = controlplane.TOOLS["helm"].ldflags()
    assert "pkg/chartutil.k8sVersionMinor=34" in helm  # helm template knows our Kubernetes


def test_missing_go_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAKELINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(controlplane.ControlPlaneError, match="Go is not installed: install Go"):
        controlplane.build_binary("etcd", log=lambda _: None)


def test_failed_build_reports_the_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\necho 'cannot find module providing package' >&2\nexit 1\n")
    fake_go.chmod(0o755)
    monkeypatch.setenv("BAKELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(controlplane.ControlPlaneError) as failed:
        controlplane.build_binary("etcd", log=lambda _: None)
    assert "building etcd failed (exit 1)" in str(failed.value)
    assert "cannot find module providing package" in str(failed.value)
    assert not controlplane.binary_path("etcd").exists()  # nothing half-built is cached
