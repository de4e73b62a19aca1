# Glue for rule overlap: snakemake.* to cwnnk.overlap.
from cwnnk.logs import stage_logger
from cwnnk.params import OverlapParams
from cwnnk.overlap import analyse_layer

log = stage_logger("overlap", snakemake.log[0])
params = OverlapParams.from_dict(snakemake.params.overlap)
analyse_layer(snakemake.input.graphs, snakemake.output[0], params)
log.info(f"wrote {snakemake.output[0]}")
