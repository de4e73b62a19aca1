"""cwnnk: channel-wise NNK graphs for channel redundancy and overlap in CNNs.

The science lives in this package; it never imports Snakemake. Heavy submodules
(torch) are imported lazily so that `import cwnnk` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "nnk": "cwnnk.engine",
    "NNKResult": "cwnnk.engine",
    "to_sparse": "cwnnk.sparse",
    "open_activations": "cwnnk.activations",
    "activations_of": "cwnnk.api",
    "cw_nnk_graphs": "cwnnk.api",
    "overlap_summary": "cwnnk.api",
    "redundancy_vs_untrained": "cwnnk.api",
    "untrained_twin": "cwnnk.models",
    "width_sweep": "cwnnk.api",
    "model_layers": "cwnnk.api",
    "LayerGraphs": "cwnnk.api",
    "prune_plan": "cwnnk.pruning",
    "prune_orders": "cwnnk.pruning",
    "apply_plan": "cwnnk.pruning",
    "masked": "cwnnk.pruning",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cwnnk' has no attribute {name!r}")


__all__ = list(_LAZY)
