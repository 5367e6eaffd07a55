"""The job's own data (`quality.dataset`), read as data only: nothing in it is ever unpickled.

What the import stage is handed is a `file://` address the driver resolved (`bakeline run`: the
user's file, with the sha256 it hashed as `#sha256=<hex>`; a stage pod: the ConfigMap key it
mounted read-only). The format is told by the bytes, not the name:

- **safetensors**: one tensor per model input, keyed by the input's name, stacked on axis 0;
  read with the safetensors library (a JSON header and raw numbers: nothing to execute).
- **npz** (numpy's zip of arrays): the same keys; read with `allow_pickle=False`, so an object
  array (a pickle inside) is refused, and members bigger than `MAX_BYTES` are refused unread.
- **a zip of PNG or JPEG images, or of WAV clips**, for a model that declares how it prepares
  them (a Hugging Face folder's preprocessor_config.json): each file vetted from its header
  before it is decoded, labelled by its folder (`bakeline.agents.archives`, `.images`,
  `.audio`).
- **JSON lines**: one object a line, either `{"text": "..."}` (tokenized with the model's
  tokenizer: only a model that ships one, such as the builtin minilm-l6) or token ids and any
  other inputs by name (`{"input_ids": [...], "attention_mask": [...]}`), right-padded here;
  a mask left out is the ids' lengths.

Labels are optional: `__labels__` (an array) or `"label"` (a JSON lines field). A pickle, a
`.npy`, or anything else is refused with what is accepted. `split` divides the rows into
calibration and evaluation, the same way every time, and never the same row in both.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from safetensors.numpy import load_file

from bakeline.agents.archives import MediaReading, media_kind, read_archive
from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import LABELS, MASK, Dataset

# A dataset is read into memory whole: a bound on what one file may make us allocate.
MAX_BYTES = 2 * 1024**3
MIN_SAMPLES = 4  # calibration gets at least two (the import stage probes with a batch of 2)
TEXT = "text"
LABEL = "label"
ACCEPTED = (
    "safetensors or npz (arrays keyed by the model's input names, optional __labels__), "
    "JSON lines (text for a model with a tokenizer, or token ids per input name), or a zip of "
    "PNG or JPEG images or of WAV clips (for a model with a preprocessor_config.json)"
)


def dataset_location(address: str) -> tuple[Path, str | None]:
    """(path, expected sha256) of a resolved `file://PATH[#sha256=HEX]` dataset address."""
    parsed = urlparse(address)
    if parsed.scheme != "file":
        raise InvalidInput(
            f"quality.dataset {address!r} was not resolved to a file: the driver reads "
            "file:// paths (bakeline run) and configmap/NAME[/KEY] (in a cluster)"
        )
    expected = None
    if parsed.fragment.startswith("sha256="):
        expected = parsed.fragment.removeprefix("sha256=").lower()
    return Path(unquote(parsed.netloc + parsed.path)), expected


def _one_file(path: Path) -> Path:
    """A folder (a whole ConfigMap mounted) must hold exactly one file."""
    if not path.is_dir():
        return path
    files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    if len(files) != 1:
        names = ", ".join(p.name for p in files) or "none"
        raise InvalidInput(
            f"quality.dataset names a folder of {len(files)} files ({names}): name the one "
            "to read (configmap/NAME/KEY)"
        )
    return files[0]


def read_dataset(
    address: str,
    input_names: list[str],
    tokenizer: Path | None = None,
    max_length: int = 128,
    mask: str | None = MASK,
    media: MediaReading | None = None,
) -> tuple[Dataset, str]:
    """The dataset at `address` with the model's inputs in order, and its sha256. `mask` is the
    input whose role is the attention mask (`synthetic.mask_input`), where the model has one;
    `media` how the model reads media files (images, audio), where it declares that."""
    path, expected = dataset_location(address)
    path = _one_file(path)
    if not path.is_file():
        raise InvalidInput(f"dataset file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise InvalidInput(f"dataset {path.name} is {size} bytes; the limit is {MAX_BYTES}")
    raw = path.read_bytes()  # hashed and parsed from the same bytes
    actual = hashlib.sha256(raw).hexdigest()
    if expected and actual != expected:
        raise InvalidInput(
            f"dataset {path.name} has sha256 {actual}, but {expected} was resolved: it changed "
            "while the job ran"
        )
    kind = sniff(raw)
    if kind == "safetensors":
        arrays = _safetensors(path)
    elif kind == "zip":
        arrays = _zip(path, input_names, media)
    elif kind == "jsonl":
        arrays = _jsonl(raw, input_names, tokenizer, max_length, mask)
    elif kind == "pickle":
        raise InvalidInput(
            f"dataset {path.name} is a pickle: datasets are read as data only, never "
            f"unpickled; give {ACCEPTED}"
        )
    elif kind == "npy":
        raise InvalidInput(
            f"dataset {path.name} is a single .npy array without input names: save it with "
            "numpy.savez(path, <input name>=array) or as safetensors"
        )
    else:
        raise InvalidInput(f"dataset {path.name} is not a dataset Bakeline reads: give {ACCEPTED}")
    return _assemble(arrays, input_names, path.name, mask), actual


def sniff(raw: bytes) -> str:
    """What the bytes are: safetensors, zip (npz, or media files), jsonl, pickle, npy or
    unknown."""
    if raw[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if raw[:6] == b"\x93NUMPY":
        return "npy"
    if raw[:1] == b"\x80" or raw[:2] in (b"(d", b"(l", b"}q", b"]q"):
        return "pickle"
    if len(raw) >= 9:
        header = int.from_bytes(raw[:8], "little")
        if 2 <= header <= len(raw) - 8 and raw[8:9] == b"{":
            return "safetensors"
    if raw.lstrip()[:1] == b"{":
        return "jsonl"
    return "unknown"


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # a damaged header, a dtype numpy lacks (bf16)
        raise InvalidInput(f"dataset {path.name} does not read as safetensors: {exc}") from exc


def _zip(path: Path, input_names: list[str], media: MediaReading | None) -> dict[str, np.ndarray]:
    """An npz (every member a .npy) or a zip of media files (every member an image, or every
    member a WAV clip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise InvalidInput(f"dataset {path.name} is a damaged zip: {exc}") from exc
    total = sum(m.file_size for m in members)
    if total > MAX_BYTES:  # a zip bomb is refused before anything is inflated
        raise InvalidInput(f"dataset {path.name} inflates to {total} bytes; limit {MAX_BYTES}")
    names = [m.filename for m in members if not m.is_dir()]
    if names and all(name.endswith(".npy") for name in names):
        return _npz(path)
    kind = media_kind(names)
    if kind is not None:
        if media is None or media.kind != kind:
            raise InvalidInput(
                f"dataset {path.name} is a zip of {kind}, but this model declares no "
                f"preprocessing of {kind} (a Hugging Face folder's preprocessor_config.json): "
                "give its prepared inputs as npz or safetensors"
            )
        return read_archive(path, members, input_names, media)
    stray = [n for n in names if not n.endswith(".npy") and media_kind([n]) is None]
    holds = stray[0][:120] if stray else ("files of several kinds" if names else "no file")
    raise InvalidInput(
        f"dataset {path.name} is a zip of neither arrays (npz: every member .npy) nor media "
        f"(every member .png, .jpg or .jpeg, or every member .wav): it holds {holds}"
    )


def _npz(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                arrays[name] = np.asarray(archive[name])
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise InvalidInput(
            f"dataset {path.name} holds an object array (a pickle inside the npz), which is "
            "never loaded: save numeric arrays only"
        ) from exc
    except Exception as exc:
        raise InvalidInput(f"dataset {path.name} does not read as npz: {exc}") from exc
    return arrays


def _jsonl(
    raw: bytes,
    input_names: list[str],
    tokenizer: Path | None,
    max_length: int,
    mask: str | None,
) -> dict[str, np.ndarray]:
    rows = []
    for number, line in enumerate(raw.decode("utf-8", errors="strict").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"dataset line {number} is not JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise InvalidInput(f"dataset line {number} is not a JSON object")
        rows.append(row)
    if not rows:
        raise InvalidInput("the JSON lines dataset has no rows")
    labels = [row.get(LABEL) for row in rows]
    arrays: dict[str, np.ndarray] = {}
    if all(TEXT in row for row in rows):
        if tokenizer is None:
            raise InvalidInput(
                "the dataset is text (JSON lines with `text`) but this model ships no tokenizer: "
                'give token ids per input name ({"input_ids": [...], "attention_mask": '
                "[...]}) or a safetensors/npz file of the model's inputs"
            )
        arrays.update(_tokenize(tokenizer, [str(row[TEXT]) for row in rows], max_length))
    else:
        for name in input_names:
            ids = _ids_beside_mask(rows, input_names, name) if name == mask else None
            if ids is not None and not any(name in row for row in rows):
                # Right-padded for you, so the mask is the ids' own lengths: no need to write it.
                arrays[name] = _pad([[1] * len(row[ids]) for row in rows], name)
                continue
            if not all(name in row for row in rows):
                raise InvalidInput(
                    f"every JSON line needs `{name}` (the model's inputs are {input_names}), "
                    "or every line `text` for a model with a tokenizer"
                )
            arrays[name] = _pad([row[name] for row in rows], name)
    if any(label is not None for label in labels):
        if any(label is None for label in labels):
            raise InvalidInput("some JSON lines have a `label` and some do not: label all or none")
        arrays[LABELS] = np.asarray(labels)
    return arrays


def _ids_beside_mask(rows: list[dict[str, Any]], input_names: list[str], mask: str) -> str | None:
    """The input whose lengths make the attention mask: the first other input every line
    gives as a flat list of ids."""
    for name in input_names:
        if name != mask and all(isinstance(row.get(name), list) for row in rows):
            return name
    return None


def _pad(values: list[object], name: str) -> np.ndarray:
    """Rows of one input as one array; ragged 1-D rows of ids are right-padded with 0."""
    try:
        rows = [np.asarray(v) for v in values]
    except Exception as exc:
        raise InvalidInput(f"`{name}` is not numbers in every line: {exc}") from exc
    if any(r.dtype.kind not in "biuf" for r in rows):
        raise InvalidInput(f"`{name}` must hold numbers in every line")
    if all(r.ndim == 1 for r in rows) and len({r.shape for r in rows}) > 1:
        width = max(r.shape[0] for r in rows)
        return np.stack([np.pad(r, (0, width - r.shape[0])) for r in rows])
    try:
        return np.stack(rows)
    except ValueError as exc:
        raise InvalidInput(f"`{name}` has rows of different shapes: {exc}") from exc


def _tokenize(path: Path, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    # The file's own pad token where it declares one (a Hugging Face tokenizer.json may), else
    # BERT's or RoBERTa's by name; always right-padded to the batch's longest.
    declared = tok.padding
    pad_token = str(declared["pad_token"]) if declared else "[PAD]"
    if not declared and tok.token_to_id(pad_token) is None and tok.token_to_id("<pad>") is not None:
        pad_token = "<pad>"  # noqa: S105 - a token, not a password
    pad_id = int(declared["pad_id"]) if declared else tok.token_to_id(pad_token) or 0
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.enable_truncation(max_length)
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _assemble(
    arrays: dict[str, np.ndarray], input_names: list[str], name: str, mask: str | None
) -> Dataset:
    labels = arrays.pop(LABELS, None)
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise InvalidInput(
            f"dataset {name} lacks the model's inputs {missing} (it has {sorted(arrays)}): key "
            "each array by the input's name"
        )
    inputs = {n: arrays[n] for n in input_names}
    counts = {n: int(a.shape[0]) if a.ndim else 0 for n, a in inputs.items()}
    if labels is not None:
        counts[LABELS] = int(labels.shape[0]) if labels.ndim else 0
    if len(set(counts.values())) != 1:
        raise InvalidInput(f"dataset {name}: arrays have different numbers of rows: {counts}")
    count = next(iter(counts.values()))
    if count < MIN_SAMPLES:
        raise InvalidInput(
            f"dataset {name} has {count} samples; at least {MIN_SAMPLES} are needed to split "
            "calibration from evaluation"
        )
    for key, array in inputs.items():
        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"dataset {name}: `{key}` is {array.dtype}, not numbers")
    if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "biu"):
        raise InvalidInput(f"dataset {name}: {LABELS} must be one integer class per sample")
    data = Dataset(inputs, labels, mask)
    marks = data.mask_array
    if marks is not None and bool((np.diff(marks, axis=1) > 0).any()):
        raise InvalidInput(
            f"dataset {name}: {mask} must be right-padded (each row 1s, then 0s): batches are "
            "trimmed to their longest row"
        )
    return data


def conform(data: Dataset, dtypes: dict[str, str]) -> Dataset:
    """The dataset in the model's declared dtypes: integers stay integers, floats floats."""
    converted = {}
    for name, array in data.inputs.items():
        want = np.dtype(dtypes.get(name, str(array.dtype)))
        if want.kind in "iu" and array.dtype.kind == "f":
            raise InvalidInput(f"the model's input {name} takes integers; the dataset has floats")
        converted[name] = array.astype(want, copy=False)
    labels = None if data.labels is None else data.labels.astype(np.int64, copy=False)
    return Dataset(converted, labels, data.mask)


def split(data: Dataset) -> tuple[Dataset, Dataset]:
    """Calibration (every third row: 0, 3, 6, ...) and evaluation (the rest): the same rows
    every time, and no row in both."""
    index = np.arange(len(data))
    calibration, evaluation = index[index % 3 == 0], index[index % 3 != 0]
    labels = data.labels

    def take(rows: np.ndarray) -> Dataset:
        return Dataset(
            {n: np.ascontiguousarray(a[rows]) for n, a in data.inputs.items()},
            None if labels is None else np.ascontiguousarray(labels[rows]),
            data.mask,
        )

    return take(calibration), take(evaluation)
