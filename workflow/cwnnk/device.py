"""Device selection shared by every stage: `auto` means CUDA when present, else CPU."""

import torch


def resolve_device(name="auto"):
    """Return a torch.device for 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return device


# A buffer sized per device (a solver batch, a kNN tile) takes at most this share of a GPU's memory:
# the engine holds several solver batches at once (docs/performance.md).
GPU_MEMORY_SHARE = 20


def buffer_bytes(sizes, device):
    """sizes[device type] bytes (CUDA's for other accelerators), on a GPU at most its memory / GPU_MEMORY_SHARE."""
    nbytes = sizes.get(device.type, sizes["cuda"])
    if device.type == "cuda":
        nbytes = min(nbytes, torch.cuda.get_device_properties(device).total_memory // GPU_MEMORY_SHARE)
    return nbytes
