# Glue for rule train: parse snakemake.*, call the library.
import torch

from cwnnk.logs import stage_logger
from cwnnk.train import run_train

log = stage_logger("train", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_train(
    snakemake.params.entry, snakemake.params.dataset, snakemake.params.training, snakemake.params.device,
    snakemake.output.checkpoint, snakemake.output.metrics, log.info,
)
