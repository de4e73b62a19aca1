# cwnnk: channel-wise NNK graphs for channel redundancy and overlap in CNNs.
# Entry point: validates the config against workflow/schemas/config.schema.yaml (defaults
# filled in, errors name the key, the value and what is allowed), then includes one .smk
# per stage in data-flow order; workflow/rules/N_X.smk runs the science of cwnnk.X.
# `snakemake --cores all` runs the default experiment of config.yaml.

from snakemake.utils import min_version

min_version("9.0")


# A --configfile states a whole experiment: keys it leaves out take the schema's defaults, not
# config.yaml's (whose sweep would otherwise be merged into every preset).
if not workflow.overwrite_configfiles:
    # Snakemake's own message for a YAML syntax error names no line: cwnnk.preflight's does (for a
    # --configfile, which Snakemake reads before this file, run `python -m cwnnk.preflight FILE`).
    import os
    import sys

    sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))
    from cwnnk.preflight import ConfigError, load_yaml

    try:
        if os.path.exists("config.yaml"):
            load_yaml("config.yaml")
    except ConfigError as err:
        sys.exit(f"cwnnk: {err}")

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/1_train.smk"
include: "workflow/rules/2_extract.smk"
include: "workflow/rules/3_graphs.smk"
include: "workflow/rules/4_overlap.smk"
include: "workflow/rules/5_solvers.smk"
include: "workflow/rules/6_tables.smk"
include: "workflow/rules/7_manifolds.smk"
include: "workflow/rules/8_figures.smk"
include: "workflow/rules/9_pruning.smk"


# The report's front page: this run's answer per layer and its verdicts (written by the claims job, cwnnk.answer)
# above the workflow's description; the description alone until the run has written it.
report: FRONT_PAGE if os.path.exists(FRONT_PAGE) else "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_outputs(),
