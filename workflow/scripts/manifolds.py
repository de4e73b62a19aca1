# Glue for rule manifolds: snakemake.* to cwnnk.manifolds.
import torch

from cwnnk.logs import stage_logger
from cwnnk.manifolds import write_manifold_table
from cwnnk.params import ManifoldParams

log = stage_logger("manifolds", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = ManifoldParams.from_dict(snakemake.params.manifolds)
write_manifold_table(snakemake.output[0], params, log=log.info)
