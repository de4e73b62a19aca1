# Glue for rule import_checkpoint: parse snakemake.*, call the library.
import torch

from cwnnk.logs import stage_logger
from cwnnk.train import run_import

log = stage_logger("import_checkpoint", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_import(
    snakemake.params.entry, snakemake.params.dataset, snakemake.params.device,
    snakemake.output.checkpoint, snakemake.output.metrics, log.info,
)
