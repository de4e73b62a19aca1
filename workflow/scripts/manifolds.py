# Glue for rule manifolds: parse snakemake.*, call the library.
import torch

from cwnnk.calibration import write_manifold_table
from cwnnk.logs import stage_logger

log = stage_logger("manifolds", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
g = snakemake.params.graphs
write_manifold_table(snakemake.output[0], snakemake.params.dims, n=snakemake.params.n, k=g["k"], kernel=g["kernel"],
                     sigma=g["sigma"], duplicates=g["duplicates"], device=snakemake.params.device, log=log.info)
