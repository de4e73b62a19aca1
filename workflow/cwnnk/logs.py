"""Logging for stages: to the job's log file (Snakemake `log:`) and to stderr.

A script runs its stage inside `with stage_logger(name, snakemake.log[0]) as log:`: an error
is written to the log file with its traceback before it propagates, so the log Snakemake points
to after a failure says what failed (docs/reliability.md).
"""

import logging
import math
import signal
import sys
import threading
import time

_FORMAT = ("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _Brief(logging.Formatter):
    """stderr: the message without the traceback (Python prints that itself as the error propagates)."""

    def format(self, record):
        record = logging.makeLogRecord(dict(record.__dict__, exc_info=None, exc_text=None))
        return super().format(record)


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # runs the cleanup of atomic_path and the log's error record


class StageLog(logging.LoggerAdapter):
    """A stage's logger (`log.info(...)`), and a context manager that logs an error with its traceback."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)  # Snakemake's cancellation: cleaned up like an error
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.logger.error(f"{self.extra['stage']} failed: {exc_type.__name__}: {exc}", exc_info=(exc_type, exc, tb))
        for handler in logging.getLogger("cwnnk").handlers:
            handler.flush()
        return False


def stage_logger(name, path=None):
    """The logger of stage `name`, writing to `path` (the job's log) and stderr.

    The handlers sit on the `cwnnk` logger, so the library's own loggers (`cwnnk.atomic`) write
    to the same log.
    """
    parent = logging.getLogger("cwnnk")
    parent.setLevel(logging.INFO)
    for handler in parent.handlers:
        handler.close()
    parent.handlers.clear()
    parent.propagate = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_Brief(*_FORMAT))
    parent.addHandler(stream)
    if path:
        file = logging.FileHandler(path, mode="w")
        file.setFormatter(logging.Formatter(*_FORMAT))
        parent.addHandler(file)
    logger = logging.getLogger(f"cwnnk.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = True
    return StageLog(logger, {"stage": name})


class ProgressBar:
    """The library's progress (cwnnk.api): a tqdm bar on stderr for what a stage's Progress counts, shown
    once a call has run `delay` seconds; messages are dropped. enabled=False (the API's progress=False, or
    TQDM_DISABLE=1 in the environment) silences it."""

    DELAY = 2.0  # seconds before a bar shows: a quick call prints nothing

    def __init__(self, enabled=True, delay=None):
        self.enabled, self.delay = enabled, self.DELAY if delay is None else delay

    def __call__(self, *args, **kwargs):
        pass

    def bar(self, total, unit, desc=None):
        from tqdm.auto import tqdm

        silent = {} if self.enabled else {"disable": True}  # left unset, tqdm reads TQDM_DISABLE from the environment
        return tqdm(total=total, unit=unit, desc=desc, delay=self.delay, file=sys.stderr, leave=False,
                    dynamic_ncols=True, **silent)


class Progress:
    """Progress lines for a job's log, so a long job (on SLURM too) shows how far it is:
    "batch 3/40 done (train: 768/10000 samples, 12.1s, 0.25 batch/s, about 148s left)"; or, where `log`
    is a ProgressBar (the library), a progress bar.

    A line is written at the first and the last step, every twentieth of the total, and at
    least every `every_s` seconds between them.
    """

    def __init__(self, total, unit, log, every_s=10.0, desc=None):
        self.total, self.unit, self.log, self.every_s = total, unit, log, every_s
        self.done, self.start, self.last = 0, time.perf_counter(), -math.inf
        self.every = max(1, total // 20)
        self.bar = log.bar(total, unit, desc) if isinstance(log, ProgressBar) else None

    def step(self, n=1, detail=""):
        if self.bar is not None:
            self.bar.update(n)
            self.done += n
            if self.done >= self.total:
                self.bar.close()
            return
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
