"""Text data for Hugging Face models: a plain text file or a ``.jsonl``, tokenized offline.

* ``.txt`` (any suffix other than ``.jsonl``/``.json``): one example per line, blank lines skipped.
* ``.jsonl``: one JSON object per line with a string ``"text"`` and, optionally, ``"label"``
  (an integer class id, or a class name the folder's ``config.json`` maps in ``label2id``).
  Either every line has a label or none has.

The texts are tokenized with the model folder's own tokenizer
(``AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)``: no
download, no code from the folder), truncated to ``max_length`` (the caller caps it at what
the model can embed: :func:`sparsify_cli.hf.max_sequence`) and padded to the longest example,
with the attention mask marking the real tokens. The result is a
:class:`~sparsify_cli.samples.datasets.Dataset` whose inputs are ``name -> int64 array`` in
the model's input order, so every stage gets the ordered ``name -> tensor`` batches of
:mod:`sparsify_cli.passes.inputs` (:func:`sparsify_cli.passes.inputs.batches`). Labelled data
trains with cross-entropy, unlabelled data by distillation from the dense model.

>>> data = load_text_data("train.txt", Path("bert"), specs, max_length=64)  # doctest: +SKIP
>>> next(batches(data.x_train, 8))["input_ids"].shape  # doctest: +SKIP
torch.Size([8, 64])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparsify_cli.passes.errors import SparsifyError

if TYPE_CHECKING:  # torch is imported only when text is tokenized (``--help`` stays light)
    from sparsify_cli.passes.inputs import InputSpec
    from sparsify_cli.samples.datasets import Dataset

JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt", ".text", *JSONL_SUFFIXES)
"""Suffixes ``--data`` reads as text (anything else goes to the npz / dataset-name reader)."""

DEFAULT_MAX_LENGTH = 128

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""A folder holds a tokenizer when one of these vocabularies is there (transformers would
otherwise build an empty default tokenizer and tokenize everything to unknowns)."""


def is_text_data(spec: str) -> bool:
    """True when ``--data`` names a text file (by suffix)."""
    return Path(spec).suffix.lower() in TEXT_SUFFIXES


@dataclass(frozen=True)
class TextExamples:
    """The examples of a text file: the texts, and int64 labels when every line has one."""

    texts: list[str]
    labels: np.ndarray | None


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SparsifyError(
            f"data not found: {path}",
            expected="a text file (one example per line) or a .jsonl with a 'text' field",
        )
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SparsifyError(
            f"data file {path} is not UTF-8 text",
            found=f"byte {err.start}: {err.reason}",
            fix="save it as UTF-8",
        ) from err


def _label(value: object, where: str, label2id: dict[str, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SparsifyError(
            f"{where}: 'label' is {type(value).__name__}",
            expected="an integer class id >= 0, or a class name from config.json's label2id",
        )
    if isinstance(value, str):
        if value not in label2id:
            raise SparsifyError(
                f"{where}: unknown label {value!r}",
                expected=f"an integer class id or one of the folder's labels {sorted(label2id)}",
                fix="use integer class ids, or set label2id in config.json",
            )
        return label2id[value]
    if value < 0:
        raise SparsifyError(f"{where}: negative label {value}", expected="class ids >= 0")
    return value


def read_text_file(path: Path, label2id: dict[str, int] | None = None) -> TextExamples:
    """The examples of ``path``; any malformed line is an error naming the file and line."""
    lines = _read_lines(path)
    texts: list[str] = []
    labels: list[int] = []
    unlabelled: list[int] = []
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SparsifyError(
                f"{where} is not JSON",
                expected='one object per line, e.g. {"text": "...", "label": 0}',
                found=f"{err.msg} at column {err.colno}",
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SparsifyError(
                f"{where} has no string 'text' field",
                expected='{"text": "...", "label": 0} (label optional)',
                found=line[:80],
            )
        texts.append(record["text"])
        if "label" in record:
            labels.append(_label(record["label"], where, label2id or {}))
        else:
            unlabelled.append(number)
    if not texts:
        raise SparsifyError(
            f"data file {path} holds no examples",
            expected="at least one non-blank line",
        )
    if labels and unlabelled:
        raise SparsifyError(
            f"data file {path} labels some lines and not others",
            expected="a 'label' on every line, or on none (distillation)",
            found=f"{len(unlabelled)} lines without one, first line {unlabelled[0]}",
        )
    return TextExamples(texts, np.asarray(labels, dtype=np.int64) if labels else None)


def load_tokenizer(folder: Path):
    """The folder's own tokenizer, from local files only, never running code from the folder."""
    from sparsify_cli.hf import _transformers

    transformers = _transformers()
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SparsifyError(
            f"the model folder {folder} holds no tokenizer for text --data",
            expected=f"one of {', '.join(TOKENIZER_FILES)} (tokenizer.save_pretrained writes it)",
            fix="save the tokenizer into the model folder, or pass --data as an .npz of token ids",
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SparsifyError(
            f"cannot load a tokenizer from {folder}",
            expected="the tokenizer files save_pretrained writes (tokenizer.json or vocab.txt, "
            "tokenizer_config.json)",
            found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            fix="save the tokenizer into the model folder, or pass --data as an .npz of token ids",
        ) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SparsifyError(
                f"the tokenizer in {folder} has no padding token",
                fix="set pad_token in tokenizer_config.json",
            )
        tokenizer.pad_token = tokenizer.eos_token  # decoder models: pad with EOS, masked out
    return tokenizer


def tokenize(
    texts: Sequence[str], folder: Path, specs: Sequence[InputSpec], max_length: int
) -> dict[str, np.ndarray]:
    """``name -> int array [len(texts), L]`` for the model inputs ``specs``, in their order.

    ``L`` is the longest tokenized text, at most ``max_length``; shorter ones are padded and the
    attention mask is 0 on their padding. An encoder-decoder's ``decoder_input_ids`` are the
    text shifted right after ``decoder_start_token_id``, so distillation compares the two models
    reconstructing the text.
    """
    from sparsify_cli.passes.inputs import DTYPES

    if max_length < 1:
        raise SparsifyError("--max-length must be >= 1", found=str(max_length))
    tokenizer = load_tokenizer(folder)
    encoded = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    encoded = dict(encoded)
    if "decoder_input_ids" not in encoded and "input_ids" in encoded:
        start = _config_value(folder, "decoder_start_token_id")
        start = start if isinstance(start, int) else tokenizer.pad_token_id or 0
        ids = np.asarray(encoded["input_ids"])  # an encoder-decoder reads the text shifted right
        encoded["decoder_input_ids"] = np.concatenate(
            [np.full((len(ids), 1), start, ids.dtype), ids[:, :-1]], axis=1
        )
    missing = [s.name for s in specs if s.name not in encoded]
    if missing:
        raise SparsifyError(
            f"the tokenizer in {folder} does not produce the model inputs {missing}",
            expected=f"inputs {[s.name for s in specs]}",
            found=f"tokenizer outputs {sorted(encoded.keys())}",
            fix="pass the inputs with --input NAME:SHAPE:DTYPE that the tokenizer produces",
        )
    return {s.name: np.asarray(encoded[s.name]).astype(DTYPES[s.dtype][1]) for s in specs}


def _config_value(folder: Path, key: str) -> object:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None


def load_text_data(
    spec: str,
    folder: Path,
    specs: Sequence[InputSpec],
    max_length: int = DEFAULT_MAX_LENGTH,
    limit: int | None = None,
) -> Dataset:
    """Read, tokenize and split the text file ``spec`` for the model in ``folder``.

    ``limit`` keeps the first rows only (e.g. ``--calib-size`` for one-shot calibration). The
    held-out split is the project's fixed 10% (:func:`holdout_split`), unless there is only one
    example, which then serves both.
    """
    from sparsify_cli.samples.datasets import Dataset, holdout_split

    label2id = _config_value(folder, "label2id")
    examples = read_text_file(Path(spec), label2id if isinstance(label2id, dict) else None)
    texts, labels = examples.texts, examples.labels
    if limit is not None:
        texts = texts[:limit]
        labels = None if labels is None else labels[:limit]
    x = tokenize(texts, folder, specs, max_length)
    if len(texts) == 1:
        return Dataset(x, labels, x, labels)
    return holdout_split(x, labels)
