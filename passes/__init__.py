"""torch -> torch passes: masks, N:M, folding (and the fine-tuning passes built on them).

Importing this package registers every pass. Nothing here imports ``exporters`` or
``sparsify_cli``.
"""

from sparsify_cli.passes import (  # noqa: F401  (registration)
    asp,
    fold,
    magnitude,
    maxq,
    oneshot,
    srste,
)
from sparsify_cli.passes.asp import ASPConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.fold import FoldConfig
from sparsify_cli.passes.magnitude import NMConfig
from sparsify_cli.passes.maxq import MaxQConfig
from sparsify_cli.passes.oneshot import SparseGPTConfig, WandaConfig
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext, config_from_dict, config_to_dict, run_passes
from sparsify_cli.passes.selection import LayerChoice, Selection, select_layers
from sparsify_cli.passes.srste import SRSTEConfig

__all__ = [
    "ASPConfig",
    "FoldConfig",
    "LayerChoice",
    "MaxQConfig",
    "NMConfig",
    "NMPattern",
    "PassContext",
    "SRSTEConfig",
    "SparseGPTConfig",
    "Selection",
    "SparsifyError",
    "WandaConfig",
    "config_from_dict",
    "config_to_dict",
    "run_passes",
    "select_layers",
]
