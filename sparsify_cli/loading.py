"""Checkpoint -> ``nn.Module`` plus the example input used for export and timing.

Accepted sources, in the order they are tried:

* a shipped sample by name (``digits_cnn``), or any checkpoint that names a registered sample;
* a ``state_dict`` in ``.pt`` / ``.pth`` / ``.bin`` (read with ``torch.load(weights_only=True)``,
  which cannot run code) or ``.safetensors``, with ``--arch MODULE:CALLABLE`` building the model
  (imported with the current directory on ``sys.path``);
* a whole pickled module, only with ``trust_checkpoint=True``: unpickling runs arbitrary code;
* a Hugging Face model folder (``config.json`` + weights), see :mod:`sparsify_cli.hf`;
* no checkpoint at all with ``--arch`` (e.g. a zoo name): the model keeps its random init.

``--arch`` is ``MODULE:CALLABLE`` (``torchvision.models:resnet18``) or ``timm:NAME``
(``timm.create_model(NAME)``). The example is one float tensor of ``--input-shape``, or several
named inputs from ``--input NAME:SHAPE:DTYPE`` / ``--example-input x.npz``
(:mod:`sparsify_cli.passes.inputs`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify_cli import validation
from sparsify_cli.passes.atomic import file_sha256
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import (
    Example,
    InputSpec,
    call,
    make_example,
    parse_dims,
    parse_input_spec,
    spec_of,
)
from sparsify_cli.samples import SAMPLES, Sample

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The model, its example (a tensor, or ``name -> tensor`` for several inputs) and origin.

    ``specs`` describe the inputs for export and timing; ``head`` names layers kept dense with
    the output head; ``hf_folder`` is the Hugging Face folder the model came from, if any, and
    ``max_sequence`` the longest token sequence it can embed (text data is truncated to it).
    """

    model: nn.Module
    example: Example
    source: str
    sha256: str | None
    sample: Sample | None
    specs: tuple[InputSpec, ...] = ()
    head: tuple[str, ...] = ()
    hf_folder: Path | None = None
    max_sequence: int | None = None


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` or ``"1x3x32x32"`` -> ``(1, 3, 32, 32)``; every dimension >= 1."""
    dims = parse_dims(text) if text else None
    if dims is None:
        raise SparsifyError(
            f"cannot read --input-shape {text!r}",
            expected="comma- or x-separated positive integers with the batch first, e.g. 1,3,32,32",
            found=repr(text),
        )
    if len(dims) < 2:
        raise SparsifyError(
            f"invalid --input-shape {text!r}",
            expected="at least 2 dimensions (batch first), each >= 1",
            found=str(dims),
        )
    return dims


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def build_arch(arch: str) -> nn.Module:
    """Import ``MODULE:CALLABLE`` and call it with no arguments; it must return an ``nn.Module``.

    ``timm:NAME`` builds ``timm.create_model(NAME)`` (timm's models are registered names, not
    module attributes).
    """
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise SparsifyError(
            f"cannot read --arch {arch!r}",
            expected="MODULE:CALLABLE, e.g. mymodels:Net, torchvision.models:resnet18 or "
            "timm:resnet18",
            found=repr(arch),
        )
    if module_name == "timm":
        module_name, attr = "timm", "create_model"
        name = arch.partition(":")[2]
    else:
        name = None
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise SparsifyError(
                f"cannot import module {module_name!r} named by --arch",
                found=f"{type(err).__name__}: {err}",
                fix="run from the folder that holds the module, or install its package",
            ) from err
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise SparsifyError(
                f"module {module_name!r} has no attribute {attr!r} (from --arch {arch!r})",
                fix=f"check the name of the class or function in {module_name}",
            )
    try:
        model = factory() if name is None else factory(name, pretrained=False)
    except Exception as err:
        raise SparsifyError(
            f"--arch {arch!r} could not build the model: {type(err).__name__}: {err}",
            fix="the callable must take no required arguments",
        ) from err
    if not isinstance(model, nn.Module):
        raise SparsifyError(
            f"--arch {arch!r} did not return a torch module", found=type(model).__name__
        )
    return model


def _corrupt(path: Path, err: BaseException) -> SparsifyError:
    return SparsifyError(
        f"cannot read checkpoint {path}: it is corrupt or not a checkpoint",
        expected="a torch .pt state_dict or a .safetensors file",
        found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        fix="re-save the checkpoint with torch.save(model.state_dict(), path)",
    )


def read_checkpoint(path: Path, trust_checkpoint: bool = False) -> tuple[Any, dict[str, str]]:
    """The checkpoint object (state_dict, wrapper dict or module) and its metadata."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as err:
            raise _corrupt(path, err) from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler names the GLOBAL it refused; anything else is corruption.
        refused = [ln.strip() for ln in str(err).splitlines() if "global" in ln.lower()]
        if not refused:
            raise _corrupt(path, err) from err
        if not trust_checkpoint:
            raise SparsifyError(
                f"checkpoint {path} holds pickled Python objects, not only tensors",
                expected="a state_dict (tensors only), loadable without running code",
                found=refused[0][:200],
                fix="save model.state_dict() and pass --arch, or pass --trust-checkpoint if you "
                "trust this file (unpickling it can run arbitrary code)",
            ) from err
        log.warning("unpickling %s with --trust-checkpoint: this runs code from the file", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise _corrupt(path, err2) from err2
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise _corrupt(path, err) from err
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("sparsify_sample"), str):
        meta["sparsify_sample"] = obj["sparsify_sample"]
    return obj, meta


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise SparsifyError(
        f"checkpoint {path} holds no state_dict",
        expected="a dict of tensors (or one under 'state_dict')",
        found=type(obj).__name__,
    )


def load_state(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists what does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    kinds = [
        f"{k}: {str(state[k].dtype).removeprefix('torch.')}"
        for k in sorted(set(own) & set(state))
        if own[k].is_floating_point() and not state[k].is_floating_point()
    ]
    if kinds:  # integer values for float parameters: truncated weights, not a model
        raise SparsifyError(
            f"the checkpoint holds integer tensors for float parameters of {arch}",
            expected="floating-point weights",
            found="; ".join(kinds[:3]) + (" ..." if len(kinds) > 3 else ""),
            fix="save the float state_dict (an integer copy has lost the weights' fractions)",
        )
    if missing or unexpected or shapes:
        found = []
        if missing:
            found.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            found.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            found.append(f"shape mismatch {shapes[:3]}")
        raise SparsifyError(
            f"the checkpoint does not match the model built by {arch}",
            expected="the same parameter names and shapes",
            found="; ".join(found),
            fix="pass the --arch that produced this checkpoint",
        )
    model.load_state_dict(state, strict=True)


def check_example(model: nn.Module, example: Example, shape_text: str) -> None:
    """Run the example through the model; a failure means the inputs do not fit."""
    model.eval()
    try:
        with torch.no_grad():
            out = call(model, example)
    except Exception as err:
        raise SparsifyError(
            f"{shape_text} does not fit the model",
            found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            fix="pass the shape of one real input batch, batch first, e.g. --input-shape "
            "1,3,32,32 (or --input NAME:SHAPE:DTYPE per input, in forward's order)",
        ) from err
    if not isinstance(out, torch.Tensor):
        raise SparsifyError(
            "the model must return one tensor",
            found=type(out).__name__,
            fix="wrap the model so forward returns the logits tensor",
        )


def read_example_input(path: str) -> dict[str, torch.Tensor]:
    """``--example-input x.npz``: one array per input, in forward's order, named as in ONNX."""
    from sparsify_cli.data import read_npz

    arrays = read_npz(Path(path), f"--example-input {path}")
    if not arrays:
        raise SparsifyError(f"--example-input {path} holds no arrays")
    for name, array in arrays.items():
        spec_of(name, array)  # dtype and batch axis checks
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _named_example(
    inputs: Sequence[str], example_input: str | None, input_shape: str | None
) -> tuple[dict[str, torch.Tensor], tuple[InputSpec, ...]] | None:
    """The multi-input example and specs from ``--input`` / ``--example-input``, if given."""
    given = [flag for flag, v in (("--input", inputs), ("--example-input", example_input)) if v]
    if input_shape is not None and given:
        given.insert(0, "--input-shape")
    if len(given) > 1:
        raise SparsifyError(
            f"{' and '.join(given)} both describe the inputs", fix="pass only one of them"
        )
    if example_input is not None:
        example = read_example_input(example_input)
        return example, tuple(spec_of(k, v.numpy()) for k, v in example.items())
    if inputs:
        specs = tuple(parse_input_spec(text) for text in inputs)
        for spec in specs:
            validation.allocation(f"--input {spec.name}", spec.shape, validation.itemsize(spec))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise SparsifyError("--input names repeat", found=", ".join(names))
        return make_example(specs), specs
    return None


def _load_hf(folder: Path, named) -> LoadedModel:
    from sparsify_cli import hf

    model = hf.load_hf_folder(folder)
    max_seq = hf.max_sequence(model)
    example, specs = named if named else (None, tuple(hf.default_specs(model.config, max_seq)))
    example = example if example is not None else make_example(specs)
    wrapper = hf.LogitsOnly(model, list(example)).eval()
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in example.items())
    check_example(wrapper, example, f"the inputs {shapes}")
    return LoadedModel(
        wrapper,
        example,
        str(folder),
        hf.folder_sha256(folder),
        None,
        specs,
        hf.head_modules(model),
        folder,
        max_seq,
    )


def load_model(
    source: str | None,
    arch: str | None = None,
    input_shape: str | None = None,
    trust_checkpoint: bool = False,
    inputs: Sequence[str] = (),
    example_input: str | None = None,
) -> LoadedModel:
    """Build the model for ``source`` and the example input (batch 1) it is exported with.

    ``source=None`` with ``arch`` builds the architecture with its random init (a warning says
    so): enough to measure what sparsity does to latency before any weights exist.
    """
    named = _named_example(inputs, example_input, input_shape)
    if source is None:
        if arch is None:
            raise SparsifyError("no checkpoint given", fix="pass a checkpoint, or --arch")
        log.warning("no checkpoint given: %s keeps its random initialisation", arch)
        model, sha, sample = build_arch(arch), None, None
        source = f"{arch} (random init)"
    else:
        path = Path(source)
        if path.is_dir() and (path / "config.json").is_file():
            return _load_hf(path, named)
        model, sha, sample = _from_checkpoint(source, arch, trust_checkpoint)
    if named is not None:
        example, specs = named
        shape_text = "the inputs " + ", ".join(f"{s.name}{list(s.shape)}" for s in specs)
    else:
        if input_shape is None and sample is not None and arch is None:
            input_shape = ",".join(map(str, sample.input_shape))
        elif input_shape is None:
            raise SparsifyError(
                "no --input-shape given for this model",
                fix="pass --input-shape with the batch first, e.g. --input-shape 1,3,32,32",
            )
        shape = validation.allocation("--input-shape", parse_input_shape(input_shape))
        example = torch.zeros(shape).normal_(generator=torch.Generator().manual_seed(0))
        specs, shape_text = (InputSpec("input", shape),), f"--input-shape {input_shape}"
    model.eval()
    check_example(model, example, shape_text)
    return LoadedModel(
        model, example, str(source), sha, sample if arch is None else None, tuple(specs)
    )


def _from_checkpoint(
    source: str, arch: str | None, trust_checkpoint: bool
) -> tuple[nn.Module, str, Sample | None]:
    path = Path(source)
    sample = SAMPLES.get(source) if not path.exists() else None
    if sample is not None:
        path = sample.checkpoint
    if not path.exists():
        raise SparsifyError(
            f"checkpoint not found: {source}",
            expected=f"a file path or a sample name ({', '.join(SAMPLES)})",
            fix="check the path",
        )
    if path.is_dir() or path.stat().st_size == 0:
        raise SparsifyError(
            f"checkpoint {source} is {'a folder' if path.is_dir() else 'empty'}",
            expected="a .pt or .safetensors file, or a Hugging Face folder with config.json",
        )
    sha = file_sha256(path)
    obj, meta = read_checkpoint(path, trust_checkpoint)
    if sample is None and arch is None and meta.get("sparsify_sample") in SAMPLES:
        sample = SAMPLES[meta["sparsify_sample"]]
    if isinstance(obj, nn.Module):
        model = obj
    elif arch is not None:
        model = build_arch(arch)
        load_state(model, _state_dict(obj, path), arch)
    elif sample is not None:
        model = sample.build()
        load_state(model, _state_dict(obj, path), f"sample {sample.name}")
    else:
        raise SparsifyError(
            f"checkpoint {source} is a state_dict and no architecture was given",
            fix="pass --arch MODULE:CALLABLE naming the function or class that builds the model",
        )
    return model, sha, sample
