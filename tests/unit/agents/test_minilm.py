"""minilm-l6: its data split (fast), and the encoder against sentence-transformers (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bakeline.agents.builtins import minilm
from bakeline.agents.pipeline import run_in_process
from bakeline.agents.quality import cosine_rows
from bakeline.agents.runtimes import torch_runner


def test_sentences_are_many_varied_and_split_without_overlap() -> None:
    calibration, evaluation = minilm.split_sentences()
    assert len(calibration) + len(evaluation) >= 400
    assert len(set(calibration + evaluation)) == len(calibration) + len(evaluation)
    assert not set(calibration) & set(evaluation)
    assert len(evaluation) > len(calibration) >= 100
    lengths = [len(s.split()) for s in calibration + evaluation]
    assert min(lengths) <= 3 and max(lengths) >= 25  # short and long sentences both


def test_both_halves_hold_text_of_other_kinds_and_long_sequences() -> None:
    # Calibrated on short sentences alone, the smoothing scales fit them: long text lost most.
    calibration, evaluation = minilm.split_sentences()
    others = set(minilm.texts())
    tok = minilm.tokenizer()
    tok.no_padding()
    for half in (calibration, evaluation):
        assert len(others & set(half)) >= 20
        assert max(len(e.ids) for e in tok.encode_batch(half)) > 150


def test_tokenizer_pads_to_the_longest_sentence_not_to_128() -> None:
    feeds = minilm.encode(minilm.tokenizer(), ["A cat.", "A much longer sentence about a cat."])
    assert feeds["input_ids"].shape[1] < 20
    assert feeds["attention_mask"][0].sum() < feeds["attention_mask"][1].sum()


@pytest.mark.slow
def test_encoder_matches_sentence_transformers_and_exports(tmp_path: Path) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = minilm.sentences()[:24]
    ours = minilm.load_minilm()
    embeddings = torch_runner(ours, ["input_ids", "attention_mask", "token_type_ids"])(
        minilm.encode(minilm.tokenizer(), texts)
    )
    st = sentence_transformers.SentenceTransformer(str(minilm.model_dir()), device="cpu")
    theirs = st.encode(texts, convert_to_numpy=True)
    assert embeddings.shape == (24, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(embeddings, theirs).min() > 0.99999

    job = {"model": {"source": {"builtin": "minilm-l6"}}}
    zero = run_in_process("BakingCoordinator", tmp_path / "0", job=job)
    assert zero.manifest.files and any(f.path == "tokenizer.json" for f in zero.manifest.files)
    graph = run_in_process("GraphOptimizer", tmp_path / "1", tmp_path / "0", job=job)
    assert graph.outcome.metrics["matmulGroupsFused"] == 6  # Q, K, V of six layers
    assert graph.outcome.metrics["maxAbsError"] < 1e-4
    # torch's finfo.min on padded keys, once for all six layers' scores
    assert graph.outcome.metrics["maskFillsSoftened"] == 1
