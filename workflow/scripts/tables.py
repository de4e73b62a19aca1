# Glue for rule tables: snakemake.* to cwnnk.tables.
from cwnnk.logs import stage_logger

with stage_logger("tables", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.tables import collect_tables

    models, layers = snakemake.params.models, snakemake.params.layers
    files = iter(snakemake.input.overlap)  # model by model, each model's layers in depth order
    overlap = {model: [next(files) for _ in layers[model]] for model in models}
    collect_tables(models, dict(zip(models, snakemake.input.metrics)), layers, overlap, snakemake.output)
    log.info(f"wrote {list(snakemake.output)}")
