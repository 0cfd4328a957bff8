"""Data-parallel training under ``torchrun``: the one place that talks to ``torch.distributed``.

A run is distributed when ``torchrun`` (or any launcher setting ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``) started it. Every helper here is a no-op (or
the identity) otherwise, so a plain single-process run does exactly what it did before.

What the distributed run guarantees (docs/distributed.md):

* Every rank holds the same model. DDP averages gradients, so the weights stay equal; masks that
  are functions of the weights (MaxQ, SR-STE, ASP) follow. Decisions that read rank-local data
  (RigL's dense gradients) use :func:`all_reduce_mean_` first; random choices (SET) use generators
  seeded identically on every rank. :func:`verify_in_sync` checks this at every epoch end by
  comparing a digest of all parameters and buffers, and stops the run if ranks disagree.
* DDP never broadcasts buffers during forward (``forward_sync_buffers=False``): the bool mask
  buffers and MaxQ's soft masks are recomputed identically on every rank, and a forward-time
  broadcast from rank 0 would hide a rank that diverged. BatchNorm running statistics are the one
  rank-local buffer (each rank normalises its own shard, as DDP without SyncBatchNorm does); they
  are averaged across ranks at every epoch end (:func:`average_norm_stats`).
* The data is sharded with :class:`~torch.utils.data.DistributedSampler` (seed ``--seed``,
  ``set_epoch`` every epoch); ``--batch-size`` is the *global* batch, each rank takes
  ``batch_size / world_size``, so runs on 1, 2 or 4 processes see the same global batches.
* Only rank 0 writes (checkpoints, artifacts, reports). Errors surface once: a failure before
  training is agreed on by all ranks (:func:`agree`) and printed by the lowest failing rank; after
  training the other ranks wait for rank 0 (:func:`handoff`) and exit with its outcome.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from sparsify_cli.passes.errors import PeerFailed, SparsifyError
from sparsify_cli.passes.inputs import ArrayRows, Arrays

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for every worker; all of them mean "launched distributed"."""

CONTROL_TIMEOUT = datetime.timedelta(hours=2)
"""How long ranks wait for each other outside training (rank 0 exporting and timing)."""


class CollectiveError(SparsifyError):
    """An error every rank raises identically (e.g. ranks diverged): only rank 0 prints it."""


@dataclass
class _State:
    backend: str
    rank: int
    world_size: int
    local_rank: int
    control: Any  # a gloo group with a long timeout for agreement and hand-off
    phase: str = "preparing"  # preparing -> training -> handoff
    digests: list[str] = field(default_factory=list)


_STATE: _State | None = None


def launched() -> bool:
    """True when a distributed launcher started this process (all of :data:`ENV` set)."""
    return dist.is_available() and all(k in os.environ for k in ENV)


def is_distributed() -> bool:
    return _STATE is not None


def rank() -> int:
    return _STATE.rank if _STATE else 0


def world_size() -> int:
    return _STATE.world_size if _STATE else 1


def is_main() -> bool:
    """Rank 0, the only writer (always True in a single-process run)."""
    return rank() == 0


def backend_for(device: str | None) -> str:
    """nccl when training on CUDA (the default when CUDA is present), gloo on CPU."""
    wants_cuda = device is None or device.startswith("cuda")
    return "nccl" if wants_cuda and torch.cuda.is_available() else "gloo"


def init(device: str | None = None) -> None:
    """Join the process group torchrun describes in the environment (idempotent)."""
    global _STATE
    if _STATE is not None or not launched():
        return
    backend = backend_for(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # --device cuda then means this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group(backend)
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    _STATE = _State(backend, dist.get_rank(), dist.get_world_size(), local_rank, control)
    log.info("rank %d of %d (%s)", _STATE.rank, _STATE.world_size, backend)


def shutdown() -> None:
    global _STATE
    if _STATE is None:
        return
    _STATE = None
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | None = None) -> Iterator[None]:
    """Init on entry, tear down on exit, and settle how a failing rank ends the run.

    Before :func:`agree`, a failing rank joins the agreement so the others stop too; after
    :func:`handoff`, rank 0 tells the waiting ranks whether it succeeded. A failure during
    training is rank-local: that rank reports it (its message names the rank) and torchrun stops
    the others. Errors every rank raises alike are left to rank 0 to print.
    """
    init(device)
    try:
        yield
    except Exception as err:
        if _STATE is None:
            raise
        if _STATE.phase == "preparing":
            _settle(_describe(err))
        elif _STATE.phase == "handoff" and is_main():
            _broadcast([_describe(err)])
        if not is_main() and isinstance(err, CollectiveError):
            raise PeerFailed(str(err)) from None
        if not is_main() and isinstance(err, SparsifyError):
            err.what = f"rank {rank()}: {err.what}"
        raise
    except KeyboardInterrupt:
        if not is_main():  # torchrun stopping the other ranks: rank 0 says it once
            raise PeerFailed("interrupted") from None
        raise
    else:
        if _STATE is not None and _STATE.phase == "handoff" and is_main():
            _broadcast([None])
    finally:
        shutdown()


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _settle(error: str | None) -> None:
    """All ranks exchange their outcome; raise unless every rank succeeded."""
    outcomes: list[Any] = [None] * world_size()
    dist.all_gather_object(outcomes, error, group=_STATE.control)
    failed = [r for r, e in enumerate(outcomes) if e is not None]
    _STATE.phase = "training"
    if not failed:
        return
    if error is None or rank() != failed[0]:
        raise PeerFailed(f"rank {failed[0]} failed: {outcomes[failed[0]]}")


def agree() -> None:
    """End of the preparation every rank does alike: go on only if all ranks got here."""
    if _STATE is not None and _STATE.phase == "preparing":
        _settle(None)


def handoff() -> bool:
    """After training: rank 0 goes on alone (returns False); the others wait for its outcome.

    Returns True on the other ranks once rank 0 succeeded; raises :class:`PeerFailed` if it failed.
    """
    if _STATE is None:
        return False
    _STATE.phase = "handoff"
    if is_main():
        return False
    outcome = _broadcast([None])
    if outcome[0] is not None:
        raise PeerFailed(f"rank 0 failed: {outcome[0]}")
    return True


def _broadcast(objects: list[Any]) -> list[Any]:
    dist.broadcast_object_list(objects, src=0, group=_STATE.control)
    return objects


def from_main(load: Callable[[], T]) -> T:
    """``load()`` on rank 0, its result sent to every rank (e.g. a checkpoint on rank 0's disk).

    An error on rank 0 is raised there and as :class:`PeerFailed` on the others.
    """
    if _STATE is None:
        return load()
    value, error = None, None
    if is_main():
        try:
            value = load()
        except Exception as err:
            error = err
    sent = _broadcast([value, None if error is None else _describe(error)])
    if error is not None:
        raise error
    if sent[1] is not None:
        raise PeerFailed(f"rank 0 failed: {sent[1]}")
    return sent[0]


# --- data ----------------------------------------------------------------------------------


def per_rank_batch(global_batch: int) -> int:
    """``global_batch / world_size``; the global batch must split evenly over the ranks."""
    size = world_size()
    if global_batch % size:
        raise SparsifyError(
            f"--batch-size {global_batch} does not split over {size} processes",
            expected=f"a multiple of {size} (the global batch; each rank takes 1/{size})",
            fix=f"--batch-size {max(size, global_batch - global_batch % size)}",
        )
    return global_batch // size


def sharded_loader(
    x: Arrays, y: np.ndarray | None, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """This rank's share of a deterministic loader; ``batch_size`` is the global batch.

    ``DistributedSampler`` shuffles with ``seed + epoch`` (one permutation for every world size)
    and deals it round-robin, so global batch ``k`` is the same set of rows on 1 or N ranks
    (when N divides the row count; otherwise it pads by repeating the first rows).
    """
    dataset = ArrayRows(x, y)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed
    )
    return DataLoader(
        dataset,
        batch_size=per_rank_batch(batch_size),
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Reshuffle a :class:`DistributedSampler` for ``epoch`` (no-op for other samplers)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


# --- training ------------------------------------------------------------------------------


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (masks already attached), or ``model`` itself in a single process.

    Callers keep using the bare ``model`` for callbacks, evaluation and checkpoints; only the
    training forward goes through the wrapper, whose backward averages the gradients.
    """
    if _STATE is None:
        return model
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=ids,
        forward_sync_buffers=False,
    )


def _reduce(t: torch.Tensor, op: Any) -> torch.Tensor:
    if _STATE is not None:
        dist.all_reduce(t, op=op)
    return t


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over the ranks in place (identity in a single process)."""
    if _STATE is not None:
        _reduce(t, dist.ReduceOp.SUM).div_(_STATE.world_size)
    return t


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Sums of Python numbers over the ranks (e.g. loss total and sample count)."""
    if _STATE is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    return tuple(_reduce(t, dist.ReduceOp.SUM).tolist())


def any_rank(flag: bool) -> bool:
    """True when ``flag`` holds on some rank (a non-finite loss must stop every rank)."""
    if _STATE is None:
        return flag
    t = torch.tensor([float(flag)], device=_device())
    return bool(_reduce(t, dist.ReduceOp.MAX).item())


def _device() -> torch.device:
    return torch.device("cuda") if _STATE and _STATE.backend == "nccl" else torch.device("cpu")


@torch.no_grad()
def average_norm_stats(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the ranks (each rank saw only its shard)."""
    if _STATE is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            all_reduce_mean_(module.running_mean)
            all_reduce_mean_(module.running_var)


def digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (masks included), in ``state_dict`` order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def verify_in_sync(model: nn.Module, where: str, metrics: dict[str, Any] | None = None) -> None:
    """Stop every rank with one error if the ranks' models differ; record the digests."""
    if _STATE is None:
        return
    digests: list[Any] = [None] * _STATE.world_size
    dist.all_gather_object(digests, digest(model), group=_STATE.control)
    _STATE.digests = digests
    if metrics is not None:
        metrics["distributed"] = summary()
    if len(set(digests)) > 1:
        raise CollectiveError(
            f"the {_STATE.world_size} training processes diverged at {where}",
            expected="the same weights and masks on every rank",
            found=", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests)),
            fix="report this with the command line; run without torchrun meanwhile",
        )


def summary() -> dict[str, Any]:
    """What the report records about the distributed run."""
    if _STATE is None:
        return {}
    return {
        "world_size": _STATE.world_size,
        "backend": _STATE.backend,
        "rank_digests": list(_STATE.digests),
    }
