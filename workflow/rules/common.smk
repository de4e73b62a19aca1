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


def all_outputs():
    return expand(f"{R}/models/{{model}}/metrics.json", model=MODELS)
