"""``out/hf_model`` keeps the source folder's files and sub-folders, never a link out of it."""

from __future__ import annotations

import os

import pytest

from sparsify_cli.hf import save_hf_folder
from sparsify_cli.loading import load_model

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hf_tiny import tiny_bert  # noqa: E402


def test_copy_keeps_subfolders_and_refuses_links_out(tmp_path) -> None:
    folder = tiny_bert(tmp_path / "bert", sentence_transformers=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (folder / "notes.md").write_text("kept")
    os.symlink(secret, folder / "leak.txt")  # a link out of the folder: never followed
    os.symlink(folder / "notes.md", folder / "notes_link.md")  # inside: copied as a file
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "model.safetensors").write_bytes(b"dense head weights")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_text("x")
    loaded = load_model(str(folder))
    dest = tmp_path / "out"
    save_hf_folder(loaded.model, folder, dest)
    assert (dest / "1_Pooling" / "config.json").read_text() == (
        folder / "1_Pooling" / "config.json"
    ).read_text()
    assert (dest / "modules.json").is_file() and (dest / "tokenizer.json").is_file()
    assert (dest / "2_Dense" / "model.safetensors").read_bytes() == b"dense head weights"
    assert (dest / "notes_link.md").read_text() == "kept"
    assert not (dest / "notes_link.md").is_symlink()
    assert not (dest / "leak.txt").exists()
    assert not (dest / ".cache").exists()
    assert (dest / "model.safetensors").stat().st_size > 1000  # the sparse weights, rewritten
