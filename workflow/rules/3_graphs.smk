# Stage 3 (cwnnk.graphs): CW-NNK graphs, one job per (model, layer): every channel plus the
# aggregate.


rule graphs:
    input:
        store=f"{R}/activations/{{model}}.zarr/zarr.json",
    output:
        graphs=directory(f"{R}/graphs/{{model}}/{{layer}}"),
    log:
        f"{R}/logs/graphs/{{model}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/graphs/{{model}}/{{layer}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("graphs"),
    params:
        graphs=EXP.graphs.tracked(),
    script:
        "../scripts/graphs.py"
