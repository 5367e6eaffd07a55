"""ConfigMap lanes split a stage pod: the agent's container (no token) hands its outcome to the
store's container over a shared directory. What the store container concludes, and when."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bakeline.checkpoints.manifest import FileEntry, Manifest, write_manifest
from bakeline.stagepod.store import _refuse_links, run_store, wait_for_agent
from bakeline.stagepod.wrapper import (
    HANDOFF_LOCK,
    HANDOFF_OUTCOME,
    HANDOFF_STARTED,
    StageStoreError,
)

WRAPPER = "import sys; from bakeline.cli.main import main; sys.exit(main(sys.argv[1:]))"
# An agent stand-in: writes its termination message, waits for `release` if given, exits.
AGENT = """\
import os, sys, time
from pathlib import Path
Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"]).write_text(sys.argv[1])
release = Path(sys.argv[3]) if len(sys.argv) > 3 else None
while release is not None and not release.exists():
    time.sleep(0.02)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def pod(tmp_path: Path) -> Path:
    for folder in ("handoff", "agent", "store"):
        (tmp_path / folder).mkdir()
    (tmp_path / "agent.py").write_text(AGENT)
    return tmp_path


def _agent_container(
    pod: Path, message: str, code: int, release: Path | None = None
) -> subprocess.Popen[bytes]:
    """`bakeline stage -- AGENT` as the agent's container runs it: no store settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BAKELINE_")} | {
        "BAKELINE_HANDOFF": str(pod / "handoff"),
        "BAKELINE_TERMINATION_MESSAGE_PATH": str(pod / "agent" / "termination-log"),
    }
    agent = [sys.executable, str(pod / "agent.py"), message, str(code)]
    agent += [str(release)] if release else []
    # Its own session: the container's processes end together, as a container's do.
    command = [sys.executable, "-c", WRAPPER, "stage", "--", *agent]
    return subprocess.Popen(command, env=env, start_new_session=True)


@pytest.mark.parametrize("code", [0, 2, 3, 1])
def test_the_store_gets_the_agents_exit_code_and_message(pod: Path, code: int) -> None:
    container = _agent_container(pod, f'{{"status": "x{code}"}}', code)
    assert container.wait(timeout=60) == code  # the agent's container exits as its agent did
    assert wait_for_agent(pod / "handoff", start_timeout=5) == (code, f'{{"status": "x{code}"}}')
    # The agent's own termination message stays in its container's file too.
    assert (pod / "agent" / "termination-log").read_text() == f'{{"status": "x{code}"}}'


def test_the_store_waits_until_the_agents_container_has_ended(pod: Path) -> None:
    release = pod / "release"
    container = _agent_container(pod, "{}", 0, release)
    seen: list[tuple[int | None, str]] = []
    waiter = threading.Thread(target=lambda: seen.append(wait_for_agent(pod / "handoff", 30)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and not seen, "the store went on while the agent ran"
    release.touch()
    waiter.join(timeout=30)
    assert seen == [(0, "{}")]
    assert container.wait(timeout=10) == 0


def test_an_agent_container_killed_outright_leaves_no_outcome_and_the_store_stops_waiting(
    pod: Path,
) -> None:
    container = _agent_container(pod, "{}", 0, pod / "never")
    deadline = time.monotonic() + 30
    while not (pod / "handoff" / HANDOFF_STARTED).exists():
        assert time.monotonic() < deadline, "the wrapper never took the lock"
        time.sleep(0.02)
    os.killpg(container.pid, signal.SIGKILL)  # as the kernel ends a container: all of it
    container.wait(timeout=10)
    started = time.monotonic()
    assert wait_for_agent(pod / "handoff", 5) == (None, "")
    assert time.monotonic() - started < 5
    assert not (pod / "handoff" / HANDOFF_OUTCOME).exists()


def test_an_agent_container_that_never_starts_fails_the_store_as_transient(pod: Path) -> None:
    with pytest.raises(StageStoreError, match="did not start") as caught:
        wait_for_agent(pod / "handoff", start_timeout=0.3)
    assert caught.value.code == 1


def test_a_forged_outcome_is_data_not_an_exit_code(pod: Path) -> None:
    handoff = pod / "handoff"
    (handoff / HANDOFF_LOCK).touch()
    (handoff / HANDOFF_STARTED).touch()
    for forged in ('{"exitCode": "0"}', "[0]", "not json", '{"exitCode": true}'):
        (handoff / HANDOFF_OUTCOME).write_text(forged)
        assert wait_for_agent(handoff, 1) == (None, "")


@pytest.mark.parametrize(("code", "expected"), [(3, 3), (2, 2), (137, 137), (None, 1)])
def test_store_container_stores_nothing_for_a_failed_agent_and_exits_as_it_did(
    pod: Path, monkeypatch: pytest.MonkeyPatch, code: int | None, expected: int
) -> None:
    handoff = pod / "handoff"
    (handoff / HANDOFF_LOCK).touch()
    (handoff / HANDOFF_STARTED).touch()
    if code is not None:
        (handoff / HANDOFF_OUTCOME).write_text(json.dumps({"exitCode": code, "message": "why"}))
    monkeypatch.setenv("BAKELINE_HANDOFF", str(handoff))
    for name in ("BAKELINE_STORE_PREFIX", "BAKELINE_STORE_OWNER"):
        monkeypatch.delenv(name, raising=False)  # reaching the store would fail: KeyError
    termination = pod / "store" / "termination-log"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert run_store(termination) == expected
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code is None:
        assert "without an outcome" in json.loads(termination.read_text())["message"]
    else:
        assert termination.read_text() == "why"


def test_the_store_refuses_links_the_agent_left_in_its_output(pod: Path) -> None:
    output = pod / "agent" / "quantize-1"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"weights")
    _refuse_links(output)  # plain files pass
    (output / "token").symlink_to("/var/run/secrets/kubernetes.io/serviceaccount/token")
    with pytest.raises(StageStoreError, match="not a plain file") as caught:
        _refuse_links(output)
    assert caught.value.code == 1


@pytest.mark.parametrize("listed", ["/var/run/secrets/kubernetes.io/serviceaccount/token", "../x"])
def test_the_store_refuses_a_manifest_path_outside_the_checkpoint(pod: Path, listed: str) -> None:
    output = pod / "agent" / "quantize-1"
    output.mkdir()
    (pod / "agent" / "x").write_bytes(b"not the checkpoint's")
    entry = FileEntry(path=listed, sha256="0" * 64, size_bytes=1, role="model")
    write_manifest(output, Manifest(model_name="m", artifact=listed, format="onnx", files=[entry]))
    with pytest.raises(StageStoreError, match="outside its checkpoint"):
        _refuse_links(output)
