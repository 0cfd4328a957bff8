"""torch -> torch passes: masks, N:M, folding (and the fine-tuning passes built on them).

Importing this package registers every pass. Nothing here imports ``exporters`` or
``sparsify_cli``.
"""

from passes import asp, fold, magnitude, maxq, srste  # noqa: F401  (registration)
from passes.asp import ASPConfig
from passes.errors import SparsifyError
from passes.fold import FoldConfig
from passes.magnitude import NMConfig
from passes.maxq import MaxQConfig
from passes.pattern import NMPattern
from passes.registry import PassContext, config_from_dict, config_to_dict, run_passes
from passes.selection import LayerChoice, Selection, select_layers
from passes.srste import SRSTEConfig

__all__ = [
    "ASPConfig",
    "FoldConfig",
    "LayerChoice",
    "MaxQConfig",
    "NMConfig",
    "NMPattern",
    "PassContext",
    "SRSTEConfig",
    "Selection",
    "SparsifyError",
    "config_from_dict",
    "config_to_dict",
    "run_passes",
    "select_layers",
]
