"""Write-then-rename helpers: an artifact is either complete at its final path or absent."""

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


def _tmp_sibling(path):
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; on success rename it onto `path`.

    Works for files and directories. On an exception the temporary is removed and
    `path` is left as it was, so a crash never leaves a half-written artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
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

