"""One CPU code path for torch, so that CPU results repeat across x86 processors.

torch (ATen), oneDNN and MKL each pick their kernels by the instruction sets the processor
offers (AVX2, AVX-512, ...), and kernels of different widths round differently: the same
training run then ends in different weights on different machines. `pin_code_path("avx2")`
asks all three for their AVX2 kernels, which every x86-64 processor of the last decade runs,
before torch is imported (they read the variables once, at load). A variable the user has
already set is left as it is. docs/reliability.md gives what it costs and what still moves.
"""

import os
import sys

CODE_PATHS = ("avx2", "native")
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def code_path_environment(code_path):
    """The environment variables of `code_path`: 'avx2' (pinned) or 'native' (none: whatever the processor
    offers). A variable already set in os.environ keeps its value."""
    if code_path not in CODE_PATHS:
        raise ValueError(f"cpu_code_path: {code_path!r} is not allowed; expected one of {list(CODE_PATHS)}")
    return {} if code_path == "native" else {key: os.environ.get(key, value) for key, value in PINNED.items()}


def pin_code_path(code_path="avx2"):
    """Set the environment of `code_path` in this process; it must run before torch is imported.
    Returns the variables set."""
    chosen = code_path_environment(code_path)
    if chosen and "torch" in sys.modules:
        raise RuntimeError("pin_code_path must run before torch is imported: torch reads its code path at load")
    os.environ.update(chosen)
    return chosen
