# Stage 5 (cwnnk.solvers): the exact and the pynnk solver on one model's layers (figure F6).


rule solvers:
    input:
        store=f"{R}/activations/{EXP.figures.solver_model}.zarr/zarr.json",
        graphs=[
            f"{R}/graphs/{EXP.figures.solver_model}/{layer}"
            for layer in layers_of(EXP.figures.solver_model)
        ],
    output:
        report(
            f"{R}/tables/solvers.csv",
            caption="../report/solvers.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/solvers.log",
    benchmark:
        f"{R}/benchmarks/solvers.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        **job_resources("solvers"),
    params:
        model=EXP.figures.solver_model,
        layers=layers_of(EXP.figures.solver_model),
        graphs=EXP.graphs.tracked(),
    script:
        "../scripts/solvers.py"
