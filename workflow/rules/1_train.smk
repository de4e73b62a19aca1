# Stage 1 (cwnnk.train): a checkpoint and metrics.json per model, trained here or imported.
# A run's saved epochs (training.save_epochs) and its untrained twin (epoch 0, baseline.untrained)
# are models of their own, <run>-e<epoch>, written by the run's train job: their files are extra
# outputs of it. An imported model's twin, <name>-untrained, is written by rule untrained_twin.

# Every run writes the same epochs besides its last: the saved ones, then its twin's epoch 0.
SNAPSHOT_EPOCHS = [
    *config["training"]["save_epochs"],
    *([0] if config["baseline"]["untrained"] else []),
]


rule train:
    output:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
        metrics=f"{R}/models/{{model}}/metrics.json",
        snapshots=[
            f"{R}/models/{{model}}-e{e}/{name}"
            for e in SNAPSHOT_EPOCHS
            for name in ("checkpoint.pt", "metrics.json")
        ],
    log:
        f"{R}/logs/train/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{model}}.tsv"
    wildcard_constraints:
        model=_names_regex(TRAINED),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("train"),
    params:
        entry=model_entry,
        snapshots=lambda wildcards: [MODELS[m] for m in EXP.snapshots(wildcards.model)],
        train=lambda wildcards: EXP.train(wildcards.model).tracked(),
    script:
        "../scripts/train.py"


rule import_checkpoint:
    input:
        # A torchvision weights name has no declared input: the job reads the torch hub cache.
        lambda wildcards: (
            [MODELS[wildcards.model]["path"]]
            if MODELS[wildcards.model]["path"]
            else []
        ),
    output:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
        metrics=f"{R}/models/{{model}}/metrics.json",
    log:
        f"{R}/logs/import_checkpoint/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/import_checkpoint/{{model}}.tsv"
    wildcard_constraints:
        model=_names_regex(EXTERNAL),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("import_checkpoint"),
    params:
        entry=model_entry,
        evaluate=lambda wildcards: EXP.import_(wildcards.model).tracked(),
    script:
        "../scripts/import_checkpoint.py"


rule untrained_twin:
    input:
        f"{R}/models/{{run}}/checkpoint.pt",
    output:
        checkpoint=f"{R}/models/{{run}}-untrained/checkpoint.pt",
        metrics=f"{R}/models/{{run}}-untrained/metrics.json",
    log:
        f"{R}/logs/untrained_twin/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/untrained_twin/{{run}}.tsv"
    wildcard_constraints:
        run=_names_regex(EXTERNAL),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("import_checkpoint"),
    params:
        entry=lambda wildcards: MODELS[f"{wildcards.run}-untrained"],
        evaluate=lambda wildcards: EXP.import_(f"{wildcards.run}-untrained").tracked(),
    script:
        "../scripts/untrained_twin.py"
