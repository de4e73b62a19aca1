# Glue for rule train: snakemake.* to cwnnk.train.
from cwnnk.logs import stage_logger

with stage_logger("train", snakemake.log[0]) as log:  # an error goes to the log with its traceback
    import torch

    from cwnnk.params import TrainParams
    from cwnnk.train import run_train

    torch.set_num_threads(snakemake.threads)
    params = TrainParams.from_dict(snakemake.params.train, device=snakemake.resources.device)
    files = iter(snakemake.output.snapshots)  # per saved epoch: checkpoint.pt, metrics.json
    snapshots = [(entry, next(files), next(files)) for entry in snakemake.params.snapshots]
    run_train(snakemake.params.entry, params, snakemake.output.checkpoint, snakemake.output.metrics,
              log.info, snapshots)
