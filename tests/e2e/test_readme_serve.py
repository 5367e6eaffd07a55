"""The README's "Serve it" steps, run word for word: the main job baked with its package
delivered to a folder (`--output`), that package served by its own serve.py over KServe's v2
protocol, and one request answered with a sentence embedding. Run in a folder of its own that
sees the repository's examples, so nothing lands in the checkout; the server is stopped
afterwards."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]  # a MiniLM bake: minutes


def serve_steps(readme: Path) -> str:
    """The bash block that follows "**Serve it.**"."""
    text = readme.read_text()
    start = text.index("**Serve it.**")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "the README's Serve it paragraph has no bash block"
    return block.group(1)


def test_the_readme_serve_steps_answer_a_v2_request(repo_root: Path, tmp_path: Path) -> None:
    steps = serve_steps(repo_root / "README.md")
    assert "--output" in steps and "serve.py" in steps and "curl" in steps
    (tmp_path / "examples").symlink_to(repo_root / "examples")
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + steps
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    package = tmp_path / "models" / "minilm-l6"
    manifest = json.loads((package / "manifest.json").read_text())
    assert (package / manifest["artifact"]).is_file() and (package / "serve.py").is_file()
    # The last line of stdout is the server's answer to curl.
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["model_name"] == "minilm-l6"
    shapes = {o["name"]: o["shape"] for o in answer["outputs"]}
    assert [1, 384] in shapes.values(), shapes  # one sentence, one 384-float embedding
