# Stage 8 (cwnnk.figures): figures F1 to F6 from the tables.


rule figures:
    input:
        **{table: f"{R}/tables/{table}.csv" for table in TABLES},
    output:
        pdf=expand(f"{R}/figures/{{figure}}.pdf", figure=FIGURES),
        png=[
            report(f"{R}/figures/{figure}.png", caption=f"../report/{figure}.rst", category="Figures")
            for figure in FIGURES
        ],
    params:
        figures=EXP.figures.to_dict(),
        # for the report's captions (workflow/report/F*.rst): how many models each figure rests on
        n_models=len(MODELS),
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    threads: 1
    resources:
        **job_resources("figures"),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/figures.py"
