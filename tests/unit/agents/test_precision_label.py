"""The precision a bake reports says what the artifact holds, not what was asked for."""

from __future__ import annotations

from bakeline.agents.stages.model_optimizer import precision_label


def test_a_scheme_that_quantized_nothing_is_not_called_int8() -> None:
    assert precision_label("int8-per-channel", 0, 0, False) == "fp32 (no layer quantized)"
    assert precision_label("none", 0, 0, False) == "fp32"


def test_the_label_counts_the_layers_the_scheme_reached() -> None:
    assert precision_label("int8-per-channel", 24, 0, False) == "int8-per-channel: all 24 layers"
    assert precision_label("int8-per-channel", 21, 3, False) == (
        "int8-per-channel: 21 of 24 layers, the rest fp32"
    )
    assert precision_label("int8-per-channel", 21, 3, True).endswith("the rest int8-blockwise")


def test_float_layers_the_scheme_did_not_reach_are_named() -> None:
    assert precision_label("int8-per-channel", 1, 0, False, {"LSTM": 1}) == (
        "int8-per-channel: 1 of 2 layers; LSTM fp32"
    )
    assert precision_label("int8-per-channel", 21, 3, True, {"GRU": 2}) == (
        "int8-per-channel: 21 of 26 layers; 3 int8-blockwise; GRU fp32"
    )
    crowded = precision_label("int8-per-tensor", 210, 30, True, {"ConvTranspose": 2, "GRU": 1})
    assert len(crowded) <= 64 and crowded.endswith("; 3 fp32"), crowded
    assert precision_label("int8-per-channel", 0, 0, False, {"LSTM": 1}) == (
        "fp32 (no layer quantized)"
    )
