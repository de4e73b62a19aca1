# Glue for rule pruning_table: snakemake.* to cwnnk.pruning.
from cwnnk.logs import stage_logger

with stage_logger("pruning_table", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.pruning import collect_pruning

    n = collect_pruning(list(snakemake.input), snakemake.output[0])
    log.info(f"wrote {snakemake.output[0]}: {n} rows from {len(snakemake.input)} models")
