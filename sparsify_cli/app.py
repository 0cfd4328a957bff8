"""The ``sparsify`` command line: parse, build options, call the library, render.

No algorithm lives here. Domain errors (:class:`passes.errors.SparsifyError`) become one line on
stderr and exit code 1; anything unexpected becomes one line and exit code 3; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from passes.errors import SparsifyError

app = typer.Typer(
    help="Dense PyTorch checkpoint -> verified sparse ONNX artifacts with a latency report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn failures into one clear line and a non-zero exit (tracebacks only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except SparsifyError as err:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: no partial artifact was written")
        raise typer.Exit(130) from None
    except Exception as err:
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(err).__name__}: {err} "
            "(run again with --debug for the traceback, and report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3) from None


@contextlib.contextmanager
def progress_hooks(quiet: bool) -> Iterator[object]:
    """Rich progress bars for long loops and a status line for each stage."""
    from sparsify_cli.pipeline import Hooks

    if quiet:
        yield Hooks()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=True,
    )

    def track(items, description, total=None):
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)
        progress.remove_task(task)

    def status(message: str) -> None:
        err_console.print(f"[dim]- {message}[/]")

    with progress:
        yield Hooks(track=track, status=status)


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(","))
    except ValueError:
        values = ()
    if not values or any(b < 1 for b in values):
        raise SparsifyError(
            f"cannot read --batch-sizes {text!r}",
            expected="comma-separated integers >= 1, e.g. 1,32",
        )
    return values


@app.callback()
def _root() -> None:
    """sparsify: dense PyTorch checkpoint -> verified sparse artifacts."""


@app.command()
def convert(
    checkpoint: Annotated[
        str, typer.Argument(help="State_dict (.pt/.safetensors), or a sample name.")
    ],
    nm: Annotated[str, typer.Option("--nm", help="N:M pattern along the reduction axis.")] = "2:4",
    arch: Annotated[str | None, typer.Option(help="MODULE:CALLABLE that builds the model.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Example input, batch first: 1,3,32,32.")
    ] = None,
    method: Annotated[str, typer.Option(help="Sparsification method.")] = "magnitude",
    data: Annotated[
        str | None, typer.Option(help="Dataset name or .npz (x, y[, x_test, y_test]).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (must not exist).")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only layers matching this name pattern (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip layers matching this name pattern (repeatable).")
    ] = None,
    sparsify_head: Annotated[bool, typer.Option(help="Sparsify the output head too.")] = False,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes to time.")] = "1,32",
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")] = 1,
    bench_seconds: Annotated[
        float, typer.Option(help="Timing budget per artifact and batch.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for masks and training.")] = 0,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow unpickling a whole module (runs code from the file).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of tables.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
    ift: Annotated[
        str | None, typer.Option(help="Sparse-IFT family: wide, parallel, factorized, doped.")
    ] = None,
    sparsity: Annotated[float, typer.Option(help="Sparsity for --ift / --dst.")] = 0.75,
    dst: Annotated[
        str | None, typer.Option(help="Dynamic sparse training: static, set, rigl, srigl.")
    ] = None,
    mask_init: Annotated[str, typer.Option(help="Layer sparsities: uniform or erk.")] = "uniform",
    epochs: Annotated[int, typer.Option(help="Training epochs (--dst).")] = 10,
) -> None:
    """Sparsify a dense checkpoint, export ONNX, verify it and time it against dense.

    Example: sparsify convert digits_cnn --nm 2:4
    """
    import json

    from sparsify_cli.pipeline import ConvertOptions
    from sparsify_cli.pipeline import convert as run_convert
    from sparsify_cli.report import render

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    with user_errors(debug):
        opts = ConvertOptions(
            source=checkpoint,
            nm=nm,
            arch=arch,
            input_shape=input_shape,
            method=method,
            data=data,
            out=str(out) if out else None,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            sparsify_head=sparsify_head,
            batch_sizes=_batches(batch_sizes),
            threads=threads,
            bench_seconds=bench_seconds,
            seed=seed,
            trust_checkpoint=trust_checkpoint,
            force=force,
            ift=ift,
            sparsity=sparsity,
            dst=dst,
            mask_init=mask_init,
            epochs=epochs,
        )
        with progress_hooks(quiet or json_out) as hooks:
            report, folder = run_convert(opts, hooks)
        if json_out:
            typer.echo(json.dumps(report, indent=2))
        else:
            render(report, console)
            console.print(f"wrote [bold]{folder}[/] (report.json, model.onnx, manifest)")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
