# Helpers and input functions shared by every stage.

import os
import sys
from pathlib import Path

# Jobs (local, conda or SLURM) import cwnnk from this checkout even without `pip install`.
_LIB = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, _LIB)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [_LIB, os.environ.get("PYTHONPATH")])))

import cwnnk.config

try:
    config.update(cwnnk.config.validate(config))
except cwnnk.config.ConfigError as err:
    sys.exit(f"cwnnk: {err}")

R = config["results"]
MODELS = cwnnk.config.expand_models(config)
TRAINED = [m for m, e in MODELS.items() if e["kind"] == "trained"]
EXTERNAL = [m for m, e in MODELS.items() if e["kind"] == "external"]
# A GPU is requested from the scheduler only when the config names a CUDA device explicitly.
GPUS = 1 if config["device"].startswith("cuda") else 0


def _names_regex(names):
    import re

    return "|".join(re.escape(n) for n in names) or "$^"


wildcard_constraints:
    model=_names_regex(MODELS),
    layer=r"[^/]+",


def model_entry(wildcards):
    return MODELS[wildcards.model]


def _resolve_layers():
    """Every model's extracted layers, checked at parse time (an unknown name stops the run)."""
    from cwnnk.extract import resolve_layers

    try:
        return {m: resolve_layers(e["spec"], config["extract"]["layers"], m) for m, e in MODELS.items()}
    except ValueError as err:
        sys.exit(f"cwnnk: {err}")


LAYERS = _resolve_layers()


def layers_of(model):
    """Stable names of the layers extracted for a model, in depth order (one graph job each)."""
    return LAYERS[model]


def all_outputs():
    """The default target: every table and figure (which pull in every earlier stage)."""
    return [
        *expand(f"{R}/tables/{{table}}.csv", table=["overlap", "channels", "pairwise", "solvers", "manifolds"]),
        *expand(f"{R}/figures/{{figure}}.{{ext}}", figure=["F1", "F2", "F3", "F4", "F5", "F6"], ext=["pdf", "png"]),
    ]


def graph_params(wildcards):
    """Engine parameters of a graphs job (a change reruns graphs and everything after it)."""
    return dict(config["graphs"], seed=config["extract"]["seed"], device=config["device"])
