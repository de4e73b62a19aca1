"""The NNK engine: NNK graphs of one or many point sets (docs/method.md), batched over their nodes.

`nnk(X)` finds each node's exact kNN candidates, builds its kernel problem
    theta_i = argmin_{theta >= 0} 1/2 theta^T K_SS theta - K_Si^T theta
in float64, and solves the problems of all point sets together in batches of nodes. Its rooms:

    stream     nnk_stream and nnk: the scheduling that streams point sets through the rest
    knn        exact_knn: the exact kNN search, batch by batch of point sets
    pointsets  the point sets searched together: distinct rows, bounds, pools, re-rank, brute force
    gram       Gram matrices: reused buffers, the symmetric product, GramSum (a concatenation's H)
    blocks     rows taken a block of bounded bytes at a time
    problems   kNN candidates -> K_SS, K_Si and sigma
    nnls       the NNLS solvers: exact (block principal pivoting, Lawson-Hanson), pynnk
    result     NNKResult

See docs/engine.md for the algorithms and the memory they need.
"""

from cwnnk.engine.gram import GramSum
from cwnnk.engine.nnls import KKT_TOL
from cwnnk.engine.result import COUNTS, NNKResult
from cwnnk.engine.stream import DUPLICATES, KERNELS, SIGMAS, SOLVERS, nnk, nnk_stream

__all__ = ["COUNTS", "DUPLICATES", "GramSum", "KERNELS", "KKT_TOL", "NNKResult", "SIGMAS", "SOLVERS", "nnk",
           "nnk_stream"]
