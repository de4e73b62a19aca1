# Stage 8 (cwnnk.figures): figures F1 to F7 from the tables.


# F7's caption: the training runs with saved epochs (training.save_epochs).
RUNS_WITH_EPOCHS = {e["run"] for e in MODELS.values() if e["kind"] == "snapshot"}


rule figures:
    input:
        **{table: f"{R}/tables/{table}.csv" for table in RUN_TABLES},
    output:
        pdf=expand(f"{R}/figures/{{figure}}.pdf", figure=FIGURES),
        png=[
            report(
                f"{R}/figures/{figure}.png",
                caption=f"../report/{figure}.rst",
                category="Figures",
            )
            for figure in FIGURES
        ],
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **job_resources("figures"),
    params:
        figures=EXP.figures.tracked(),
        # for the report's captions (workflow/report/F*.rst): how many models each figure rests on
        n_models=sum(e["kind"] != "untrained" for e in MODELS.values()),
        # F2: the untrained twins drawn as the baseline
        n_twins=sum(e["kind"] == "untrained" for e in MODELS.values()),
        # F7: the training runs with saved epochs, and their models (saved epochs and final ones)
        n_runs_epochs=len(RUNS_WITH_EPOCHS),
        n_epoch_models=sum(
            e["kind"] == "snapshot" or m in RUNS_WITH_EPOCHS for m, e in MODELS.items()
        ),
        # F3, F7: without a test split (a folder without dataset.test_root) there is no test accuracy
        test_split=TEST_SPLIT,
    script:
        "../scripts/figures.py"
