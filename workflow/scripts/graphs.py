# Glue for rule graphs: snakemake.* to cwnnk.graphs.
import torch

from cwnnk.graphs import build_layer_graphs
from cwnnk.logs import stage_logger
from cwnnk.params import GraphParams

log = stage_logger("graphs", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = GraphParams.from_dict(snakemake.params.graphs)
build_layer_graphs(snakemake.input.store, snakemake.wildcards.layer, snakemake.output.graphs, params, log.info)
