"""Private hidden dimensions found with torch.fx, and resizing them consistently.

A *chain* is ``producer -> [BatchNorm] -> [elementwise activations] -> consumer`` where producer
and consumer are ``Linear`` (or both ``Conv2d``, ``groups == 1``) and every intermediate value
has exactly one user. The producer's output channels are then a dimension nothing else reads:
not the residual stream (a residual ``add`` is a second user), not a pooled feature. Widening or
shrinking such a dimension is a module swap: producer output rows, the norm's channels and the
consumer's input columns change together, and the block's input / output width stays put.

In the samples this finds ``conv1 -> bn1 -> relu -> conv2`` of every residual block and
``fc1 -> GELU -> fc2`` of every transformer block; attention projections feed a reshape into
heads, so they are never chains. With ``through_pooling`` (Sparse Wide), a conv's channels may
also pass per-channel pooling and a flatten into a Linear (a plain CNN's
``conv -> relu -> maxpool -> flatten -> fc``): widening channel ``c`` then widens the Linear's
inputs at every position of ``c``.

Models that torch.fx cannot trace as a whole are traced with their untraceable submodules as
leaves (found bottom-up), so one data-dependent module does not hide the rest of the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from sparsify_cli.passes.masks import WeightMask, attach_mask, dense_weight, get_mask, is_masked

log = logging.getLogger(__name__)

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
)
ELEMENTWISE_FUNCTIONS = (torch.relu, F.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.relu6)
ELEMENTWISE_METHODS = ("relu", "sigmoid", "tanh")
# Per-channel ops that change the spatial size but never mix channels (Sparse Wide widens
# through them; see hidden_chains(through_pooling=True)).
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


class _Tracer(fx.Tracer):
    """fx tracer that keeps the given module instances opaque (leaves)."""

    def __init__(self, opaque: set[int]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.opaque or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph | None:
    """fx graph of ``model`` with untraceable submodules as leaves (``None`` if the root fails)."""
    opaque: set[int] = set()
    probe = _Tracer(opaque)
    for name, module in reversed(list(model.named_modules())):  # children before parents
        if name and probe.is_leaf_module(module, name):
            continue
        try:
            _Tracer(opaque).trace(module)
        except Exception as err:  # fx raises many types on data-dependent code
            log.debug("fx: %s kept opaque (%s)", name or "<root>", type(err).__name__)
            opaque.add(id(module))
    if id(model) in opaque:
        return None
    return _Tracer(opaque).trace(model)


def _weight_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _channels(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if side == "out" else module.in_features
    return module.out_channels if side == "out" else module.in_channels


@dataclass(frozen=True)
class Chain:
    """``producer`` output channels feed ``consumer``'s inputs, and nothing else reads them.

    ``norms`` are the BatchNorms on the path (resized with the channels); ``path`` are the fx
    nodes between producer and consumer, in order (used to evaluate a constant channel).
    ``positions`` is the number of consumer input columns per hidden channel: 1, or the spatial
    positions a flatten turned into features (conv -> pool -> flatten -> Linear: channel ``c``
    feeds columns ``c * positions ... (c + 1) * positions - 1``).
    """

    producer: str
    consumer: str
    norms: tuple[str, ...]
    path: tuple[fx.Node, ...] = field(compare=False, repr=False)
    positions: int = 1


def _is_elementwise(node: fx.Node, prev: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if not node.args or node.args[0] is not prev:
        return False
    if node.op == "call_module":
        return isinstance(modules[node.target], ELEMENTWISE_MODULES + NORMS)
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in ELEMENTWISE_METHODS


def _is_pool(node: fx.Node, prev: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if not node.args or node.args[0] is not prev:
        return False
    if node.op == "call_module":
        return isinstance(modules[node.target], POOL_MODULES)
    return node.op == "call_function" and node.target in POOL_FUNCTIONS


def _is_flatten(node: fx.Node, prev: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``[N, C, H, W] -> [N, C * H * W]``: flatten from dim 1 (module, function or method), or
    ``x.view(x.size(0), -1)`` / ``reshape``; these keep channel ``c``'s values contiguous."""
    if not node.args or node.args[0] is not prev:
        return False
    args, kwargs = node.args[1:], node.kwargs
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape") and len(args) == 2:
        size = args[0]
        return (
            isinstance(size, fx.Node)
            and size.op == "call_method"
            and size.target == "size"
            and size.args[:2] == (prev, 0)
            and args[1] == -1
        )
    return False


def hidden_chains(model: nn.Module, through_pooling: bool = False) -> list[Chain]:
    """Every producer -> (norm, activation)* -> consumer chain with a private hidden dimension.

    ``through_pooling`` also follows per-channel pooling and a flatten into a Linear consumer
    (``conv -> relu -> maxpool -> flatten -> fc``), which Sparse Wide can widen. Off for callers
    that evaluate the path on a single position or fold constants per consumer column (removing
    ablated neurons).
    """
    graph = trace(model)
    if graph is None:
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = modules[node.target]
        if not _weight_layer(producer):
            continue
        cur, path, flattened = node, [], False
        while (nxt := _sole_user(cur)) is not None:
            if nxt.op == "call_module" and _weight_layer(modules[nxt.target]):
                consumer = modules[nxt.target]
                positions = _positions(producer, consumer, flattened)
                if nxt.args and nxt.args[0] is cur and calls[nxt.target] == 1 and positions:
                    norms = tuple(
                        n.target
                        for n in path
                        if n.op == "call_module" and isinstance(modules[n.target], NORMS)
                    )
                    if all(calls[n] == 1 for n in norms):
                        chains.append(Chain(node.target, nxt.target, norms, tuple(path), positions))
                break
            conv_side = isinstance(producer, nn.Conv2d) and not flattened
            if through_pooling and conv_side and _is_pool(nxt, cur, modules):
                pass
            elif through_pooling and conv_side and _is_flatten(nxt, cur, modules):
                flattened = True
            elif not _is_elementwise(nxt, cur, modules):
                break
            path.append(nxt)
            cur = nxt
    return chains


def _sole_user(node: fx.Node) -> fx.Node | None:
    """The one node that reads ``node`` (``x.size(0)`` calls feeding only it do not count: they
    read the shape, not the values, as in ``x.view(x.size(0), -1)``)."""
    users = list(node.users)
    values = [
        u for u in users if not (u.op == "call_method" and u.target == "size" and len(u.users) == 1)
    ]
    if len(values) != 1:
        return None
    sizes = [u for u in users if u is not values[0]]
    return values[0] if all(next(iter(u.users)) is values[0] for u in sizes) else None


def _positions(producer: nn.Module, consumer: nn.Module, flattened: bool) -> int:
    """Consumer input columns per producer channel, or 0 when the two do not line up."""
    out = _channels(producer, "out")
    if flattened:  # conv channels flattened with their positions into a Linear
        ins = consumer.in_features if isinstance(consumer, nn.Linear) else 0
        return ins // out if ins and ins % out == 0 else 0
    same_kind = isinstance(consumer, nn.Linear) == isinstance(producer, nn.Linear)
    return 1 if same_kind and _channels(consumer, "in") == out else 0


def norm_after(model: nn.Module) -> dict[str, str]:
    """``{conv name: BatchNorm name}`` for every Conv2d whose only user is a BatchNorm2d."""
    graph = trace(model)
    if graph is None:
        return {}
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(modules[users[0].target], nn.BatchNorm2d)
            ):
                found[node.target] = users[0].target
    return found


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _take(old: torch.Tensor, new: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    """``new[..., j, ...] = old[..., index[j], ...]`` along ``dim`` where ``index[j] >= 0``."""
    keep = torch.nonzero(index >= 0).flatten()
    src = old.index_select(dim, index[keep].to(old.device))
    new.data.index_copy_(dim, keep.to(new.device), src.to(new.dtype))


@torch.no_grad()
def reindex(
    module: nn.Module,
    out_index: torch.Tensor | None = None,
    in_index: torch.Tensor | None = None,
    zero_fresh_inputs: bool = False,
) -> nn.Module:
    """A new Linear / Conv2d / BatchNorm whose channels are ``module``'s at the given indices.

    ``out_index[j] = i`` makes new output channel ``j`` a copy of old channel ``i``; ``-1`` makes it
    fresh (the layer type's default initialisation, or the identity for a BatchNorm). Shrinking
    uses a subset of indices, widening appends ``-1``. ``zero_fresh_inputs`` zeroes the weights of
    fresh input columns, so new hidden units do not change the function until trained. A
    :class:`WeightMask` moves with its weight (its bool mask re-indexed the same way, off for
    fresh entries).
    """
    if isinstance(module, NORMS):
        n = len(out_index)
        new = type(module)(
            n, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.to(next(iter(module.buffers())).device)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(module, attr, None) is not None:
                _take(getattr(module, attr), getattr(new, attr), 0, out_index)
        if module.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new
    masked = is_masked(module)
    weight = dense_weight(module).detach().clone()
    mask = get_mask(module).mask.clone() if masked else None
    pattern = get_mask(module).pattern if masked else None
    out_n = len(out_index) if out_index is not None else weight.shape[0]
    in_n = len(in_index) if in_index is not None else weight.shape[1]
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        new = nn.Linear(in_n, out_n, bias=bias)
    else:
        new = nn.Conv2d(
            in_n,
            out_n,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            1,
            bias,
            module.padding_mode,
        )
    new.to(device=weight.device, dtype=weight.dtype)
    out_index = torch.arange(weight.shape[0]) if out_index is None else out_index
    in_index = torch.arange(weight.shape[1]) if in_index is None else in_index
    rows = torch.nonzero(out_index >= 0).flatten()
    cols = torch.nonzero(in_index >= 0).flatten()

    def block(old: torch.Tensor) -> torch.Tensor:
        dev = old.device
        return old.index_select(0, out_index[rows].to(dev)).index_select(1, in_index[cols].to(dev))

    if zero_fresh_inputs:
        new.weight.data[:, in_index < 0] = 0
    new.weight.data[rows.unsqueeze(1), cols.unsqueeze(0)] = block(weight)
    if bias:
        _take(module.bias.detach(), new.bias, 0, out_index)
    if masked:
        new_mask = torch.zeros(new.weight.shape, dtype=torch.bool, device=weight.device)
        new_mask[rows.unsqueeze(1), cols.unsqueeze(0)] = block(mask)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        attach_mask(new, WeightMask(new_mask, pattern))
    return new


def resize_chain(model: nn.Module, chain: Chain, index: torch.Tensor) -> None:
    """Re-index the hidden channels of ``chain`` (producer rows, norms, consumer columns).

    Fresh channels (``-1``) get default-initialised producer rows and zero consumer columns: the
    function is unchanged (Net2Net-style) and the new units receive gradient.
    """
    producer = model.get_submodule(chain.producer)
    set_module(model, chain.producer, reindex(producer, out_index=index))
    for norm in chain.norms:
        set_module(model, norm, reindex(model.get_submodule(norm), out_index=index))
    columns = index
    if chain.positions > 1:  # channel c owns consumer columns c * P ... c * P + P - 1
        offsets = torch.arange(chain.positions)
        columns = torch.where(
            index[:, None] >= 0, index[:, None] * chain.positions + offsets, -1
        ).flatten()
    consumer = reindex(
        model.get_submodule(chain.consumer), in_index=columns, zero_fresh_inputs=True
    )
    set_module(model, chain.consumer, consumer)
