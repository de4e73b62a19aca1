# Stage 6 (cwnnk.tables): every model's layers and metrics joined into tidy tables.

# For the captions (workflow/report/*.rst): whether the dataset has a test split (a folder needs
# dataset.test_root); without one test accuracy, the gap and claim C4 are empty and say why.
TEST_SPLIT = cwnnk.config.has_test_split(config["dataset"])


rule tables:
    input:
        metrics=expand(f"{R}/models/{{model}}/metrics.json", model=MODELS),
        overlap=[
            f"{R}/overlap/{m}/{layer}.json" for m in MODELS for layer in layers_of(m)
        ],
    output:
        overlap=report(
            f"{R}/tables/overlap.csv",
            caption="../report/overlap.rst",
            category="Tables",
        ),
        channels=report(
            f"{R}/tables/channels.csv",
            caption="../report/channels.rst",
            category="Tables",
        ),
        # C^2 rows per layer: 76 MB for a ResNet-18 at N = 1,000, kept out of the report (F4 draws it)
        pairwise=f"{R}/tables/pairwise.csv",
    log:
        f"{R}/logs/tables.log",
    benchmark:
        f"{R}/benchmarks/tables.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("tables"),
    params:
        models=MODELS,
        layers=EXP.layers,
        test_split=TEST_SPLIT,
    script:
        "../scripts/tables.py"


rule generalization:
    input:
        overlap=f"{R}/tables/overlap.csv",
        channels=f"{R}/tables/channels.csv",
    output:
        generalization=report(
            f"{R}/tables/generalization.csv",
            caption="../report/generalization.rst",
            category="Tables",
        ),
        early_stopping=report(
            f"{R}/tables/early_stopping.csv",
            caption="../report/early_stopping.rst",
            category="Tables",
        ),
        early_stopping_channels=report(
            f"{R}/tables/early_stopping_channels.csv",
            caption="../report/early_stopping_channels.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/generalization.log",
    benchmark:
        f"{R}/benchmarks/generalization.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("tables"),
    params:
        test_split=TEST_SPLIT,
        patience=config["early_stopping"]["patience"],
    script:
        "../scripts/generalization.py"


# The claims as this run finds them (cwnnk.claims): one row per claim, with its verdict; and the answer.
rule claims:
    input:
        # C1 reads the synthetic manifolds where figures.calibration runs them
        **({"manifolds": f"{R}/tables/manifolds.csv"} if EXP.calibration else {}),
        overlap=f"{R}/tables/overlap.csv",
        generalization=f"{R}/tables/generalization.csv",
        early_stopping=f"{R}/tables/early_stopping.csv",
        pruning=f"{R}/tables/pruning.csv",
    output:
        claims=report(
            f"{R}/tables/claims.csv", caption="../report/claims.rst", category="Tables"
        ),
        # the headline per model and layer, and the report's front page built on it and the claims (cwnnk.answer)
        answer=report(
            f"{R}/tables/answer.csv", caption="../report/answer.rst", category="Tables"
        ),
        front_page=FRONT_PAGE,
    log:
        f"{R}/logs/claims.log",
    benchmark:
        f"{R}/benchmarks/claims.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("tables"),
    params:
        solver=config["graphs"]["solver"],
        test_split=TEST_SPLIT,
        description=str(Path(workflow.basedir) / "workflow" / "report" / "workflow.rst"),
    script:
        "../scripts/claims.py"
