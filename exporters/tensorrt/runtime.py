"""Run and time TensorRT engines on the GPU, trtexec-style (needs CUDA + TensorRT).

Buffers are torch CUDA tensors bound with ``context.set_tensor_address``; inference is
``context.execute_async_v3(stream)`` on a dedicated torch CUDA stream. Each timed query records
four CUDA events on that stream::

    e0 | H2D copy (pinned host -> device) | e1 | enqueue | e2 | D2H copy | e3

GPU compute time is ``e1 -> e2`` and host latency ``e0 -> e3``, the two figures trtexec reports.
Queries are issued back to back in rounds of ``round_size`` and the stream is synchronised after
each round, so the GPU stays busy while the host never runs far ahead. Several engines are timed
*interleaved* (a round of each in turn) so clock changes and neighbours hit them alike. With
``cuda_graph`` the enqueue is captured once into a CUDA graph and replayed, which removes the
per-launch CPU overhead that dominates tiny batches (trtexec ``--useCudaGraph``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli.exporters.artifact import LatencyRow
from sparsify_cli.exporters.tensorrt.availability import import_tensorrt
from sparsify_cli.exporters.tensorrt.stats import LatencyStats, latency_stats, speedup, throughput
from sparsify_cli.passes.errors import SparsifyError


@dataclass(frozen=True)
class TimingSettings:
    """trtexec's defaults: 200 ms warm-up, 3 s timed per engine and batch, >= 10 queries."""

    warmup_ms: float = 200.0
    duration_s: float = 3.0
    min_iterations: int = 10
    round_size: int = 20
    cuda_graph: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Samples:
    compute_ms: list[float] = field(default_factory=list)
    host_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass(frozen=True)
class TrtLatencyRow:
    batch: int
    gpu_compute: LatencyStats
    host_latency: LatencyStats
    queries_per_s: float
    samples_per_s: float
    speedup_vs_dense: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "gpu_compute_ms": self.gpu_compute.to_dict(),
            "host_latency_ms": self.host_latency.to_dict(),
            "queries_per_s": self.queries_per_s,
            "samples_per_s": self.samples_per_s,
            "speedup_vs_dense": self.speedup_vs_dense,
        }

    def to_row(self) -> LatencyRow:
        """The common latency row: GPU compute time percentiles (what the speedup compares),
        samples per second; host latency and queries per second kept in its extras."""
        gpu = self.gpu_compute
        return LatencyRow(
            batch=self.batch,
            p50_ms=gpu.median_ms,
            p90_ms=gpu.p90_ms,
            p99_ms=gpu.p99_ms,
            mean_ms=gpu.mean_ms,
            throughput=self.samples_per_s,
            iterations=gpu.count,
            speedup_vs_dense=self.speedup_vs_dense,
            extras={
                "timed": "gpu_compute",
                "gpu_compute_ms": gpu.to_dict(),
                "host_latency_ms": self.host_latency.to_dict(),
                "queries_per_s": self.queries_per_s,
            },
        )


INTEGER_KINDS = "iub"


def engine_feed(x: Any, dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The host arrays for an engine whose inputs are ``dtypes`` (name -> numpy dtype name).

    ``x`` is one array (the only input) or ``name -> array``. Every input keeps its kind:
    integer data (token ids, attention masks) is cast between int64 and int32 as the engine
    declares, after checking the values fit; float data feeds float inputs in the engine's
    precision. A missing input, an unknown one, or float data for an integer input is refused.
    """
    if isinstance(x, np.ndarray):
        if len(dtypes) != 1:
            raise SparsifyError(
                "the engine takes several inputs and got one array",
                expected=f"name -> array for {', '.join(dtypes)}",
            )
        x = {next(iter(dtypes)): x}
    missing, unknown = sorted(set(dtypes) - set(x)), sorted(set(x) - set(dtypes))
    if missing or unknown:
        raise SparsifyError(
            "the inputs do not match the engine's",
            expected=", ".join(dtypes),
            found=f"missing {missing or 'none'}, unknown {unknown or 'none'}",
        )
    fed = {}
    for name, dtype in dtypes.items():
        array, target = np.asarray(x[name]), np.dtype(dtype)
        if target.kind in "iu" and array.dtype.kind not in INTEGER_KINDS:
            raise SparsifyError(
                f"engine input {name} is {target} and got {array.dtype} data",
                fix="feed token ids / masks as integers",
            )
        if target.kind in "iu" and array.size:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise SparsifyError(
                    f"engine input {name} is {target}, and its values do not fit",
                    found=f"values {array.min()}..{array.max()}",
                )
        fed[name] = np.ascontiguousarray(array.astype(target, copy=False))
    return fed


def random_feed(specs: Sequence[Any], batch: int, rng: np.random.Generator) -> Any:
    """``batch`` rows of valid values for every input (``InputSpec.random``: token ids below the
    vocabulary, masks of 0/1, float noise), for timing: one array for a single input (it feeds
    the engine's only input whatever its name), else ``name -> array``. ``specs`` may also be
    the sample shape of one float input (without the batch axis)."""
    from sparsify_cli.passes.inputs import InputSpec

    if all(isinstance(d, (int, np.integer)) for d in specs):
        specs = [InputSpec("input", (1, *(int(d) for d in specs)))]
    x = {spec.name: spec.random(batch, rng) for spec in specs}
    return next(iter(x.values())) if len(x) == 1 else x


class EngineRunner:
    """One deserialised engine, its execution context and a CUDA stream (one input or several)."""

    def __init__(self, engine_path: str | os.PathLike[str]) -> None:
        import torch

        trt = import_tensorrt()
        self._torch = torch
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.inputs = [n for n in names if mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode(n) == trt.TensorIOMode.OUTPUT]
        self.max_batch = min(
            int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.inputs
        )
        self.dtypes = {
            n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name for n in self.inputs
        }
        self.stream = torch.cuda.Stream()
        self._bound: dict[str, Any] = {}
        self._shapes: tuple = ()
        self._graph: Any = None

    def _dtype(self, name: str) -> Any:
        np_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        return self._torch.from_numpy(np.empty(0, np_dtype)).dtype

    def bind(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Set every input's shape (batch first) and (re)allocate the device buffers."""
        key = tuple((n, tuple(shapes[n])) for n in self.inputs)
        if key == self._shapes:
            return
        torch = self._torch
        for name in self.inputs:
            self.context.set_input_shape(name, tuple(shapes[name]))
        self._bound = {}
        for name in [*self.inputs, *self.outputs]:
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, tensor.data_ptr())
            self._bound[name] = tensor
        self._shapes = key
        self._graph = None

    def io_buffers(self) -> tuple[dict[str, Any], Any]:
        """The bound device tensors of every input (by name) and of the first output."""
        return {n: self._bound[n] for n in self.inputs}, self._bound[self.outputs[0]]

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def capture_graph(self) -> None:
        """Capture the enqueue for the bound shapes into a CUDA graph (after one plain run)."""
        torch = self._torch
        with torch.cuda.stream(self.stream):
            self._enqueue()  # TensorRT does its lazy set-up outside the capture
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue()
        self._graph = graph

    def _launch(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        else:
            self._enqueue()

    def infer(self, x: Any) -> np.ndarray:
        """First output for inputs ``x`` (an array or ``name -> array``), in chunks of at most
        the profile's max batch."""
        torch = self._torch
        feed = engine_feed(x, self.dtypes)
        rows = len(next(iter(feed.values())))
        outs = []
        for i in range(0, rows, self.max_batch):
            chunk = {n: np.ascontiguousarray(a[i : i + self.max_batch]) for n, a in feed.items()}
            self.bind({n: a.shape for n, a in chunk.items()})
            d_in, d_out = self.io_buffers()
            with torch.cuda.stream(self.stream):
                for name, array in chunk.items():
                    d_in[name].copy_(torch.from_numpy(array), non_blocking=True)
                self._enqueue()
                out = d_out.float().cpu()
            self.stream.synchronize()
            outs.append(out.numpy())
        return np.concatenate(outs)

    def timed_round(
        self, host_in: Mapping[str, Any], host_out: Any, n: int, samples: Samples
    ) -> None:
        """``n`` back-to-back queries with events; appends their times to ``samples``."""
        torch = self._torch
        events = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(n)]
        d_in, d_out = self.io_buffers()
        start = time.perf_counter()
        with torch.cuda.stream(self.stream):
            for e0, e1, e2, e3 in events:
                e0.record(self.stream)
                for name, tensor in host_in.items():
                    d_in[name].copy_(tensor, non_blocking=True)
                e1.record(self.stream)
                self._launch()
                e2.record(self.stream)
                host_out.copy_(d_out, non_blocking=True)
                e3.record(self.stream)
        self.stream.synchronize()
        samples.wall_s += time.perf_counter() - start
        for e0, e1, e2, e3 in events:
            samples.compute_ms.append(e1.elapsed_time(e2))
            samples.host_ms.append(e0.elapsed_time(e3))


def measure_engines(
    engines: Mapping[str, str | os.PathLike[str]],
    specs: Sequence[Any],
    batch_sizes: Sequence[int],
    settings: TimingSettings = TimingSettings(),
    baseline: str | None = None,
) -> dict[str, list[TrtLatencyRow]]:
    """Time every engine at every batch size, interleaved; speedups vs ``baseline``'s median
    GPU compute time. ``specs`` (:class:`~sparsify_cli.passes.inputs.InputSpec`) say what each
    input looks like: valid random values of its dtype are fed (:func:`random_feed`)."""
    import torch

    runners = {name: EngineRunner(path) for name, path in engines.items()}
    rng = np.random.default_rng(0)
    results: dict[str, list[TrtLatencyRow]] = {name: [] for name in runners}
    for batch in batch_sizes:
        x = random_feed(specs, batch, rng)
        buffers = {}
        for name, runner in runners.items():
            feed = engine_feed(x, runner.dtypes)
            runner.bind({n: a.shape for n, a in feed.items()})
            _, d_out = runner.io_buffers()
            host_in = {n: torch.from_numpy(a).pin_memory() for n, a in feed.items()}
            host_out = torch.empty(d_out.shape, dtype=d_out.dtype).pin_memory()
            buffers[name] = (host_in, host_out)
            if settings.cuda_graph:
                runner.capture_graph()
            warm = Samples()
            deadline = time.perf_counter() + settings.warmup_ms / 1e3
            while time.perf_counter() < deadline:
                runner.timed_round(host_in, host_out, settings.round_size, warm)
        samples = {name: Samples() for name in runners}
        while any(
            s.wall_s < settings.duration_s or len(s.compute_ms) < settings.min_iterations
            for s in samples.values()
        ):
            for name, runner in runners.items():
                runner.timed_round(*buffers[name], settings.round_size, samples[name])
        for name, s in samples.items():
            qps, sps = throughput(len(s.compute_ms), batch, s.wall_s)
            results[name].append(
                TrtLatencyRow(
                    batch, latency_stats(s.compute_ms), latency_stats(s.host_ms), qps, sps
                )
            )
    if baseline is not None:
        for name, rows in results.items():
            results[name] = [
                TrtLatencyRow(
                    r.batch,
                    r.gpu_compute,
                    r.host_latency,
                    r.queries_per_s,
                    r.samples_per_s,
                    speedup(base.gpu_compute.median_ms, r.gpu_compute.median_ms),
                )
                for r, base in zip(rows, results[baseline], strict=True)
            ]
    return results
