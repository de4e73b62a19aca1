"""Write-then-rename helpers: an artifact is either complete at its final path or absent.

Every stage writes its outputs through `atomic_path`, which also removes the temporaries that a
killed run of the same stage left beside the output (a SIGKILL runs no cleanup), names the
output in an OSError raised while writing it (a full disk, say), and holds the test hook that
pauses a stage at a deterministic point so that a test can kill it there (docs/reliability.md).
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

# Test hook: a job writing an output whose path contains this string stops (sleeps) once the
# temporary is complete, just before the rename, so that a test can kill it there. Never set in
# normal runs.
PAUSE_ENV = "CWNNK_PAUSE_BEFORE_RENAME"
_HOST = socket.gethostname().replace("-", "_")


def _tmp_sibling(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _writer_alive(tmp):
    """Whether the process that named this temporary still runs (on this host; a temporary of
    another host, or of an older name format, counts as stale)."""
    try:
        host, pid, _ = tmp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path, log=None):
    """Remove the temporaries `atomic_path` left beside `path` in a run that was killed."""
    log = log or logging.getLogger("cwnnk.atomic").info
    path = Path(path)
    for stale in sorted(path.parent.glob(f".{path.name}.tmp-*")):
        if _writer_alive(stale):
            continue
        log(f"removing {stale}, left by a run that was killed")
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _pause_for_tests(path, tmp, log):
    pattern = os.environ.get(PAUSE_ENV)
    if pattern and pattern in str(path):
        log(f"{PAUSE_ENV}={pattern}: pausing before renaming {tmp.name} onto {path} (test hook)")
        while True:
            time.sleep(60)


def _named(err, path, tmp):
    """An OSError like `err` whose message names the output being written and what to do."""
    hint = {errno.ENOSPC: "free disk space (or point `results` elsewhere) and rerun",
            errno.EDQUOT: "free space within your quota and rerun"}.get(err.errno, "check the folder and rerun")
    what = f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    named = type(err)(err.errno, f"{what} while writing {path}; {hint}; the previous {path.name}, if any, is "
                                 "unchanged")
    if err.filename is not None:  # an OSError prints a filename of None as ": None"
        named.filename = err.filename
    return named


@contextlib.contextmanager
def atomic_path(path, log=None):
    """Yield a temporary sibling of `path`; on success rename it onto `path`.

    Works for files and directories. On an exception the temporary is removed and `path` is
    left as it was, so a crash never leaves a half-written artifact; a kill leaves the
    temporary, which the next `atomic_path` of the same path removes first. log: a callable
    for messages (default: the `cwnnk.atomic` logger, which a stage logger writes to its log).
    """
    log = log or logging.getLogger("cwnnk.atomic").info
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path, log)
    tmp = _tmp_sibling(path)
    try:
        try:
            yield tmp
        except OSError as err:
            if err.errno is None or "while writing" in str(err):
                raise
            raise _named(err, path, tmp) from err
        _pause_for_tests(path, tmp, log)
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_json(path, obj):
    """Write JSON atomically (sorted keys, so reruns give identical files)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
