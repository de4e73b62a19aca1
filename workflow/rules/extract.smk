# Stage 2: each model's post-ReLU activations on the training images (optionally the test
# images too), streamed into one Zarr store per model. Format: docs/activations.md.


rule extract:
    input:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
    output:
        # The store's root metadata, not directory(): Snakemake then writes nothing inside the store.
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
    params:
        entry=model_entry,
        layers=lambda wildcards: layers_of(wildcards.model),
        dataset=config["dataset"],
        extract=config["extract"],
        device=config["device"],
    log:
        f"{R}/logs/extract/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/extract/{{model}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime="30m",
        gpu=GPUS,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/extract.py"
