"""Logging for stages: to the job's log file (Snakemake `log:`) and to stderr.

A script runs its stage inside `with stage_logger(name, snakemake.log[0]) as log:`: an error
is written to the log file with its traceback before it propagates, so the log Snakemake points
to after a failure says what failed (docs/reliability.md).
"""

import logging
import signal
import sys
import threading

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
