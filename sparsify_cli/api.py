"""Python API: sparsify inside your own training loop, then export like ``sparsify convert``.

In the style of NVIDIA ASP / ModelOpt: :func:`prepare` picks the layers (the CLI's selection:
Linear/Conv2d whose reduction size divides by M, the output head kept dense) and attaches the
method's masks; it returns a :class:`~sparsify_cli.passes.sparsifier.Sparsifier` whose hooks
your loop calls. ``finalize()`` folds the masks into exact zeros and returns the manifest.

>>> sp = prepare(model, nm="2:4", method="maxq", example=x, epochs=E)  # doctest: +SKIP
>>> for epoch in range(E):                                               # doctest: +SKIP
...     sp.epoch_start(epoch)
...     for xb, yb in loader:
...         loss = F.cross_entropy(model(xb), yb)
...         optimizer.zero_grad(); loss.backward(); optimizer.step()
...         sp.step(optimizer)
>>> manifest = sp.finalize()                                             # doctest: +SKIP

There is one implementation: the CLI's fine-tuning loop
(:func:`sparsify_cli.passes.training.fit`) drives the very same ``Sparsifier``, so the same seed,
data order and optimizer give the same masks either way (``tests/test_python_api.py``).
See docs/python_api.md.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from sparsify_cli.passes.asp import ASPConfig
from sparsify_cli.passes.dst import METHODS as DST_METHODS
from sparsify_cli.passes.dst import DSTConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.finetune import FinetuneConfig
from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.maxq import MaxQConfig
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.selection import Selection, select_layers
from sparsify_cli.passes.sparse_ift import ift_targets
from sparsify_cli.passes.sparsifier import Sparsifier
from sparsify_cli.passes.sparsifier import prepare as attach
from sparsify_cli.passes.srste import SRSTEConfig

NM_METHODS = {"asp": ASPConfig, "srste": SRSTEConfig, "maxq": MaxQConfig}
"""``method`` -> the config of an N:M method; DST methods (``rigl``, ``srigl``, ...) take
``sparsity`` instead of ``nm``."""

LOOP_OPTIONS = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"n", "m", "epochs"}
"""Settings of the CLI's own loop (learning rate, optimizer, objective): in your loop they are
yours, so :func:`prepare` refuses them rather than ignore them."""

__all__ = ["Sparsifier", "prepare"]


def _config(method: str, nm: str, epochs: int, sparsity: float, options: dict[str, Any]) -> Any:
    if method in NM_METHODS:
        if options.keys() & LOOP_OPTIONS:
            raise SparsifyError(
                f"prepare() does not take {sorted(options.keys() & LOOP_OPTIONS)}",
                expected="method settings only: your loop owns lr, optimizer and the loss",
                fix="set them on your optimizer and loss",
            )
        pattern = NMPattern.parse(nm)
        return NM_METHODS[method](n=pattern.n, m=pattern.m, epochs=epochs, **options)
    if method in DST_METHODS:
        if "lr" in options:
            raise SparsifyError("prepare() does not take 'lr'", fix="set it on your optimizer")
        return DSTConfig(method=method, sparsity=sparsity, epochs=epochs, **options)
    raise SparsifyError(
        f"unknown method {method!r} for prepare()",
        expected=f"one of {(*NM_METHODS, *DST_METHODS)}",
    )


def prepare(
    model: nn.Module,
    nm: str = "2:4",
    method: str = "maxq",
    example: Example | None = None,
    *,
    epochs: int = 8,
    sparsity: float = 0.75,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sparsify_head: bool = False,
    seed: int = 0,
    steps_per_epoch: int | None = None,
    keep_dense: bool = True,
    **options: Any,
) -> Sparsifier:
    """Attach ``method``'s masks to ``model`` in place and return the :class:`Sparsifier`.

    ``example`` (a batch: a tensor, or ``name -> tensor`` for several inputs) finds the layers and
    the output head, as in the CLI. ``epochs`` is how many epochs your loop runs (MaxQ's schedule
    and DST's update schedule span them); DST also needs ``steps_per_epoch``. ``options`` are the
    method's own settings (``decay``, ``tau``, ``schedule``, ``delta_t``, ``alpha``, ...). With
    ``keep_dense`` a copy of the dense model is kept as ``sp.dense`` (the baseline
    :func:`export` measures).
    """
    if example is None:
        raise SparsifyError(
            "prepare() needs an example batch",
            expected="example=<a batch of inputs> (a tensor, or name -> tensor)",
        )
    config = _config(method, nm, epochs, sparsity, options)
    selection = Selection(tuple(include), tuple(exclude), sparsify_head)
    if isinstance(config, DSTConfig):
        targets = ift_targets(model, example, selection)
    else:
        choices = select_layers(model, config.m, example, selection)
        targets = [c.name for c in choices if c.selected]
    if not targets:
        raise SparsifyError(
            "prepare() found no layer to sparsify",
            expected="Linear / Conv2d layers whose reduction size divides by M (head excluded)",
            fix="check include/exclude, or sparsify_head=True",
        )
    dense = copy.deepcopy(model).eval() if keep_dense else None
    sp = attach(model, config, targets, seed, steps_per_epoch)
    sp.dense = dense
    return sp
