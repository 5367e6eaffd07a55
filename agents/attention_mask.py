"""Attention-mask fill values that keep softmax on its fast path.

An exported transformer masks padded keys by adding a huge negative constant to their attention
scores (Hugging Face: `(1 - mask) * torch.finfo(dtype).min`; older models -10000). Any value far
enough below the row's maximum gives a masked key the weight 0 in fp32, but a very large one
sends every masked score through the slow path of CPU exp kernels: below about -87.3 the result
of exp is subnormal (or zero), which ONNX Runtime's MLAS exp handles an order of magnitude slower
(a Softmax over MiniLM's [32, 12, 18, 18] scores with masked keys: 0.6 ms instead of 0.06 ms, six
times per batch). `soften_masks` replaces such a constant by FILL, where exp stays in its normal
range for a masked key whose raw score is within 17 of its row's maximum, and the weight it
leaves is still below fp32's resolution: exp(-70) ~ 4e-31 against a row sum of at least 1.

Only constants that reach a Softmax through the mask's arithmetic are changed; the caller checks
the rewritten graph against the reference outputs, as every rewrite of the GraphOptimizer.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import onnx
from onnx import numpy_helper

FILL = -70.0
# A scalar at or below this, on the way to a Softmax, is a mask fill value (not a weight).
HUGE = -1e4
# Ops a mask passes through between its fill constant and the scores it is added to.
_MASK_PATH = frozenset(
    {"Mul", "Where", "Sub", "Add", "Cast", "Unsqueeze", "Reshape", "Squeeze", "Expand", "Tile"}
)
_MAX_HOPS = 8


def soften_masks(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with each attention-mask fill constant (a float scalar initializer <= HUGE whose
    consumer reaches a Softmax through mask arithmetic) replaced by FILL. Returns the model
    (changed in place) and how many constants were replaced."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    softened = 0
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        if value.size != 1 or value.dtype.kind != "f" or float(value.reshape(-1)[0]) > HUGE:
            continue
        users = consumers.get(init.name, [])
        if not users or not all(_reaches_softmax(node, consumers) for node in users):
            continue
        init.CopyFrom(numpy_helper.from_array(np.full_like(value, FILL), init.name))
        softened += 1
    return model, softened


def _reaches_softmax(start: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether a Softmax reads what `start` computes, through mask arithmetic only."""
    if start.op_type not in _MASK_PATH:
        return False
    queue = deque([(start, 0)])
    while queue:
        node, hops = queue.popleft()
        for output in node.output:
            for user in consumers.get(output, []):
                if user.op_type == "Softmax":
                    return True
                if user.op_type in _MASK_PATH and hops < _MAX_HOPS:
                    queue.append((user, hops + 1))
    return False
