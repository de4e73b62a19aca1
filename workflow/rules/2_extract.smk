# Stage 2 (cwnnk.extract): each model's post-ReLU activations on the training images
# (optionally the test images too), streamed into one Zarr store per model. Format:
# docs/activations.md.


rule extract:
    input:
        checkpoint=f"{R}/models/{{model}}/checkpoint.pt",
    output:
        # The store's root metadata, not directory(): Snakemake then writes nothing inside the store.
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
    log:
        f"{R}/logs/extract/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/extract/{{model}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("extract"),
    params:
        entry=model_entry,
        extract=lambda wildcards: EXP.extract(wildcards.model).tracked(),
    script:
        "../scripts/extract.py"
