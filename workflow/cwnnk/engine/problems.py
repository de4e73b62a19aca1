"""Kernel problems: from a node's kNN candidates and their Gram matrix to K_SS, K_Si and sigma.

Node i's problem is theta_i = argmin_{theta >= 0} 1/2 theta^T K_SS theta - K_Si^T theta over its
candidates S (docs/method.md); the kernels are built from the Gram matrices of the candidates'
differences to the query that the kNN search keeps, without touching the data again.
"""

from dataclasses import dataclass

import torch

from cwnnk import kernels

# A kernel value this close to 1 means one point in feature space: exact multiples under cosine
# can come out a rounding error below 1, and K is then numerically singular either way.
SAME_POINT = 1 - 4 * torch.finfo(torch.float64).eps


def query_sigma(nn, mode):
    """Gaussian width per query: d(x_i, its farthest candidate) / 3, or the mean of those per set."""
    n_cand = (nn.indices >= 0).sum(-1)
    last = nn.sqdist.gather(-1, (n_cand - 1).clamp(min=0)[..., None])[..., 0].sqrt()
    last = torch.where(n_cand > 0, last, torch.nan)
    if mode == "local":
        return last / 3
    return (torch.nanmean(last, dim=1, keepdim=True) / 3).expand_as(last).clone()


@dataclass
class Problems:
    """The kernel problems of a batch of nodes, K (B, k, k) and b (B, k), with their candidates' roles.

    valid: usable candidates (not padding, not a zero vector under cosine); dup: candidates that
    are the query itself in feature space (K_Si = 1: a duplicate, or under cosine a positive
    multiple); rep: for each candidate the first one that is the same point in feature space
    (itself if none), and mult the size of its group. Unusable candidates have an identity row in K
    and b = 0.
    """

    K: torch.Tensor
    b: torch.Tensor
    valid: torch.Tensor
    dup: torch.Tensor
    rep: torch.Tensor
    mult: torch.Tensor


def kernel_problems(nn, sq, sig, kernel, nodes):
    """The kernel problems of the flat nodes c * N + i in the slice `nodes`, from the kNN Grams.

    G_ab = (x_a - x_i) . (x_b - x_i) gives squared distances G_aa + G_bb - 2 G_ab that stay
    accurate at the neighbourhood's scale.
    """
    C, N, k = nn.indices.shape
    cand = nn.indices.view(-1, k)[nodes]
    valid = cand >= 0
    G = nn.gram.view(-1, k, k)[nodes]
    n = G.diagonal(dim1=1, dim2=2)
    d2 = torch.add(n[:, :, None], n[:, None, :]).sub_(G, alpha=2).clamp_(min=0)
    if kernel == "gaussian":
        s = sig.view(-1)[nodes]
        K, b = kernels.gaussian(d2, s[:, None, None]), kernels.gaussian(n, s[:, None])
    else:
        me = torch.arange(nodes.start, nodes.stop, device=cand.device)
        flat_cand = torch.where(valid, cand + (me // N * N)[:, None], me[:, None])
        sq_S, sq_i = sq.view(-1)[flat_cand], sq.view(-1)[nodes, None]
        K = kernels.cosine(sq_S[:, :, None], sq_S[:, None, :], d2)
        b = kernels.cosine(sq_S, sq_i, n)
        valid &= (sq_S > 0) & (sq_i > 0)
    if not valid.all():
        K = torch.where(valid[:, :, None] & valid[:, None, :], K, torch.eye(k, dtype=K.dtype, device=K.device))
        b = b.masked_fill_(~valid, 0)
    rep, mult = _feature_space_groups(K)
    return Problems(K, b, valid, valid & (b >= SAME_POINT), rep, mult)


def _feature_space_groups(K):
    """For each candidate the first candidate that is the same point in feature space, and the
    size of that group: K_ab = 1 means ||phi_a - phi_b||^2 = 2 - 2 K_ab = 0 (unusable candidates
    have an identity row, so they stay alone).
    """
    B, k = K.shape[:2]
    rep = torch.arange(k, device=K.device).repeat(B, 1)
    mult = torch.ones_like(rep)
    same = K >= SAME_POINT
    multi = (same.sum((1, 2)) > k).nonzero()[:, 0]  # more ones than the diagonal's
    if len(multi):
        r = same[multi].to(torch.int8).argmax(-1)
        for _ in range(k.bit_length()):  # pointer jumping: a chain of firsts ends at its root
            r = r.gather(1, r)
        rep[multi] = r
        mult[multi] = (r[:, :, None] == r[:, None, :]).sum(-1)
    return rep, mult
