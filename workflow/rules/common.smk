# Validation and input functions shared by every stage; no rules.

import os
import sys
from pathlib import Path

# Jobs (local, conda or SLURM) import cwnnk from this checkout even without `pip install`.
_LIB = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, _LIB)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [_LIB, os.environ.get("PYTHONPATH")]))
)

import cwnnk.config
import cwnnk.cpu
import cwnnk.preflight
from cwnnk.products import FIGURE_FORMATS, FIGURES, TABLES

# The config is validated and every stage's parameters are built here, once (cwnnk.params). A
# rule's params hold each object's canonical dict, since Snakemake notices changed params only
# in builtin values; the script rebuilds the same object with `from_dict`.
try:
    config.update(cwnnk.config.validate(config))
    EXP = cwnnk.config.Experiment.from_config(config)
    # What would fail a job, checked before Snakemake deletes any output (dry runs included).
    cwnnk.preflight.check(EXP)
except cwnnk.config.ConfigError as err:
    sys.exit(f"cwnnk: {err}")

# Jobs run torch's AVX2 kernels whatever the processor offers, so that their numbers repeat on other x86
# machines (cwnnk.cpu); jobs inherit this environment, locally and on SLURM.
os.environ.update(cwnnk.cpu.code_path_environment(config["cpu_code_path"]))

R = config["results"]
FRONT_PAGE = os.path.abspath(f"{R}/report/front_page.rst")
# Each entry's keys sorted, so that the config's key order never changes a rule's params.
MODELS = {name: cwnnk.preflight.canonical(entry) for name, entry in EXP.models.items()}
TRAINED = [m for m, e in MODELS.items() if e["kind"] == "trained"]
EXTERNAL = [m for m, e in MODELS.items() if e["kind"] == "external"]


def _names_regex(names):
    import re

    return "|".join(re.escape(n) for n in names) or "$^"


wildcard_constraints:
    model=_names_regex(MODELS),
    layer=r"[^/]+",


def model_entry(wildcards):
    return MODELS[wildcards.model]


def layers_of(model):
    """Stable names of the layers extracted for a model, in depth order (one graph job each)."""
    return list(EXP.layers[model])


# The tables a run writes: the calibration tables (F5, F6) only where figures.calibration is on.
RUN_TABLES = [t for t in TABLES if EXP.calibration or t not in ("manifolds", "solvers")]


def all_outputs():
    """The default target: every table and figure (which pull in every earlier stage)."""
    return [
        *expand(f"{R}/tables/{{table}}.csv", table=RUN_TABLES),
        *expand(f"{R}/figures/{{figure}}.{{ext}}", figure=FIGURES, ext=FIGURE_FORMATS),
    ]


# Resources, declared here once for local runs and SLURM alike: memory in MB (doubled on each
# retry) and runtime, sized for the CIFAR-10 paper experiment; a rule that can use a GPU asks
# for one when the config names a CUDA device. The SLURM profile adds account and partition.
# Site settings from the environment (docs/cluster.md): CWNNK_SLURM_MAX_MEM_MB caps every
# memory request; CWNNK_SLURM_GPU_PARTITION and CWNNK_SLURM_GPU_MODEL apply to GPU jobs.
RESOURCES = {
    "train": dict(mem_mb=8000, runtime="4h", gpu=True),
    "import_checkpoint": dict(mem_mb=8000, runtime="1h", gpu=True),
    "extract": dict(mem_mb=8000, runtime="1h", gpu=True),
    "graphs": dict(mem_mb=16000, runtime="4h", gpu=True),
    "overlap": dict(mem_mb=8000, runtime="1h", gpu=False),
    "solvers": dict(mem_mb=16000, runtime="4h", gpu=True),
    "tables": dict(mem_mb=4000, runtime="30m", gpu=False),
    "manifolds": dict(mem_mb=8000, runtime="1h", gpu=False),
    "figures": dict(mem_mb=4000, runtime="30m", gpu=False),
    "pruning": dict(mem_mb=8000, runtime="4h", gpu=True),
}
GPUS = 1 if config["device"].startswith("cuda") else 0
_SITE = {
    name: os.environ.get(f"CWNNK_SLURM_{name.upper()}", "").strip()
    for name in ("max_mem_mb", "gpu_partition", "gpu_model")
}


def job_resources(rule):
    """The resources of a rule's jobs (use as `resources: **job_resources("rule")`)."""
    spec = RESOURCES[rule]
    cap = int(_SITE["max_mem_mb"] or 0)
    resources = dict(
        mem_mb=lambda wildcards, attempt: min(
            spec["mem_mb"] * attempt, cap or spec["mem_mb"] * attempt
        ),
        runtime=spec["runtime"],
        gpu=GPUS if spec["gpu"] else 0,
        # an execution setting, not a tracked param (cwnnk.params._Params.tracked): changing it reruns nothing
        device=config["device"],
    )
    if spec["gpu"] and GPUS:
        if _SITE["gpu_partition"]:
            resources["slurm_partition"] = _SITE["gpu_partition"]
        if _SITE["gpu_model"]:
            resources["gpu_model"] = _SITE["gpu_model"]
    return resources
