"""Rows taken a block of bounded bytes at a time, so that no large temporary copy is made."""

import torch

# Bytes of the float64 (or float32) copy of a block of points made where the dtypes differ.
CONVERT_BYTES = 1 << 26


def row_blocks(n, row_bytes, budget):
    """Slices of range(n) whose rows take at most `budget` bytes (one row at least)."""
    step = max(1, budget // max(1, row_bytes))
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def sq_norms(X):
    """Squared norms of the rows of X (..., D) in float64, converted block by block."""
    flat = X.reshape(-1, X.shape[-1])
    out = torch.empty(len(flat), dtype=torch.float64, device=X.device)
    for part in row_blocks(len(flat), 8 * flat.shape[1], CONVERT_BYTES):
        block = flat[part].to(torch.float64)
        out[part] = torch.einsum("nd,nd->n", block, block)
    return out.view(X.shape[:-1])
