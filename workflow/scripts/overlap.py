# Glue for rule overlap: snakemake.* to cwnnk.overlap.
from cwnnk.logs import stage_logger

with stage_logger("overlap", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.overlap import analyse_layer
    from cwnnk.params import OverlapParams

    params = OverlapParams.from_dict(snakemake.params.overlap)
    analyse_layer(snakemake.input.graphs, snakemake.output[0], params, log.info)
    log.info(f"wrote {snakemake.output[0]}")
