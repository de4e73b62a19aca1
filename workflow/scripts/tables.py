# Glue for rule tables: parse snakemake.*, call the library.
from pathlib import Path

from cwnnk.analysis import collect_tables
from cwnnk.logs import stage_logger

log = stage_logger("tables", snakemake.log[0])
results = Path(snakemake.input.metrics[0]).parents[2]  # {results}/models/{model}/metrics.json
collect_tables(snakemake.params.models, snakemake.params.layers, results, Path(snakemake.output.overlap).parent)
log.info(f"wrote {list(snakemake.output)}")
