"""Write-then-rename helpers: an artifact is either complete at its final path or absent.

Every stage writes its outputs through `atomic_path`, which never removes a finished output before its
replacement is in place, also removes the temporaries that a killed run of the same stage left beside the
output (a SIGKILL runs no cleanup; only those provably abandoned, see `_abandoned`), names the
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
# A temporary untouched this long is abandoned whoever wrote it: longer than any job's runtime
# (workflow/rules/common.smk, RESOURCES: 4 h at most), so a job still running elsewhere keeps its own.
STALE_AFTER_S = 24 * 3600


def _tmp_sibling(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _abandoned(tmp):
    """Whether a temporary is provably abandoned: named by a process of this host that is gone, or
    untouched for longer than any job may run (STALE_AFTER_S). A temporary of another host may belong to
    a job still running there (an orphaned cluster job), so its age alone decides."""
    try:
        host, pid, _ = tmp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)
        pid = int(pid)
    except ValueError:
        host, pid = None, None
    if host == _HOST and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    try:
        return time.time() - tmp.lstat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(path, log=None):
    """Remove the temporaries `atomic_path` left beside `path` in runs that were killed (_abandoned)."""
    log = log or logging.getLogger("cwnnk.atomic").info
    path = Path(path)
    for stale in sorted(path.parent.glob(f".{path.name}.tmp-*")):
        if not _abandoned(stale):
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
        _replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def _replace(tmp, path):
    """Put the finished temporary at path, never removing a finished path first: os.replace swaps a file
    in one step; a folder (which os.replace cannot put onto a non-empty one) is swapped by moving the old
    one aside under a temporary name, which is removed after."""
    if not tmp.exists() and not tmp.is_symlink():
        raise FileNotFoundError(errno.ENOENT, f"{tmp} was removed before it could be renamed onto {path}: another "
                                              f"run writing the same output took it for abandoned; {path} is left "
                                              "as it is; rerun to check it", str(tmp))
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = _tmp_sibling(path)
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        _remove(old)
    else:
        os.replace(tmp, path)


# The key under which write_json records the sha256 of a JSON object's other content, checked by read_json.
CHECKSUM_KEY = "content_sha256"


class DamagedArtifact(ValueError):
    """An artifact whose content differs from what its stage wrote (a flipped bit, a partial copy, an edit)."""


def _dumps(obj):
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def content_digest(obj):
    """The sha256 that write_json records for a parsed JSON object (without its CHECKSUM_KEY)."""
    import hashlib

    return hashlib.sha256(_dumps(obj).encode()).hexdigest()


def write_json(path, obj, checksum=True):
    """Write a JSON object atomically (sorted keys, so reruns give identical files), with the sha256 of its
    content under CHECKSUM_KEY, which read_json checks (checksum=False: a file whose every key means data;
    a value other than an object has no key to hold it)."""
    if checksum and isinstance(obj, dict):
        obj = json.loads(_dumps(obj))  # the digest covers what a reader parses: str keys, lists, str(other types)
        obj[CHECKSUM_KEY] = content_digest(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(_dumps(obj) + "\n")


def read_json(path, rerun):
    """A JSON object written by write_json, checked against its recorded sha256 (a file without one, written by
    an older cwnnk, is read unchecked). rerun: what remakes the file, named in the error."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedArtifact(f"{path}: not readable JSON ({err}): the file was damaged after it was written; "
                              f"rerun {rerun}") from None
    recorded = obj.pop(CHECKSUM_KEY, None) if isinstance(obj, dict) else None
    if recorded is not None and recorded != content_digest(obj):
        raise DamagedArtifact(f"{path}: its content is not what was written (sha256 differs from its {CHECKSUM_KEY}):"
                              f" the file was damaged or edited since; rerun {rerun}")
    return obj
