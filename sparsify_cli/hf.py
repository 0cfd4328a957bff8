"""Hugging Face model folders (``config.json`` + weights, as ``save_pretrained`` writes them).

The model is built by ``transformers`` from the folder alone: ``HF_HUB_OFFLINE=1`` is set before
the import and ``local_files_only=True`` is passed, so nothing is fetched from the hub. Its
forward returns a ``ModelOutput``; :class:`LogitsOnly` calls it with the named inputs and
returns the one tensor export and parity compare (``logits``, else ``last_hidden_state``).

The example is derived from the config (:func:`default_specs`; images: ``pixel_values`` of the
config's size): token ids in ``[0, vocab_size)`` and an attention mask of ones, ``[1, seq]``
with ``seq = min(128, positions the model can embed)`` (see :func:`max_sequence`: RoBERTa-style
models lose ``padding_idx + 1`` of their ``max_position_embeddings``), batch and sequence axes
dynamic in the ONNX file. The sparse
model is written back with ``save_pretrained`` so it loads with ``from_pretrained`` like the
original.

No code from the folder runs: ``trust_remote_code=False`` is passed to every transformers call
and a folder that needs custom code is refused first (:func:`check_no_code`); files that link
outside the folder are not copied into the output.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec

log = logging.getLogger(__name__)

SEQ_LEN = 128
IMAGE_SIZE = 224
DECODER_IDS = "decoder_input_ids"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".h5", ".msgpack")
HF_FOLDER = "hf_model"
"""Name of the sparse ``save_pretrained`` folder inside the output folder."""


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as err:
        raise SparsifyError(
            "reading a Hugging Face model folder needs the 'transformers' package",
            found=f"{type(err).__name__}: {err}",
            fix="pip install 'sparsify-cli[hf]'",
        ) from err
    transformers.utils.logging.disable_progress_bar()  # our own progress display owns stderr
    return transformers


class LogitsOnly(nn.Module):
    """Calls the Hugging Face model with keyword inputs; returns one tensor of its output."""

    def __init__(self, hf: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.hf = hf
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.hf(**dict(zip(self.input_names, inputs, strict=True)), return_dict=True)
        for key in ("logits", "last_hidden_state"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        raise SparsifyError(
            f"{type(self.hf).__name__} returns neither logits nor last_hidden_state",
            found=f"outputs {list(out.keys())}",
        )


def max_sequence(model: nn.Module) -> int | None:
    """The longest sequence ``model`` can embed, or None when nothing in it limits the length.

    ``max_position_embeddings`` rows minus the offset where position ids start: RoBERTa-style
    embeddings (RoBERTa, XLM-R, CamemBERT, ...) number positions from ``padding_idx + 1``, so a
    sequence of ``max_position_embeddings`` tokens would index past the table. Read from the
    position tables themselves (an ``nn.Embedding`` named ``*position_embeddings`` with a
    ``padding_idx``), not from a list of model types.
    """
    limits = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith("position_embeddings"):
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            limits.append(module.num_embeddings - offset)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limits and isinstance(limit, int) and limit > 0:
        limits.append(limit)
    return max(1, min(limits)) if limits else None


def default_specs(config: object, max_seq: int | None = None) -> list[InputSpec]:
    """The inputs a config implies. Text models (``vocab_size``): token ids in
    ``[0, vocab_size)`` and an all-ones attention mask, ``[1, seq]`` with
    ``seq = min(128, max_seq)`` (``max_seq`` from :func:`max_sequence`), plus
    ``decoder_input_ids`` for an encoder-decoder (T5, BART). Vision models
    (``num_channels``): ``pixel_values`` ``[1, C, S, S]``, ``S`` the config's ``image_size`` (224
    for a convolutional model without one)."""
    vocab = getattr(config, "vocab_size", None)
    channels = getattr(config, "num_channels", None)
    if isinstance(vocab, int) and vocab >= 1:
        seq = min(SEQ_LEN, max_seq) if max_seq else SEQ_LEN
        axes = {0: "batch", 1: "sequence"}
        specs = [
            InputSpec("input_ids", (1, seq), "int64", axes, 0, vocab),
            InputSpec("attention_mask", (1, seq), "int64", axes, 1, 2),
        ]
        if getattr(config, "is_encoder_decoder", False):  # T5, BART: the decoder reads tokens too
            dec = {0: "batch", 1: "decoder_sequence"}
            specs.append(InputSpec(DECODER_IDS, (1, seq), "int64", dec, 0, vocab))
        return specs
    if isinstance(channels, int) and channels >= 1:
        size = getattr(config, "image_size", None) or IMAGE_SIZE
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return [InputSpec("pixel_values", (1, channels, height, width))]
    raise SparsifyError(
        f"cannot derive example inputs from a {type(config).__name__}: it has neither "
        "vocab_size (text) nor num_channels (images)",
        fix="pass the inputs with --input NAME:SHAPE:DTYPE (or --example-input x.npz)",
    )


def folder_sha256(folder: Path) -> str:
    """One digest over ``config.json`` and the weight files (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.name.endswith(WEIGHT_SUFFIXES):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def head_modules(hf: nn.Module, prefix: str = "hf.") -> tuple[str, ...]:
    """Layers kept dense with the output head: the output embeddings (often tied to the word
    embeddings, so sparsifying them would sparsify the input table too) and any pooler."""
    names = [f"{prefix}*pooler*"]
    get_out = getattr(hf, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    for name, mod in hf.named_modules():
        if out_emb is not None and mod is out_emb:
            names.append(prefix + name)
    return tuple(names)


def check_no_code(folder: Path) -> None:
    """Refuse a folder that would make transformers run code: ``auto_map`` (the model's own
    classes, ``trust_remote_code``), Python files, or pickled ``.bin`` weights.

    transformers would otherwise ask ``[y/N]`` on a terminal; sparsify never asks and never
    runs code from a folder. ``.bin`` files are read with ``torch.load(weights_only=True)``
    first, which refuses anything but tensors.
    """
    from sparsify_cli.loading import read_checkpoint

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SparsifyError(
            f"cannot read {folder / 'config.json'}",
            expected="the JSON file save_pretrained writes",
            found=type(err).__name__,
        ) from err
    if not isinstance(config, dict):
        raise SparsifyError(f"{folder / 'config.json'} is not a JSON object")
    code = (["auto_map in config.json"] if "auto_map" in config else []) + sorted(
        p.name for p in folder.glob("*.py")
    )
    if code:
        raise SparsifyError(
            f"the model folder {folder} holds custom code ({', '.join(code[:4])})",
            expected="a model built by transformers' own classes",
            fix="sparsify never runs code from a model folder: build the model yourself, save "
            "its state_dict and pass --arch MODULE:CALLABLE",
        )
    for weights in sorted(folder.glob("*.bin")):
        read_checkpoint(weights)  # weights_only: a pickle of objects is refused here


def load_hf_folder(folder: Path) -> nn.Module:
    """The model in ``folder`` (eval mode), built only from local files, running no code."""
    check_no_code(folder)
    transformers = _transformers()
    safe = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), **safe)
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        cls = cls or transformers.AutoModel
        model = cls.from_pretrained(str(folder), weights_only=True, **safe)
    except (OSError, ValueError, KeyError) as err:
        raise SparsifyError(
            f"transformers cannot load the model folder {folder}",
            found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            fix="the folder must hold config.json and the weights save_pretrained wrote",
        ) from err
    linear_conv1d(model, transformers.pytorch_utils.Conv1D)
    return model.eval()


class Conv1DLinear(nn.Linear):
    """transformers' ``Conv1D`` (GPT-2's projections: ``x @ W + b`` with ``W`` stored
    ``[in, out]``) as the ``nn.Linear`` it computes, so every pass, mask and exporter treats it
    as the Linear it is (N:M groups run along the inputs either way). :func:`save_hf_folder`
    writes the weight back in ``Conv1D``'s layout, so ``from_pretrained`` reads the output."""


def linear_conv1d(model: nn.Module, conv1d: type) -> None:
    """Swap every ``conv1d`` module of ``model`` for the equal :class:`Conv1DLinear`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, conv1d):
                n_in, n_out = child.weight.shape
                linear = Conv1DLinear(n_in, n_out, bias=child.bias is not None)
                linear.to(child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def pretrained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each :class:`Conv1DLinear` weight in ``Conv1D``'s layout."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, Conv1DLinear):
            key = f"{name}.weight" if name else "weight"
            state[key] = state[key].t().contiguous()
    return state


def save_hf_folder(model: LogitsOnly, source: Path, dest: Path) -> None:
    """``save_pretrained`` of the sparse model into ``dest``, plus every other file of the source
    folder (tokenizer, generation config, and the sub-folders of a sentence-transformers model
    such as ``1_Pooling/``), so ``dest`` replaces the original folder.

    The source's own top-level weight files are not copied (``save_pretrained`` wrote the sparse
    ones); hidden entries (``.git``, ``.cache``) are skipped. A symlink is copied as the file it
    points to only when that file lies inside ``source``: a link out of the folder (e.g.
    ``tokenizer.json -> /etc/shadow``) is never followed, and a warning names it.
    """
    state = pretrained_state_dict(model.hf)
    model.hf.save_pretrained(str(dest), state_dict=state, safe_serialization=True)
    root = source.resolve()
    for path, target in _tree(source, dest):
        if path.is_symlink() and not _inside(path.resolve(), root):
            log.warning("not copying %s: it links outside the model folder", path)
            continue
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.is_file() and not target.exists():
            top_weights = path.parent == source and path.name.endswith(WEIGHT_SUFFIXES)
            if not top_weights:
                shutil.copyfile(path, target)
                shutil.copystat(path, target)


def _tree(source: Path, dest: Path):
    """``(source entry, dest path)`` for every non-hidden entry below ``source``, parents first;
    symlinked folders are listed but not descended into."""
    for path in sorted(source.iterdir()):
        if path.name.startswith("."):
            continue
        yield path, dest / path.name
        if path.is_dir() and not path.is_symlink():
            yield from _tree(path, dest / path.name)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
