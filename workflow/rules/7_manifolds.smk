# Stage 7 (cwnnk.manifolds): NNK degree and TwoNN on synthetic manifolds of known dimension
# (figure F5, claim C1); independent of the models.


rule manifolds:
    output:
        report(
            f"{R}/tables/manifolds.csv",
            caption="../report/manifolds.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/manifolds.log",
    benchmark:
        f"{R}/benchmarks/manifolds.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("manifolds"),
    params:
        manifolds=EXP.manifolds.tracked(),
    script:
        "../scripts/manifolds.py"
