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
