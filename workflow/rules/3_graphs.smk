# Stage 3 (cwnnk.graphs): CW-NNK graphs, one job per (model, layer): every channel plus the
# aggregate.


rule graphs:
    input:
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
    output:
        graphs=directory(f"{R}/graphs/{{model}}/{{layer}}"),
    params:
        graphs=EXP.graphs.to_dict(),
    log:
        f"{R}/logs/graphs/{{model}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/graphs/{{model}}/{{layer}}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("graphs"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/graphs.py"
