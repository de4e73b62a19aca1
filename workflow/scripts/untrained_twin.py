# Glue for rule untrained_twin: snakemake.* to cwnnk.train.
from cwnnk.logs import stage_logger

with stage_logger("untrained_twin", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.params import ImportParams
    from cwnnk.train import run_twin

    torch.set_num_threads(snakemake.threads)
    params = ImportParams.from_dict(snakemake.params.evaluate, device=snakemake.resources.device)
    run_twin(snakemake.params.entry, params, snakemake.input[0], snakemake.output.checkpoint,
             snakemake.output.metrics, log.info)
