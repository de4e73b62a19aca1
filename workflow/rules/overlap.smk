# Stage 4: overlap, redundancy and intrinsic dimension per (model, layer), then tidy tables.


rule overlap:
    input:
        graphs=f"{R}/graphs/{{model}}/{{layer}}",
    output:
        f"{R}/overlap/{{model}}/{{layer}}.json",
    log:
        f"{R}/logs/overlap/{{model}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/overlap/{{model}}/{{layer}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime="30m",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/overlap.py"


rule tables:
    input:
        metrics=expand(f"{R}/models/{{model}}/metrics.json", model=MODELS),
        overlap=[f"{R}/overlap/{m}/{layer}.json" for m in MODELS for layer in layers_of(m)],
    output:
        overlap=report(f"{R}/tables/overlap.csv", caption="../report/overlap.rst", category="Tables"),
        channels=report(f"{R}/tables/channels.csv", caption="../report/channels.rst", category="Tables"),
        pairwise=report(f"{R}/tables/pairwise.csv", caption="../report/pairwise.rst", category="Tables"),
    params:
        models=MODELS,
        layers={m: layers_of(m) for m in MODELS},
    log:
        f"{R}/logs/tables.log",
    benchmark:
        f"{R}/benchmarks/tables.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/tables.py"
