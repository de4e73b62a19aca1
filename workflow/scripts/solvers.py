# Glue for rule solvers: parse snakemake.*, call the library.
import os

import torch

from cwnnk.graphs import compare_solvers
from cwnnk.logs import stage_logger
from cwnnk.tables import write_table

log = stage_logger("solvers", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
rows = compare_solvers(os.path.dirname(snakemake.input.store),
                       dict(zip(snakemake.params.layers, snakemake.input.graphs)), snakemake.params.graphs, log.info)
write_table(snakemake.output[0], [dict(model=snakemake.params.model, **row) for row in rows])
