# Glue for rule solvers: snakemake.* to cwnnk.solvers.
from cwnnk.logs import stage_logger

with stage_logger("solvers", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.params import GraphParams
    from cwnnk.solvers import write_solver_table

    torch.set_num_threads(snakemake.threads)
    params = GraphParams.from_dict(snakemake.params.graphs, device=snakemake.resources.device)
    write_solver_table(snakemake.output[0], snakemake.params.model, snakemake.input.store,
                       dict(zip(snakemake.params.layers, snakemake.input.graphs)), params, log.info)
