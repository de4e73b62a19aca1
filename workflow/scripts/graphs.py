# Glue for rule graphs: snakemake.* to cwnnk.graphs.
from cwnnk.logs import stage_logger

with stage_logger("graphs", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.graphs import build_layer_graphs
    from cwnnk.params import GraphParams

    torch.set_num_threads(snakemake.threads)
    params = GraphParams.from_dict(snakemake.params.graphs, device=snakemake.resources.device)
    build_layer_graphs(snakemake.input.store, snakemake.wildcards.layer, snakemake.output.graphs, params, log.info)
