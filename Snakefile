# cwnnk: channel-wise NNK graphs for channel redundancy and overlap in CNNs.
# Entry point: validates the config against workflow/schemas/config.schema.yaml (defaults
# filled in, errors name the key, the value and what is allowed), then includes one
# .smk per stage. `snakemake --cores all` runs the default experiment of config.yaml.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/graphs.smk"
include: "workflow/rules/overlap.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
