"""The explicit list of built-in passes: importing this module registers every one of them.

The registry (:mod:`sparsify_cli.passes.registry`) imports it on its first lookup, so
``config_from_dict({"pass": "dst", ...})`` or :func:`~sparsify_cli.passes.registry.run_passes`
sees every pass wherever it is called from, while ``import sparsify_cli.passes`` itself stays
cheap (no torch) for the command line's ``--help`` and for the exporters. A new pass module is
added to this list once.
"""

from sparsify_cli.passes import (  # noqa: F401  (each import registers its passes)
    asp,
    dst,
    fold,
    magnitude,
    maxq,
    oneshot,
    sparse_ift,
    srste,
)
