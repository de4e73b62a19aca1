"""What produced an artifact: library versions, file hashes, timestamps."""

import datetime
import functools
import hashlib
import platform
from importlib import metadata

PACKAGES = ("cwnnk", "torch", "torchvision", "numpy", "scipy", "zarr", "scikit-learn", "matplotlib")


@functools.cache  # installed packages do not change while a process runs; each lookup scans sys.path
def _installed():
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def versions():
    """Python's and the main packages' versions (None where one is not installed)."""
    return dict(_installed())


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_array(array):
    import numpy as np

    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.dtype.str.encode() + str(array.shape).encode() + array.tobytes()).hexdigest()


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
