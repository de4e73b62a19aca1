# Stage 1: a checkpoint and metrics.json per model, trained here or imported.


rule train:
    output:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
        metrics=f"{R}/models/{{model}}/metrics.json",
    wildcard_constraints:
        model=_names_regex(TRAINED),
    params:
        entry=model_entry,
        dataset=config["dataset"],
        training=config["training"],
        device=config["device"],
    log:
        f"{R}/logs/train/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{model}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime="60m",
        gpu=GPUS,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train.py"


rule import_checkpoint:
    input:
        lambda wc: MODELS[wc.model]["path"],
    output:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
        metrics=f"{R}/models/{{model}}/metrics.json",
    wildcard_constraints:
        model=_names_regex(EXTERNAL),
    params:
        entry=model_entry,
        dataset=config["dataset"],
        device=config["device"],
    log:
        f"{R}/logs/import_checkpoint/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/import_checkpoint/{{model}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime="30m",
        gpu=GPUS,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/import_checkpoint.py"
