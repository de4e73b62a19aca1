# Glue for rule overlap: parse snakemake.*, call the library.
from cwnnk.analysis import analyse_layer
from cwnnk.logs import stage_logger

log = stage_logger("overlap", snakemake.log[0])
analyse_layer(snakemake.input.graphs, snakemake.output[0])
log.info(f"wrote {snakemake.output[0]}")
