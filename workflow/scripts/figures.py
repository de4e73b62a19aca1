# Glue for rule figures: snakemake.* to cwnnk.figures.
from cwnnk.logs import stage_logger

with stage_logger("figures", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    from cwnnk.figures import draw_all
    from cwnnk.params import FigureParams
    from cwnnk.products import TABLES

    params = FigureParams.from_dict(snakemake.params.figures)
    tables = {name: snakemake.input[name] for name in TABLES if name in snakemake.input.keys()}
    written = draw_all(tables, [*snakemake.output.pdf, *snakemake.output.png], params)
    log.info(f"wrote {len(written)} files")
