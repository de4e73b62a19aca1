# Glue for rule claims: snakemake.* to cwnnk.claims and cwnnk.answer.
from cwnnk.logs import stage_logger

with stage_logger("claims", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from pathlib import Path

    from cwnnk.answer import write_answer
    from cwnnk.claims import write_claims

    i, out = snakemake.input, snakemake.output
    rows = write_claims(i.overlap, i.get("manifolds"), i.generalization, i.early_stopping, out.claims,
                        solver=snakemake.params.solver, pruning_csv=i.pruning)
    for row in rows:
        said = row["evidence"] if row["verdict"] == "undefined" else f"{row['verdict']} ({row['evidence']})"
        log.info(f"{row['claim']}, {row['test']}: {said}")
    answers = write_answer(i.overlap, out.claims, out.answer, out.front_page,
                           Path(snakemake.params.description).read_text())
    log.info(f"wrote {out.answer} ({len(answers)} model layers) and the report's front page {out.front_page}")
