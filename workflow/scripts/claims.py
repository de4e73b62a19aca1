# Glue for rule claims: snakemake.* to cwnnk.claims.
from cwnnk.logs import stage_logger

with stage_logger("claims", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.claims import write_claims

    i = snakemake.input
    rows = write_claims(i.overlap, i.manifolds, i.generalization, i.early_stopping, snakemake.output[0],
                        solver=snakemake.params.solver)
    for row in rows:
        said = row["evidence"] if row["verdict"] == "undefined" else f"{row['verdict']} ({row['evidence']})"
        log.info(f"{row['claim']}, {row['test']}: {said}")
