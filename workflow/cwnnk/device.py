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
