"""Passes: a frozen config type plus a registered function ``(model, config, ctx) -> model``.

A pass is declared once::

    @dataclass(frozen=True)
    class FoldConfig:
        name: ClassVar[str] = "fold"
        next_passes: ClassVar[tuple[str, ...]] = ()

    @register_pass(FoldConfig)
    def fold_pass(model, config, ctx): ...

and run through :func:`run_passes`, which checks the declared legal order (``next_passes``, as in
Model Optimizer's ``next_modes``), runs each pass's ``ensures`` postcondition, and names the passes
that ran before a failure. Configs round-trip through plain dicts (:func:`config_to_dict`,
:func:`config_from_dict`) for recipe files; unknown keys are an error naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import Example

log = logging.getLogger(__name__)

Track = Callable[[Iterable[Any], str, int | None], Iterator[Any]]


def _no_progress(items: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
    yield from items


@dataclass
class PassContext:
    """What a pass may use besides its config: target layers, data, device, seed, progress.

    ``targets`` are the qualified names chosen by
    :func:`sparsify_cli.passes.selection.select_layers`;
    ``train`` / ``eval`` are data loaders when the run has data; ``track`` wraps a long loop in a
    progress display (the CLI passes a rich progress bar, the library default shows nothing);
    ``calibration`` is the ``(inputs, token mask)`` batch one-shot passes that measure
    activations run once (SparseGPT, Wanda); ``workdir`` is where resumable passes keep their
    checkpoints; ``teacher`` is the frozen dense
    model a distilling pass learns from when an earlier pass already changed the model (the
    pass copies the model it receives otherwise). Passes write ``metrics``
    (training history) and the fold pass records the ``manifest`` entries before masks vanish.
    """

    targets: Sequence[str] = ()
    example: Example | None = None
    train: Any = None
    eval: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    track: Track = _no_progress
    calibration: Any = None
    workdir: Any = None
    resume: bool = False
    teacher: nn.Module | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


C = TypeVar("C")
PassFn = Callable[[nn.Module, Any, PassContext], nn.Module]


@dataclass(frozen=True)
class RegisteredPass:
    config_type: type
    fn: PassFn
    ensures: Callable[[nn.Module, Any, PassContext], None] | None


_REGISTRY: dict[str, RegisteredPass] = {}


def register_pass(
    config_type: type[C], *, ensures: Callable[[nn.Module, Any, PassContext], None] | None = None
) -> Callable[[PassFn], PassFn]:
    """Register ``fn`` as the handler of ``config_type`` (whose ``name`` must be unique)."""

    def decorate(fn: PassFn) -> PassFn:
        name = config_type.name
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = RegisteredPass(config_type, fn, ensures)
        return fn

    return decorate


def _builtin() -> dict[str, RegisteredPass]:
    """The registry with every built-in pass in it (:mod:`sparsify_cli.passes.builtin`)."""
    import sparsify_cli.passes.builtin  # noqa: F401  (registers on first import)

    return _REGISTRY


def registered_passes() -> dict[str, RegisteredPass]:
    return dict(_builtin())


def _check_order(configs: Sequence[Any]) -> None:
    for before, after in zip(configs, configs[1:], strict=False):
        if after.name not in before.next_passes:
            raise SparsifyError(
                f"pass {after.name!r} cannot follow {before.name!r}",
                expected=f"one of {list(before.next_passes)} after {before.name!r}",
                found=" -> ".join(c.name for c in configs),
                fix="reorder the recipe's passes",
            )


def run_passes(model: nn.Module, configs: Sequence[Any], ctx: PassContext) -> nn.Module:
    """Run ``configs`` in order on ``model`` after checking the order is legal."""
    _check_order(configs)
    done: list[str] = []
    registry = _builtin()
    for config in configs:
        entry = registry.get(config.name)
        if entry is None or not isinstance(config, entry.config_type):
            raise SparsifyError(f"no pass registered for {type(config).__name__}")
        log.info("pass %s: %s", config.name, config)
        try:
            model = entry.fn(model, config, ctx)
            if entry.ensures is not None:
                entry.ensures(model, config, ctx)
        except SparsifyError as err:
            if done:
                err.what = f"{err.what} (in pass {config.name!r}, after {' -> '.join(done)})"
            raise
        done.append(config.name)
    return model


def config_to_dict(config: Any) -> dict[str, Any]:
    """``{"pass": name, **fields}`` for a recipe file."""
    return {"pass": config.name, **dataclasses.asdict(config)}


def config_from_dict(data: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown passes or keys raise :class:`SparsifyError`."""
    data = dict(data)
    name = data.pop("pass", None)
    registry = _builtin()
    entry = registry.get(name) if isinstance(name, str) else None
    if entry is None:
        raise SparsifyError(
            f"unknown pass {name!r} in recipe", expected=f"one of {sorted(registry)}"
        )
    known = {f.name for f in dataclasses.fields(entry.config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SparsifyError(
            f"unknown key {unknown[0]!r} for pass {name!r} in recipe",
            expected=f"keys among {sorted(known)}",
            fix=f"remove or rename {unknown[0]!r}",
        )
    fields = {f.name: f for f in dataclasses.fields(entry.config_type)}
    coerced = {
        k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
        for k, v in data.items()
    }
    try:
        return entry.config_type(**coerced)
    except (TypeError, ValueError) as err:
        raise SparsifyError(f"invalid settings for pass {name!r} in recipe: {err}") from err
