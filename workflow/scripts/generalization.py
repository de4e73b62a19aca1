# Glue for rule generalization: snakemake.* to cwnnk.generalization.
from cwnnk.logs import stage_logger

with stage_logger("generalization", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.generalization import write_generalization

    out = snakemake.output
    rows = write_generalization(snakemake.input.overlap, out.generalization, out.early_stopping,
                                snakemake.input.channels, out.early_stopping_channels, snakemake.params.patience)
    log.info(f"wrote {out.generalization} ({len(rows)} rows), {out.early_stopping} and {out.early_stopping_channels}")
