"""``recipe.yaml``: every resolved setting of a ``convert`` run, replayable with ``--recipe``.

A recipe says *what* to produce, never *where*: the options of the run (every field of the
options dataclass except ``out`` and ``force``) and the resolved pass configs
(:func:`sparsify_cli.passes.registry.config_to_dict`)::

    sparsify_recipe: 1
    options: {source: digits_cnn, nm: '2:4', method: magnitude, seed: 0, ...}
    passes:
    - {pass: magnitude, n: 2, m: 4}
    - {pass: fold}

Reading is strict: an unknown key anywhere is an error naming it, and a value of the wrong type
is an error naming the option (YAML reads an unquoted ``2:4`` as the base-60 number 124).
Options given on the command line override the recipe's. The recipe's ``passes`` are
authoritative: a list edited by hand (a DST ``delta_t``, a pass's decay) runs as written, and an
override that would re-resolve edited passes is refused rather than silently dropping the edit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sparsify_cli.passes.atomic import atomic_write_text
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.registry import config_from_dict, config_to_dict
from sparsify_cli.validation import SECURITY_OPTIONS, no_security_options

RECIPE_VERSION = 1
NOT_RECORDED = ("out", "force", "resume", "passes", *SECURITY_OPTIONS)
"""Per-invocation settings (where to write, whether to replace or resume) never replayed, the
pass configs (recorded apart, under ``passes``), and the security options, which only the
command line may turn on (a recipe is a file)."""

Opts = TypeVar("Opts")


def recipe_dict(options: Any, configs: Sequence[Any]) -> dict[str, Any]:
    """The recipe of a run with ``options`` (a dataclass) that ran the pass ``configs``."""
    recorded = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(options).items()
        if k not in NOT_RECORDED
    }
    return {
        "sparsify_recipe": RECIPE_VERSION,
        "options": recorded,
        "passes": [config_to_dict(c) for c in configs],
    }


def write_recipe(path: str | os.PathLike[str], recipe: Mapping[str, Any]) -> None:
    """Write ``recipe`` as YAML (block style, keys in the order the run resolved them)."""
    atomic_write_text(path, yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None))


def _coerce(name: str, value: Any, annotation: str, source: str) -> Any:
    """Check ``value`` against a field annotation such as ``"int"`` or ``"str | None"``."""
    optional = "None" in annotation
    base = annotation.split("|")[0].strip()
    if value is None and optional:
        return None
    kinds: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
    }
    if base.startswith("tuple"):
        item = base.removeprefix("tuple[").split(",")[0].strip()
        if isinstance(value, list | tuple) and all(
            item not in kinds or (isinstance(v, kinds[item]) and not isinstance(v, bool))
            for v in value
        ):
            return tuple(value)
        expected = f"a list of {item}" if item in kinds else "a list"
    elif base in kinds:
        ok = isinstance(value, kinds[base]) and not (base != "bool" and isinstance(value, bool))
        if ok:
            return value
        expected = f"a {base}" + (" or null" if optional else "")
    else:
        return value
    hint = " (quote it: nm: '2:4'; unquoted YAML reads 2:4 as a number)" if name == "nm" else ""
    raise SparsifyError(
        f"option {name!r} in recipe {source} has the wrong type{hint}",
        expected=expected,
        found=f"{value!r} ({type(value).__name__})",
    )


def read_recipe(
    path: str | os.PathLike[str],
    options_type: type[Opts],
    overrides: Mapping[str, Any],
    resolve_passes: Callable[[Opts], Sequence[Any]],
) -> Opts:
    """Options for a replay of the recipe at ``path``, with ``overrides`` (from the CLI) on top.

    Raises :class:`SparsifyError` naming any unknown key, badly typed value, or a ``passes``
    list that differs from what the options resolve to (edit the options, not the passes).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise SparsifyError(
            f"cannot read recipe {path}",
            expected="a recipe.yaml written by sparsify convert",
            found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
        ) from err
    if not isinstance(data, dict):
        raise SparsifyError(f"recipe {path} is not a mapping", found=type(data).__name__)
    for key in data:
        if key not in ("sparsify_recipe", "options", "passes"):
            raise SparsifyError(
                f"unknown key {key!r} in recipe {path}",
                expected="sparsify_recipe, options, passes",
                fix=f"remove or rename {key!r}",
            )
    version = data.get("sparsify_recipe")
    if type(version) is not int or version != RECIPE_VERSION:
        raise SparsifyError(
            f"recipe {path} has version {data.get('sparsify_recipe')!r}",
            expected=f"sparsify_recipe: {RECIPE_VERSION}",
        )
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    options = data.get("options") or {}
    passes = data.get("passes") or []
    if not isinstance(options, dict):
        raise SparsifyError(
            f"'options' in recipe {path} is not a mapping", found=type(options).__name__
        )
    if not isinstance(passes, list) or not all(isinstance(p, dict) for p in passes):
        raise SparsifyError(
            f"'passes' in recipe {path} is not a list of mappings",
            found=type(passes).__name__,
        )
    no_security_options(options, str(path))
    for key in options:
        if key not in fields or key in NOT_RECORDED:
            raise SparsifyError(
                f"unknown option {key!r} in recipe {path}",
                expected=f"keys among {sorted(set(fields) - set(NOT_RECORDED))}",
                fix=f"remove or rename {key!r}"
                + (" (pass it on the command line)" if key in NOT_RECORDED else ""),
            )
    values = {k: _coerce(k, v, str(fields[k].type), str(path)) for k, v in options.items()}
    recorded = [config_from_dict(p) for p in passes]
    merged = {**values, **overrides}
    missing = [
        name
        for name, f in fields.items()
        if name not in merged
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SparsifyError(
            f"recipe {path} does not set {missing[0]!r}",
            fix=f"add {missing[0]!r} under options, or give it on the command line",
        )
    try:
        opts = options_type(**merged)
    except (TypeError, ValueError) as err:
        raise SparsifyError(f"invalid options in recipe {path}: {err}") from err
    if not recorded:
        return opts
    try:
        own = list(resolve_passes(options_type(**{**values, **_only(overrides, NOT_RECORDED)})))
    except (SparsifyError, TypeError, ValueError):
        return opts  # the recipe's options alone are incomplete: the merged ones resolve
    if recorded == own:  # passes as the options resolve them: overrides apply normally
        return opts
    changed = sorted(set(overrides) - set(NOT_RECORDED))
    if changed and list(resolve_passes(opts)) != own:
        raise SparsifyError(
            f"the passes in recipe {path} were edited, and --{changed[0].replace('_', '-')} "
            "would replace them",
            expected=", ".join(str(config_to_dict(c)) for c in recorded),
            fix="edit the recipe's passes instead, or drop the override",
        )
    return dataclasses.replace(opts, passes=tuple(recorded))  # the recipe's passes run


def _only(mapping: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k in keys}
