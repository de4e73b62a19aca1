# Glue for rule extract: parse snakemake.*, call the library.
import os

import torch

from cwnnk.extract import run_extract
from cwnnk.logs import stage_logger

log = stage_logger("extract", snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_extract(
    # output.store is the store's zarr.json (see the rule); the store is its folder.
    snakemake.params.entry, snakemake.input.checkpoint, os.path.dirname(snakemake.output.store),
    snakemake.params.layers, snakemake.params.dataset, snakemake.params.extract, snakemake.params.device, log.info,
)
