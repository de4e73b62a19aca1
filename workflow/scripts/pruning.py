# Glue for rule pruning: snakemake.* to cwnnk.pruning.
from cwnnk.logs import stage_logger

with stage_logger("pruning", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.params import PruneParams
    from cwnnk.pruning import run_pruning

    torch.set_num_threads(snakemake.threads)
    i = snakemake.input
    params = PruneParams.from_dict(snakemake.params.pruning, device=snakemake.resources.device)
    run_pruning(snakemake.params.entry, params, i.checkpoint, i.store, list(i.overlap), list(snakemake.params.layers),
                snakemake.output[0], log.info)
