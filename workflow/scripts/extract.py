# Glue for rule extract: snakemake.* to cwnnk.extract.
from cwnnk.logs import stage_logger

with stage_logger("extract", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.extract import run_extract
    from cwnnk.params import ExtractParams

    torch.set_num_threads(snakemake.threads)
    params = ExtractParams.from_dict(snakemake.params.extract, device=snakemake.resources.device)
    run_extract(snakemake.params.entry, snakemake.input.checkpoint, snakemake.output.store, params, log.info)
