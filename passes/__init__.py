"""torch -> torch passes: masks, N:M, folding (and the fine-tuning passes built on them).

Importing this package registers every pass. Nothing here imports ``exporters`` or
``sparsify_cli``.
"""

from passes import fold, magnitude  # noqa: F401  (registration)
from passes.errors import SparsifyError
from passes.fold import FoldConfig
from passes.magnitude import NMConfig
from passes.pattern import NMPattern
from passes.registry import PassContext, config_from_dict, config_to_dict, run_passes
from passes.selection import LayerChoice, Selection, select_layers

__all__ = [
    "FoldConfig",
    "LayerChoice",
    "NMConfig",
    "NMPattern",
    "PassContext",
    "Selection",
    "SparsifyError",
    "config_from_dict",
    "config_to_dict",
    "run_passes",
    "select_layers",
]
