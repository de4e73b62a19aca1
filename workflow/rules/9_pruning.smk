# Stage 9 (cwnnk.pruning): does redundancy matter? Each final model with a test split loses its analysed
# layers' channels by the CW-NNK order (from the overlap stage), the filters' L1 norm, APoZ (from the activation
# store) and random orders; its test accuracy before and after a short fine-tune, then one table for all.

PRUNED = EXP.pruned


rule pruning:
    input:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
        overlap=lambda wildcards: [
            f"{R}/overlap/{wildcards.model}/{layer}.json"
            for layer in layers_of(wildcards.model)
        ],
    output:
        f"{R}/pruning/{{model}}.csv",
    log:
        f"{R}/logs/pruning/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/pruning/{{model}}.tsv"
    wildcard_constraints:
        model=_names_regex(PRUNED),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("pruning"),
    params:
        entry=model_entry,
        layers=lambda wildcards: layers_of(wildcards.model),
        pruning=lambda wildcards: EXP.prune(wildcards.model).tracked(),
    script:
        "../scripts/pruning.py"


rule pruning_table:
    input:
        expand(f"{R}/pruning/{{model}}.csv", model=PRUNED),
    output:
        report(
            f"{R}/tables/pruning.csv",
            caption="../report/pruning.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/pruning_table.log",
    benchmark:
        f"{R}/benchmarks/pruning_table.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("tables"),
    script:
        "../scripts/pruning_table.py"
