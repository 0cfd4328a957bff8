"""Text ``--data`` for Hugging Face folders: reading, tokenizing, padding, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec, batches
from sparsify_cli.passes.training import make_loader
from sparsify_cli.text_data import is_text_data, load_text_data, read_text_file

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hf_tiny import tiny_bert, write_text  # noqa: E402

AXES = {0: "batch", 1: "sequence"}
SPECS = (
    InputSpec("input_ids", (1, 64), "int64", AXES, 0, 120),
    InputSpec("attention_mask", (1, 64), "int64", AXES, 1, 2),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("text") / "bert")


def test_plain_text_is_tokenized_padded_and_masked(folder, tmp_path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("the movie was great\n\n   \nhonestly the food felt awful and weak\n" * 5)
    data = load_text_data(str(path), folder, SPECS, max_length=64)
    assert list(data.x_train) == ["input_ids", "attention_mask"]  # the model's input order
    assert data.y_train is None
    ids, mask = data.x_train["input_ids"], data.x_train["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == mask.shape
    assert len(ids) + len(data.x_test["input_ids"]) == 10  # blank lines skipped, 10% held out
    lengths = mask.sum(1)
    short_len, long_len = sorted(set(lengths.tolist()))  # the two sentences, [CLS] ... [SEP]
    assert ids.shape[1] == long_len  # padded to the longest example
    short = lengths == short_len
    assert (ids[short, short_len:] == 0).all() and (mask[short, short_len:] == 0).all()
    assert (ids[:, 0] == 2).all()  # [CLS]; [PAD] is id 0


def test_max_length_truncates_and_batches_are_named_mappings(folder, tmp_path) -> None:
    path = write_text(tmp_path / "train.txt", 40)
    data = load_text_data(str(path), folder, SPECS, max_length=5)
    assert data.x_train["input_ids"].shape[1] == 5
    first = next(batches(data.x_train, 8))
    assert list(first) == ["input_ids", "attention_mask"]
    assert first["input_ids"].shape == (8, 5) and first["input_ids"].dtype == torch.int64
    loader_batch = next(iter(make_loader(data.x_train, None, 8, shuffle=False)))
    assert len(loader_batch) == 1 and list(loader_batch[0]) == ["input_ids", "attention_mask"]
    assert torch.equal(loader_batch[0]["input_ids"], first["input_ids"])


def test_jsonl_labels_integer_and_named(folder, tmp_path) -> None:
    path = write_text(tmp_path / "train.jsonl", 30, labels=True)
    data = load_text_data(str(path), folder, SPECS)
    expected = [json.loads(line)["label"] for line in path.read_text().splitlines()]
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == sorted(expected)
    named = tmp_path / "named.jsonl"
    named.write_text('{"text": "a good show", "label": "POS"}\n{"text": "bad", "label": "NEG"}\n')
    examples = read_text_file(named, {"NEG": 0, "POS": 1})
    assert examples.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no examples"),
        ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
        ('{"words": "ok"}\n', "line 1 has no string 'text' field"),
        ('{"text": 3}\n', "line 1 has no string 'text' field"),
        ('{"text": "a", "label": 1}\n{"text": "b"}\n', "labels some lines and not others"),
        ('{"text": "a", "label": -1}\n', "negative label"),
        ('{"text": "a", "label": 1.5}\n', "'label' is float"),
        ('{"text": "a", "label": "POS"}\n', "unknown label 'POS'"),
    ],
)
def test_bad_jsonl_is_one_clear_error(tmp_path, content, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SparsifyError, match=message):
        read_text_file(path)


def test_unreadable_text_and_missing_tokenizer(folder, tmp_path) -> None:
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SparsifyError, match="not UTF-8"):
        read_text_file(binary)
    with pytest.raises(SparsifyError, match="data not found"):
        read_text_file(tmp_path / "missing.txt")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(SparsifyError, match="holds no tokenizer"):
        load_text_data(str(write_text(tmp_path / "t.txt", 4)), bare, SPECS)
    missing_input = (*SPECS, InputSpec("pixel_values", (1, 3), "float32"))
    with pytest.raises(SparsifyError, match="does not produce the model inputs"):
        load_text_data(str(write_text(tmp_path / "t.txt", 4)), folder, missing_input)


def test_suffixes() -> None:
    assert is_text_data("a.txt") and is_text_data("b.JSONL") and is_text_data("c.json")
    assert not is_text_data("d.npz") and not is_text_data("digits")
