"""The README's "watch it work on this machine" steps, run word for word on a fresh control
plane (its own HOME, so `~/.cache/bakeline/controlplane` is new), end with the digits job
Succeeded.

Only what a reader does by hand is automated around the block: `kubectl get bj -w` runs until
the job is done instead of until Ctrl-C, and everything started is stopped afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from controlplane import binary_path, cache_dir
from support.node_harness import container_path

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WATCH_TIMEOUT_S = 900


def walkthrough(readme: Path) -> list[str]:
    """The README's local walkthrough, one command a line (continuations joined)."""
    text = readme.read_text()
    start = text.index("To watch it work on this machine")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "the README's walkthrough has no bash block"
    return block.group(1).replace("\\\n", " ").strip().splitlines()


def bounded_watch(line: str) -> str:
    """`kubectl get ... -w` as written (less its comment), stopped once the job is Succeeded or
    Failed."""
    line = line.split(" #", 1)[0].strip()
    return (
        f'{{ {line} ; }} > "$WATCH_LOG" 2>&1 & watcher=$!\n'
        f"for _ in $(seq {WATCH_TIMEOUT_S}); do "
        """grep -qE ' (Succeeded|Failed) ' "$WATCH_LOG" && break; sleep 1; done\n"""
        'kill $watcher; cat "$WATCH_LOG"\n'
    )


def test_the_readme_walkthrough_ends_succeeded(repo_root: Path, tmp_path: Path) -> None:
    lines = walkthrough(repo_root / "README.md")
    assert any("hack/node &" in line for line in lines) and any(" -w" in line for line in lines)
    script = [
        "set -euo pipefail",
        "trap 'kill $(jobs -p) 2>/dev/null; hack/controlplane down' EXIT",
    ]
    script += [bounded_watch(line) if " -w" in line else line for line in lines]
    script.append('echo "PHASE=$(kubectl get bj -n demo digits-cnn -o jsonpath={.status.phase})"')
    home = tmp_path / "home"
    home.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "kubectl").symlink_to(binary_path("kubectl"))  # "any recent kubectl will do"
    env = {
        **os.environ,
        "HOME": str(home),
        # A fresh control plane of its own; the tools already built are reused.
        "BAKELINE_CACHE_DIR": str(cache_dir()),
        "BAKELINE_CONTROLPLANE_DIR": str(home / ".cache" / "bakeline" / "controlplane"),
        "PATH": container_path(tools),
        "WATCH_LOG": str(tmp_path / "watch.log"),  # outside the checkout
    }
    env.pop("KUBECONFIG", None)
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=WATCH_TIMEOUT_S + 300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    assert "PHASE=Succeeded" in done.stdout, output[-8000:]
    assert re.search(r"digits-cnn\s+Succeeded\s+express\s+9/9", done.stdout), output[-8000:]
    assert "stage package:" in done.stdout  # kubectl describe shows the stages' Events
