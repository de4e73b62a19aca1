# Glue for rule generalization: snakemake.* to cwnnk.generalization.
from cwnnk.generalization import write_generalization
from cwnnk.logs import stage_logger

log = stage_logger("generalization", snakemake.log[0])
rows = write_generalization(snakemake.input[0], snakemake.output[0])
log.info(f"wrote {snakemake.output[0]} ({len(rows)} rows)")
