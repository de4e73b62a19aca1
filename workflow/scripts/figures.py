# Glue for rule figures: parse snakemake.*, call the library.
from pathlib import Path

from cwnnk.figures import draw_all
from cwnnk.logs import stage_logger

log = stage_logger("figures", snakemake.log[0])
written = draw_all(Path(snakemake.input.tables[0]).parent, Path(snakemake.output.pdf[0]).parent,
                   heatmap_model=snakemake.params.heatmap_model, solver_model=snakemake.params.solver_model)
log.info(f"wrote {len(written)} files")
