# Glue for rule import_checkpoint: snakemake.* to cwnnk.train.
import torch

from cwnnk.logs import stage_logger
from cwnnk.params import ImportParams
from cwnnk.train import run_import

log = stage_logger("import_checkpoint", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = ImportParams.from_dict(snakemake.params.evaluate)
run_import(snakemake.params.entry, params, snakemake.output.checkpoint, snakemake.output.metrics,
           log.info)
