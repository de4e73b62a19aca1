# Glue for rule graphs: parse snakemake.*, call the library.
import os

import torch

from cwnnk.graphs import build_layer_graphs
from cwnnk.logs import stage_logger

log = stage_logger("graphs", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
build_layer_graphs(os.path.dirname(snakemake.input.store), snakemake.wildcards.layer, snakemake.output.graphs,
                   snakemake.params.graphs, log.info)
