# Glue for rule train: snakemake.* to cwnnk.train.
import torch

from cwnnk.logs import stage_logger
from cwnnk.params import TrainParams
from cwnnk.train import run_train

log = stage_logger("train", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = TrainParams.from_dict(snakemake.params.train)
files = iter(snakemake.output.snapshots)  # per saved epoch: checkpoint.pt, metrics.json
snapshots = [(entry, next(files), next(files)) for entry in snakemake.params.snapshots]
run_train(snakemake.params.entry, params, snakemake.output.checkpoint, snakemake.output.metrics,
          log.info, snapshots)
