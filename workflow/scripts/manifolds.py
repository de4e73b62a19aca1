# Glue for rule manifolds: snakemake.* to cwnnk.manifolds.
from cwnnk.logs import stage_logger

with stage_logger("manifolds", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.manifolds import write_manifold_table
    from cwnnk.params import ManifoldParams

    torch.set_num_threads(snakemake.threads)
    params = ManifoldParams.from_dict(snakemake.params.manifolds, device=snakemake.resources.device)
    write_manifold_table(snakemake.output[0], params, log=log.info)
