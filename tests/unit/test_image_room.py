"""hack/image makes room before a build: the image storage lives on the machine's disk between
runs (CI's too), and each dependency change leaves a venv of several GB that no build uses
again. Below the bound, every image but the bootstrapped bases goes, children first."""

from __future__ import annotations

import os
from pathlib import Path

import image
import pytest

FAKE_BUILDAH = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1" = images ]; then
  printf '%s\\n' 'c3   <none>' 'b2   localhost/bakeline' 'a1   localhost/bakeline-base'
fi
"""


@pytest.fixture
def buildah(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    tool = tmp_path / "bin" / "buildah"
    tool.parent.mkdir()
    tool.write_text(FAKE_BUILDAH.format(log=log))
    tool.chmod(0o755)
    monkeypatch.setattr(image, "config_dir", lambda: tmp_path)
    log.touch()
    return log


def _env(buildah: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{buildah.parent / 'bin'}:{os.environ['PATH']}"}


def test_below_the_bound_every_image_but_the_bases_is_removed_children_first(
    buildah: Path,
) -> None:
    image.make_room(_env(buildah), min_free=2**62)
    calls = buildah.read_text().splitlines()
    assert calls[0] == "rm --all"
    assert [c for c in calls if c.startswith("rmi")] == ["rmi --force c3", "rmi --force b2"]


def test_with_room_to_spare_nothing_is_removed(buildah: Path) -> None:
    image.make_room(_env(buildah), min_free=0)
    assert buildah.read_text() == ""
