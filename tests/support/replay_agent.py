"""A stand-in for `bakeline-agent` that replays what the real agents did in a `bakeline run`.

Each stage copies the checkpoint `bakeline run` kept for it and leaves, byte for byte, the
termination message the real agent printed (the last line of that attempt's log that the
contract's parser reads as this stage's). So the operator sees exactly the stage outputs
`bakeline run` saw, and the two drivers' results can be compared.

Reads $REPLAY_WORKDIR, the `bakeline run` work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bakeline.contract import EXIT_INVALID_INPUT, EXIT_OK, parse_termination


def recorded_message(workdir: Path, stage: str) -> str | None:
    """The termination message the real agent left for `stage`'s latest attempt."""
    logs = sorted(
        (workdir / "logs").glob(f"{stage}-*.log"),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    for line in reversed(logs[-1].read_text().splitlines() if logs else []):
        message = parse_termination(line)
        if message is not None and message.stage == stage and message.artifact_sha256:
            return line
    return None


def main() -> int:
    stage = os.environ["BAKELINE_STAGE"]
    workdir = Path(os.environ["REPLAY_WORKDIR"])
    state = json.loads((workdir / "run.json").read_text())["state"]
    checkpoint = (state["stages"].get(stage) or {}).get("checkpoint")
    message = recorded_message(workdir, stage)
    termination = Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"])
    if checkpoint is None or message is None:
        termination.write_text(f'{{"status": "invalid-input", "message": "no {stage} to replay"}}')
        return EXIT_INVALID_INPUT
    output = Path(os.environ["BAKELINE_OUTPUT"])
    shutil.copytree(workdir / "checkpoints" / checkpoint["id"], output, dirs_exist_ok=True)
    termination.write_text(message)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
