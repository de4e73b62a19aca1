# Glue for rule extract: snakemake.* to cwnnk.extract.
import torch

from cwnnk.extract import run_extract
from cwnnk.logs import stage_logger
from cwnnk.params import ExtractParams

log = stage_logger("extract", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = ExtractParams.from_dict(snakemake.params.extract)
run_extract(snakemake.params.entry, snakemake.input.checkpoint, snakemake.output.store, params, log.info)
