# Glue for rule import_checkpoint: snakemake.* to cwnnk.train.
from cwnnk.logs import stage_logger

with stage_logger("import_checkpoint", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.params import ImportParams
    from cwnnk.train import run_import

    torch.set_num_threads(snakemake.threads)
    params = ImportParams.from_dict(snakemake.params.evaluate, device=snakemake.resources.device)
    run_import(snakemake.params.entry, params, snakemake.output.checkpoint, snakemake.output.metrics,
               log.info)
