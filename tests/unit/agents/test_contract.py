"""The shared contract: params validation, agent names, the 4 KiB termination message."""

from __future__ import annotations

import json
import time

import pytest

from bakeline.agents.contract import (
    EXIT_GATE_FAILED,
    EXIT_INVALID_INPUT,
    GateFailed,
    InvalidInput,
    Result,
    parse_job,
    parse_params,
)
from bakeline.agents.pipeline import Chain
from bakeline.agents.stages import REGISTRY, resolve
from bakeline.agents.stages.model_optimizer import ModelParams
from bakeline.agents.timing import Method, compare, interleaved, percentile, rotating
from bakeline.contract import AGENT_TRAITS

NINE = {
    "BakingCoordinator",
    "GraphOptimizer",
    "ModelOptimizer",
    "MemoryOptimizer",
    "HardwareAdapter",
    "InferenceAccelerator",
    "QualityValidator",
    "PerformanceProfiler",
    "DeploymentPreparer",
}


def test_all_nine_agents_are_registered_under_camel_and_kebab_names() -> None:
    assert set(REGISTRY) == NINE
    assert resolve("graph-optimizer").name == "GraphOptimizer"
    assert resolve("BakingCoordinator").name == "BakingCoordinator"
    with pytest.raises(InvalidInput, match="unknown agent"):
        resolve("Optimus")


def test_exit_codes_are_the_contracts() -> None:
    assert InvalidInput("x").exit_code == EXIT_INVALID_INPUT == 2
    assert GateFailed("x").exit_code == EXIT_GATE_FAILED == 3


@pytest.mark.parametrize(
    "params",
    [
        {"scheme": "int8-per-channel"},
        {"scheme": "int8-per-channel", "keepFloat": "auto"},
        {"scheme": "none"},
        {"scheme": "int8-per-tensor", "keepFloat": ["node_a"]},
    ],
)
def test_model_optimizer_accepts_the_fallback_ladder(params: dict[str, object]) -> None:
    parsed = parse_params(ModelParams, json.dumps(params))
    assert isinstance(parsed, ModelParams)
    assert parsed.scheme == params["scheme"]


@pytest.mark.parametrize(
    "text", ['{"scheme": "int3"}', '{"bogus": 1}', "[1, 2]", "{not json", '{"maxFloatLayers": -1}']
)
def test_invalid_params_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_params(ModelParams, text)


def test_job_parsing_reads_camel_case_and_rejects_garbage() -> None:
    job = parse_job(
        json.dumps(
            {
                "name": "j",
                "model": {"source": {"builtin": "digits-cnn"}},
                "target": {"batchSizes": [1, 32], "latencyBudgetMs": 5},
                "quality": {"metric": "accuracy", "threshold": 0.9},
            }
        )
    )
    assert job.model is not None and job.model.builtin == "digits-cnn"
    assert job.target.batch_sizes == [1, 32] and job.target.latency_budget_ms == 5
    assert job.quality.metric == "accuracy"
    with pytest.raises(InvalidInput):
        parse_job('{"quality": {"metric": "vibes"}}')


def test_termination_message_fits_4kib_and_keeps_headline_metrics() -> None:
    metrics = {f"metric{i:04d}": float(i) for i in range(2000)}
    result = Result(
        "QualityValidator",
        "quality",
        "succeeded",
        "m" * 10_000,
        metrics,
        "a" * 64,
        "onnx",
        123,
        1.5,
    )
    text = result.to_text()
    assert len(text.encode()) <= 4096
    body = json.loads(text)
    assert body["status"] == "succeeded" and body["artifactSha256"] == "a" * 64
    assert "metric0000" in body["metrics"]  # truncated from the end, headlines kept
    assert "metric1999" not in body["metrics"]


def test_nan_metrics_become_null_json() -> None:
    body = json.loads(Result("A", "s", "error", "", {"x": float("nan")}).to_text())
    assert body["metrics"]["x"] is None


def test_percentiles_and_interleaving() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    calls: list[tuple[str, int]] = []
    stats = interleaved(
        {"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
        runs=4,
        block=3,
        warmup=1,
    )
    assert len(stats["a"].samples_ms) == 4 and len(stats["b"].samples_ms) == 4
    # interleaved in blocks: a, b alternate per round, and both see the same round index
    rounds = [c for c in calls[2:]]
    assert rounds[:3] == [("a", 0)] * 3 and rounds[3:6] == [("b", 0)] * 3


def test_rotating_gives_every_candidate_the_same_input_per_round() -> None:
    seen: list[str] = []
    call = rotating(seen.append, ["x", "y", "z"])
    for index in range(5):
        call(index)
    assert seen == ["x", "y", "z", "x", "y"]
    with pytest.raises(ValueError):
        rotating(seen.append, [])


def test_compare_keeps_the_window_where_the_baseline_ran_fastest() -> None:
    """One method for agents and benchmarks: the baseline's slow windows (a busy machine) are
    dropped, and the speedup is read in the kept window only."""
    method = Method(block=2, settle=1, windows=3, warmup=1)
    per_window = method.warmup + 4 * method.block  # 4 runs, one timed call per block
    # The baseline's sleep in each window: window 1 is quiet. Apart by several milliseconds: a
    # loaded machine stretches short sleeps by that much (1 ms measured 5 ms next to a full
    # suite).
    delays = [0.02, 0.002, 0.012]
    calls = {"n": 0}

    def baseline(index: int) -> None:
        time.sleep(delays[calls["n"] // per_window])
        calls["n"] += 1

    def candidate(index: int) -> None:
        time.sleep(0.0005)

    result = compare({"base": baseline, "cand": candidate}, 4, "base", method)
    assert calls["n"] == 3 * per_window
    assert len(result.window_medians) == 3
    assert result.p50("base") == min(m["base"] for m in result.window_medians)
    # The quiet window was kept: by order, not by milliseconds (a loaded machine stretches
    # every sleep; the suite saw 1 ms sleeps take 6 ms).
    assert result.p50("base") == result.window_medians[1]["base"]
    assert result.speedup("cand") == pytest.approx(result.p50("base") / result.p50("cand"))
    assert len(result.window_speedups("cand")) == 3


def test_the_agents_version_holds_a_digest_of_their_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Cache keys hold this version: a changed agent must not reuse its predecessor's results."""
    from bakeline.agents import AGENT_VERSION
    from bakeline.agents.__main__ import main
    from bakeline.agents.version import agent_version

    assert main(["--version"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == ["bakeline-agent", agent_version()]
    release, digest = agent_version().split("+src.")
    assert release == AGENT_VERSION and len(digest) == 12 and int(digest, 16) >= 0


def test_every_agent_reports_the_metrics_its_row_of_traits_puts_first(digits_chain: Chain) -> None:
    # The row in bakeline.contract.AGENT_TRAITS is the only declaration: what each agent
    # really reports must hold it (a per-batch-size figure counts as `b<size>.<name>`).
    for agent, result in digits_chain.results.items():
        reported = result.outcome.metrics
        missing = [
            name
            for name in AGENT_TRAITS[agent].headline_metrics
            if name not in reported and not any(key.endswith(f".{name}") for key in reported)
        ]
        assert not missing, (agent, missing, sorted(reported))
    assert set(digits_chain.results) == set(AGENT_TRAITS)
