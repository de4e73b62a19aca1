"""Logging for stages: to the job's log file (Snakemake `log:`) and to stderr."""

import logging
import math
import sys
import time


def stage_logger(name, path=None):
    logger = logging.getLogger(f"cwnnk.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class Progress:
    """Progress lines for a job's log, so a long job (on SLURM too) shows how far it is:
    "batch 3/40 done (train: 768/10000 samples, 12.1s, 0.25 batch/s, about 148s left)".

    A line is written at the first and the last step, every twentieth of the total, and at
    least every `every_s` seconds between them.
    """

    def __init__(self, total, unit, log, every_s=10.0):
        self.total, self.unit, self.log, self.every_s = total, unit, log, every_s
        self.done, self.start, self.last = 0, time.perf_counter(), -math.inf
        self.every = max(1, total // 20)

    def step(self, n=1, detail=""):
        before, self.done = self.done, self.done + n
        now = time.perf_counter()
        crossed = self.done // self.every > before // self.every
        if before == 0 or self.done >= self.total or crossed or now - self.last >= self.every_s:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else math.inf
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            parts = [detail] if detail else []
            parts += [f"{elapsed:.1f}s", f"{rate:.3g} {self.unit}/s"]
            if self.done < self.total:
                parts.append(f"about {left:.0f}s left")
            self.log(f"{self.unit} {self.done}/{self.total} done ({', '.join(parts)})")
