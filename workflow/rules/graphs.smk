# Stage 3: CW-NNK graphs, one job per (model, layer): every channel plus the aggregate.


rule graphs:
    input:
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
    output:
        graphs=directory(f"{R}/graphs/{{model}}/{{layer}}"),
    params:
        graphs=graph_params,
    log:
        f"{R}/logs/graphs/{{model}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/graphs/{{model}}/{{layer}}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime="60m",
        gpu=GPUS,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/graphs.py"
