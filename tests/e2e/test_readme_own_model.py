"""The README's "Bake your own model" steps, run word for word: export a model and its data,
write the job with the file's sha256, bake it. The bake is judged on the user's data, and the
package runs with its own serve.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def own_model_steps(readme: Path) -> str:
    text = readme.read_text()
    start = text.index("## Bake your own model")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, "the README's own-model section has no bash block"
    return block.group(1)


def test_the_readme_bakes_a_users_own_model_on_the_users_data(
    repo_root: Path, tmp_path: Path
) -> None:
    # The steps run beside a copy of examples/, as they would in a clone.
    shutil.copytree(repo_root / "examples" / "own-model", tmp_path / "examples" / "own-model")
    steps = own_model_steps(repo_root / "README.md")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", steps],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "mine" / "bake" / "report.json").read_text())
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9"
    result = report["result"]
    assert result["qualityVerified"] is True and result["evaluationData"] == "dataset"
    assert result["quality"]["metric"] == "accuracy" and result["quality"]["value"] >= 0.88
    assert result["evaluationSamples"] == 398 and result["calibrationSamples"] == 199
    package = tmp_path / "mine" / "bake" / "result"
    assert (package / "serve.py").is_file() and "from serve import Model" in (
        package / "README.md"
    ).read_text()
