# Stage 5: the F5 manifold experiment, the F6 solver comparison, and figures F1 to F6.

FIGURES = ["F1", "F2", "F3", "F4", "F5", "F6"]
SOLVER_MODEL = config["figures"]["solver_model"] or next(iter(MODELS))


rule manifolds:
    output:
        report(f"{R}/tables/manifolds.csv", caption="../report/manifolds.rst", category="Tables"),
    params:
        dims=config["figures"]["manifold_dims"],
        n=config["figures"]["manifold_n"],
        graphs=config["graphs"],
        device=config["device"],
    log:
        f"{R}/logs/manifolds.log",
    benchmark:
        f"{R}/benchmarks/manifolds.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime="30m",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/manifolds.py"


rule solvers:
    input:
        store=f"{R}/activations/{SOLVER_MODEL}.zarr/zarr.json",
        graphs=[f"{R}/graphs/{SOLVER_MODEL}/{layer}" for layer in layers_of(SOLVER_MODEL)],
    output:
        report(f"{R}/tables/solvers.csv", caption="../report/solvers.rst", category="Tables"),
    params:
        model=SOLVER_MODEL,
        layers=layers_of(SOLVER_MODEL),
        graphs=graph_params,
    log:
        f"{R}/logs/solvers.log",
    benchmark:
        f"{R}/benchmarks/solvers.tsv"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime="60m",
        gpu=GPUS,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/solvers.py"


rule figures:
    input:
        tables=expand(f"{R}/tables/{{table}}.csv", table=["overlap", "channels", "pairwise", "solvers", "manifolds"]),
    output:
        pdf=expand(f"{R}/figures/{{figure}}.pdf", figure=FIGURES),
        png=[
            report(f"{R}/figures/{figure}.png", caption=f"../report/{figure}.rst", category="Figures")
            for figure in FIGURES
        ],
    params:
        heatmap_model=config["figures"]["heatmap_model"],
        solver_model=SOLVER_MODEL,
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/figures.py"
