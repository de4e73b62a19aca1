# Stage 4 (cwnnk.overlap): overlap, redundancy and intrinsic dimension per (model, layer).


rule overlap:
    input:
        graphs=f"{R}/graphs/{{model}}/{{layer}}",
    output:
        f"{R}/overlap/{{model}}/{{layer}}.json",
    log:
        f"{R}/logs/overlap/{{model}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/overlap/{{model}}/{{layer}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("overlap"),
    params:
        overlap=EXP.overlap.tracked(),
    script:
        "../scripts/overlap.py"
