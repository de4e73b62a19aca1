# Glue for rule generalization: snakemake.* to cwnnk.generalization.
from cwnnk.logs import stage_logger

with stage_logger("generalization", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.generalization import write_generalization

    out = snakemake.output
    rows = write_generalization(snakemake.input[0], out.generalization, out.early_stopping)
    log.info(f"wrote {out.generalization} ({len(rows)} rows) and {out.early_stopping}")
