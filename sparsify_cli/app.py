"""The ``sparsify`` command line: parse, build options, call the library, render.

No algorithm lives here. Domain errors (:class:`sparsify_cli.passes.errors.SparsifyError`) become
one line on
stderr and exit code 1; anything unexpected becomes one line and exit code 3; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sparsify_cli.passes.errors import PeerFailed, SparsifyError, os_error

# Options shared by several commands, declared once.
DebugOpt = Annotated[bool, typer.Option(help="Show tracebacks.")]
MinSpeedupOpt = Annotated[
    float | None, typer.Option(help="CI gate: exit 4 if an artifact is slower than this.")
]
GateDropOpt = Annotated[
    float | None, typer.Option(help="CI gate: exit 4 if accuracy drops more than this many points.")
]
ThreadsOpt = Annotated[int, typer.Option(help="ONNX Runtime intra-op threads.")]
BatchSizesOpt = Annotated[str, typer.Option(help="Batch sizes to time.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress output.")]
DurationOpt = Annotated[
    float,
    typer.Option(
        "--duration",
        "--bench-seconds",
        help="Seconds of timing per artifact and batch, at least; more (up to 4x) until the "
        "speedups are stable.",
    ),
]
WarmupOpt = Annotated[
    int | None,
    typer.Option(
        "--warmup",
        help="Untimed calls per artifact and batch first [default: up to 10, stopping once "
        "they took --duration]",
        show_default=False,
    ),
]
IterationsOpt = Annotated[
    int | None,
    typer.Option(
        "--iterations",
        help="Exactly this many timed calls per artifact and batch (replaces --duration).",
    ),
]
TrustOpt = Annotated[
    bool, typer.Option(help="Allow unpickling a whole module (runs code from the file).")
]

app = typer.Typer(
    help="Dense PyTorch checkpoint -> verified sparse ONNX artifacts with a latency report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _width(stream: object) -> int | None:
    """Rich's own width (the terminal's, or ``COLUMNS``), else 140 for logs and pipes."""
    tty = getattr(stream, "isatty", lambda: False)()
    return None if tty or os.environ.get("COLUMNS", "").isdigit() else 140


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn failures into one clear line and a non-zero exit (tracebacks only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except PeerFailed:  # another rank failed and printed why
        raise typer.Exit(1) from None
    except SparsifyError as err:
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: no partial artifact was written")
        raise typer.Exit(130) from None
    except OSError as err:  # disk full, read-only folder, permissions: the environment's
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] {escape(str(os_error(err)))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
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
    """Progress on stderr: one line per finished step with its duration, bars for long loops.

    On a terminal a loop is a live bar; in a log (no TTY: CI, a pipe) each loop prints one line
    when it ends (an epoch: its steps and time), so a CI log still shows every epoch. Under
    torchrun only rank 0 reports. ``quiet`` (``--quiet``, ``--json``) prints nothing here.
    """
    import time

    from sparsify_cli.passes import distributed
    from sparsify_cli.pipeline import Hooks

    if quiet or not distributed.is_main():
        yield Hooks()
        return
    live = err_console.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not live,
    )
    step: list[tuple[str, float, Any]] = []

    def track(items, description, total=None):
        task = progress.add_task(description, total=total)
        start, count = time.perf_counter(), 0
        for item in items:
            yield item
            count += 1
            progress.advance(task)
        progress.remove_task(task)
        if not live:
            err_console.print(
                f"  {escape(description)}: {count} done in {time.perf_counter() - start:.1f} s",
                highlight=False,
            )

    def finish() -> None:
        if step:
            message, start, task = step.pop()
            if task is not None:
                progress.remove_task(task)
            took = time.perf_counter() - start
            err_console.print(f"[dim]- {escape(message)} ({took:.1f} s)[/]", highlight=False)

    def status(message: str) -> None:
        finish()
        # on a terminal the step under way shows as a spinner row until it ends
        task = progress.add_task(f"[dim]{escape(message)}[/]", total=None) if live else None
        step.append((message, time.perf_counter(), task))

    with progress:
        try:
            yield Hooks(track=track, status=status)
        finally:
            finish()


def _exports(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


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


def _version(value: bool) -> None:
    if value:
        from sparsify_cli.report import tool_version

        typer.echo(f"sparsify {tool_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_version, help="Print the version."),
    ] = False,
) -> None:
    """sparsify: dense PyTorch checkpoint -> verified sparse artifacts."""


@app.command()
def convert(
    ctx: typer.Context,
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            help="State_dict (.pt/.safetensors), Hugging Face folder, or a sample name "
            "(or from --recipe; none with --arch: random init)."
        ),
    ] = None,
    nm: Annotated[str, typer.Option("--nm", help="N:M pattern along the reduction axis.")] = "2:4",
    arch: Annotated[
        str | None,
        typer.Option(help="MODULE:CALLABLE that builds the model, or timm:NAME."),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Example input, batch first: 1,3,32,32.")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="Named input NAME:SHAPE:DTYPE[:RANGE], repeatable, in forward's order: "
            "input_ids:1x128:int64:30522.",
        ),
    ] = None,
    example_input: Annotated[
        str | None, typer.Option(help=".npz with one example array per model input.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="magnitude (one-shot), or fine-tuned: asp, srste, maxq.")
    ] = "magnitude",
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset name, .npz (x, y[, x_test, y_test]), or for a Hugging Face folder a "
            "text file (one example per line) or .jsonl with text[, label]."
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Tokens per example for text --data (default 128; longer truncated)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (must not exist).")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only layers matching this name pattern (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip layers matching this name pattern (repeatable).")
    ] = None,
    sparsify_head: Annotated[bool, typer.Option(help="Sparsify the output head too.")] = False,
    batch_sizes: BatchSizesOpt = "1,32",
    threads: ThreadsOpt = 1,
    bench_seconds: DurationOpt = 1.0,
    bench_warmup: WarmupOpt = None,
    bench_iterations: IterationsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for masks and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs (asp, srste, maxq, --dst).")] = 8,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate (cosine decay).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Fine-tuning batch size.")] = 64,
    optimizer: Annotated[str, typer.Option(help="Fine-tuning optimizer: adamw or sgd.")] = "adamw",
    distill: Annotated[
        bool, typer.Option(help="Distil from the dense model even when labels are given.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted fine-tuning from its last epoch.")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="Training device (default: cuda when present, else cpu).")
    ] = None,
    trust_checkpoint: TrustOpt = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    export: Annotated[
        str, typer.Option(help="Artifacts, comma-separated: onnx,condensed,tensorrt.")
    ] = "onnx",
    condensed_ops: Annotated[
        str, typer.Option(help="Condensed layers as 'custom' kernel ops or 'standard' ONNX ops.")
    ] = "custom",
    condensed_layers: Annotated[
        str,
        typer.Option(
            help="Condensed export: 'auto' times each layer at batch 1 and keeps it dense where "
            "dense is faster; 'all' condenses every eligible layer (same file every run)."
        ),
    ] = "auto",
    quantize: Annotated[
        str | None, typer.Option(help="Also write int8: int8 (static QDQ) or int8-dynamic.")
    ] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration rows (training split).")] = 256,
    calib_method: Annotated[
        str, typer.Option(help="Calibration: minmax, entropy or percentile.")
    ] = "minmax",
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Int8 accuracy budget (points vs fp32 sparse); keeps layers float."),
    ] = None,
    reduce_range: Annotated[
        bool | None,
        typer.Option(
            "--reduce-range/--full-range",
            help="7-bit int8 weights (default: only on CPUs without VNNI).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print report.json instead of tables.")
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Replay a recipe.yaml; options given here override its values."),
    ] = None,
    min_speedup: MinSpeedupOpt = None,
    gate_max_accuracy_drop: GateDropOpt = None,
    ift: Annotated[
        str | None, typer.Option(help="Sparse-IFT family: wide, parallel, factorized, doped.")
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            help="Sparsity for --ift / --dst (default 0.75), or constant fan-in sparsity for "
            "--method wanda / sparsegpt (instead of --nm)."
        ),
    ] = None,
    dst: Annotated[
        str | None, typer.Option(help="Dynamic sparse training: static, set, rigl, srigl.")
    ] = None,
    mask_init: Annotated[str, typer.Option(help="Layer sparsities: uniform or erk.")] = "uniform",
    delta_t: Annotated[
        int | None,
        typer.Option(
            "--delta-t",
            help="--dst set/rigl/srigl: steps between mask updates (default: 10 updates a run).",
        ),
    ] = None,
) -> None:
    """Sparsify a dense checkpoint, export ONNX, verify it and time it against dense.

    Example: sparsify convert digits_cnn --nm 2:4
    """
    from sparsify_cli.naming import refuse_existing

    with user_errors(debug):  # an existing --out is refused before torch is even imported
        refuse_existing(out, force)
    import json

    from sparsify_cli.options import options_from_cli
    from sparsify_cli.passes import distributed
    from sparsify_cli.pipeline import convert as run_convert
    from sparsify_cli.report import render

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    with user_errors(debug), distributed.session(device):  # torchrun: join the process group
        given = {
            "source" if name == "checkpoint" else name
            for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
        }
        if checkpoint is None and recipe is None and arch is None:
            raise SparsifyError(
                "no checkpoint given",
                fix="pass a checkpoint, --arch (random init) or --recipe FILE",
            )
        params = dict(
            source=checkpoint,
            nm=nm,
            arch=arch,
            input_shape=input_shape,
            method=method,
            data=data,
            max_length=max_length,
            out=str(out) if out else None,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            sparsify_head=sparsify_head,
            batch_sizes=_batches(batch_sizes),
            threads=threads,
            bench_seconds=bench_seconds,
            bench_warmup=bench_warmup,
            bench_iterations=bench_iterations,
            seed=seed,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            distill=distill,
            resume=resume,
            device=device,
            trust_checkpoint=trust_checkpoint,
            force=force,
            export=_exports(export),
            condensed_ops=condensed_ops,
            condensed_layers=condensed_layers,
            quantize=quantize,
            calib_size=calib_size,
            calib_method=calib_method,
            max_accuracy_drop=max_accuracy_drop,
            reduce_range=reduce_range,
            ift=ift,
            sparsity=sparsity,
            dst=dst,
            mask_init=mask_init,
            delta_t=delta_t,
            inputs=tuple(inputs or ()),
            example_input=example_input,
        )
        opts = options_from_cli(params, given, recipe)
        with progress_hooks(quiet or json_out) as hooks:
            report, folder = run_convert(opts, hooks, gate_max_accuracy_drop is not None)
        if not distributed.is_main():  # torchrun's other ranks: rank 0 prints and writes
            return
        if json_out:
            typer.echo(json.dumps(report, indent=2))
        else:
            render(report, console)
            written = ", ".join(sorted(p.name + "/" * p.is_dir() for p in folder.iterdir()))
            console.print(f"wrote [bold]{escape(str(folder))}[/]: {escape(written)}")
        _gate(report, min_speedup, gate_max_accuracy_drop)


def _gate(doc: dict, min_speedup: float | None, max_accuracy_drop: float | None) -> None:
    """Exit with code 4 naming every artifact that missed a CI gate."""
    from sparsify_cli.gates import GATE_EXIT, check_gates

    failures = check_gates(doc, min_speedup, max_accuracy_drop)
    for failure in failures:
        err_console.print(f"[bold red]gate failed:[/] {failure}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(GATE_EXIT)


@app.command()
def inspect(
    source: Annotated[
        str,
        typer.Argument(help="Checkpoint or sample name, output folder, or .onnx file."),
    ],
    nm: Annotated[
        str | None, typer.Option("--nm", help="Judge eligibility for this N:M (default 2:4).")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="MODULE:CALLABLE that builds the model.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Example input, batch first: 1,3,32,32.")
    ] = None,
    trust_checkpoint: TrustOpt = False,
    tensorrt: Annotated[
        str | None,
        typer.Option(help="Also predict per layer whether 2:4 pays on TensorRT: fp16 or int8."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Per-layer op, shape, reduction axis, eligibility, N:M pattern, density, MACs, params.

    Example: sparsify inspect out/model.onnx
    """
    import json

    from sparsify_cli.inspecting import add_tensorrt_prediction, inspect_path, render_inspect
    from sparsify_cli.options import TENSORRT_PRECISIONS, check_choice

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    with user_errors(debug):
        if tensorrt is not None:
            check_choice("--tensorrt", tensorrt, TENSORRT_PRECISIONS)
        doc = inspect_path(source, nm, arch, input_shape, None, trust_checkpoint)
        if tensorrt is not None:
            add_tensorrt_prediction(doc, tensorrt)
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
        else:
            render_inspect(doc, console)


@app.command()
def bench(
    paths: Annotated[list[str], typer.Argument(help="Output folders and/or .onnx artifacts.")],
    baseline: Annotated[
        str | None, typer.Option(help="Dense .onnx to compare with (default: model_dense.onnx).")
    ] = None,
    batch_sizes: BatchSizesOpt = "1,32",
    threads: ThreadsOpt = 1,
    bench_seconds: DurationOpt = 1.0,
    warmup: WarmupOpt = None,
    iterations: IterationsOpt = None,
    data: Annotated[
        str | None, typer.Option(help="Measure accuracy too on this dataset name or .npz.")
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="Shape of a model's one input when the file's is dynamic: 1,3,32,32."),
    ] = None,
    shapes: Annotated[
        str | None,
        typer.Option(
            help="Dynamic input axes by name, batch first (the batch comes from "
            "--batch-sizes): input_ids:1x128,attention_mask:1x128."
        ),
    ] = None,
    min_speedup: MinSpeedupOpt = None,
    gate_max_accuracy_drop: GateDropOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Time artifacts in ONNX Runtime with the dense baseline in the same run.

    Example: sparsify bench out/ --batch-sizes 1,32 --threads 2
    """
    import json

    from sparsify_cli.bench import bench as run_bench
    from sparsify_cli.bench import parse_shapes, render_bench
    from sparsify_cli.exporters.latency import LatencySettings
    from sparsify_cli.loading import parse_input_shape

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    with user_errors(debug):
        if input_shape and shapes:
            raise SparsifyError(
                "--input-shape and --shapes both give input shapes",
                fix="use --shapes NAME:DIMS (--input-shape is for a model with one input)",
            )
        settings = LatencySettings(
            _batches(batch_sizes), threads, warmup, bench_seconds, iterations
        )
        dims = parse_shapes(shapes) or ({"": parse_input_shape(input_shape)} if input_shape else {})
        with progress_hooks(quiet or json_out) as hooks:
            doc = run_bench(paths, settings, baseline, data, dims, hooks.track)
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
        else:
            render_bench(doc, console)
        _gate(doc, min_speedup, gate_max_accuracy_drop)


@app.command("report")
def report_cmd(
    outdir: Annotated[Path, typer.Argument(help="Output folder of convert (holds report.json).")],
    debug: DebugOpt = False,
) -> None:
    """Regenerate report.html from the report.json of an output folder.

    Example: sparsify report out/
    """
    import json

    from sparsify_cli.html_report import write_html
    from sparsify_cli.validation import report_document

    with user_errors(debug):
        source = outdir / "report.json"
        try:
            report = report_document(json.loads(source.read_text(encoding="utf-8")), str(source))
        except (OSError, ValueError) as err:
            raise SparsifyError(
                f"cannot read {source}",
                expected="the output folder of sparsify convert",
                found=type(err).__name__,
            ) from err
        console.print(f"wrote [bold]{write_html(outdir, report)}[/]")


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: staging folders are removed, nothing half-written stays."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    sys.exit(main())
