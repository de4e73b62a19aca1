"""The kernels of docs/method.md (section 2), from squared distances (and squared norms for cosine)."""

import torch


def gaussian(d2, sigma):
    """exp(-d2 / (2 sigma^2)), exactly 1 at distance 0; sigma = 0 gives 0 elsewhere (its limit)."""
    sigma = torch.as_tensor(sigma, dtype=d2.dtype, device=d2.device)
    K = torch.mul(d2, -0.5 / sigma**2).exp_()
    return K if (sigma > 0).all() else K.masked_fill_(d2 == 0, 1.0)  # 0 * inf is nan, not 1


def cosine(sq_u, sq_v, d2):
    """1/2 + 1/2 cos(u, v) from |u|^2, |v|^2 and |u - v|^2; exactly 1 for equal points.

    u . v = (|u|^2 + |v|^2 - |u - v|^2) / 2 keeps the kernel computable from the kNN step's
    distances alone. Undefined (nan) where u or v is the zero vector.
    """
    cos = (sq_u + sq_v - d2) / (2 * (sq_u * sq_v).sqrt())
    return torch.where(d2 == 0, 1.0, 0.5 + 0.5 * cos.clamp(-1, 1))
