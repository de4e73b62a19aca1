# Glue for rule overlap: snakemake.* to cwnnk.overlap.
from cwnnk.logs import stage_logger
from cwnnk.overlap import analyse_layer
from cwnnk.params import OverlapParams

log = stage_logger("overlap", snakemake.log[0])
params = OverlapParams.from_dict(snakemake.params.overlap)
analyse_layer(snakemake.input.graphs, snakemake.output[0], params, log.info)
log.info(f"wrote {snakemake.output[0]}")
