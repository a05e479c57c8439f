"""Sparse sum layers on torch: a layer's kept edges as one block-diagonal CSR matrix.

The plan marks a sum layer sparse (:class:`pcdsl.layout.SparseSum`) when most of its weights are
exact zeros (pruned circuits). Its F folds of (M, C) weights are then one (F * M, F * C) CSR
matrix S over the folds' inputs, side by side, so a pass is one sparse product:

- forward: ``S @ exp(x - m)`` (F * M, B), each fold's rows shifted by its own column max m;
- flows: input flows ``S^T @ r`` (a second CSR matrix, the transpose, kept beside S) and weight
  flows ``w * (r @ e^T)`` sampled at the edges only (``torch.sparse.sampled_addmm``);
- max-product: a scatter-max of ``log w + x`` over the edges, in pieces.

Whether a sparse layer runs so or densely is the backend's choice (:func:`runs_sparse`): on a CPU,
torch's CSR product does a few times less work per second than its dense batched product, so
only layers sparser than :data:`CPU_SPARSE_DENSITY` gain; on CUDA (cuSPARSE) every sparse layer.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .layout import SumLayer

# On the CPU a sparse layer runs sparse below this share of non-zero weights (measured on a 2-core
# box: torch's CSR product costs 3-4x its dense bmm per edge; numba's kernels do better, see there).
CPU_SPARSE_DENSITY = 0.2
MAX_EDGE_VALUES = 1 << 24  # bounds the (edges, batch) temporaries of the max-product pass


def runs_sparse(layer: SumLayer, device: torch.device) -> bool:
    """Whether the torch backend runs `layer` on its edges (else on its dense weights)."""
    if layer.sparse is None:
        return False
    return device.type != "cpu" or layer.sparse.edges <= CPU_SPARSE_DENSITY * layer.weights.size


class SparseEdges:
    """A sparse sum layer's edges on the device: the CSR matrix S, its transpose, and each edge's
    position in the (F, M, C) weights (values are refreshed from those by :meth:`load`)."""

    def __init__(self, layer: SumLayer, device: torch.device):
        sparse = layer.sparse
        assert sparse is not None
        f, m, c = layer.shape
        rows = sparse.rows()
        cols = rows // m * c + sparse.cols  # the fold's inputs, side by side
        self.shape = (f * m, f * c)
        self.flat = torch.as_tensor(sparse.flat(c), device=device)
        self.rows = torch.as_tensor(rows, device=device)
        self.cols = torch.as_tensor(cols, device=device)
        self.crow = torch.as_tensor(sparse.indptr, device=device)
        order = np.lexsort((rows, cols))  # the transpose's edges, column-major
        self.t_order = torch.as_tensor(order, device=device)
        t_crow = np.zeros(f * c + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=f * c), out=t_crow[1:])
        self.t_crow = torch.as_tensor(t_crow, device=device)
        self.t_col = torch.as_tensor(rows[order], device=device)
        self.values = torch.empty(0)
        self.log_values = torch.empty(0)
        self.matrix = self.t_matrix = torch.empty(0)

    def load(self, weights: torch.Tensor, log_weights: torch.Tensor) -> None:
        """Take the edge values from the layer's dense (F, M, C) weights."""
        self.values = weights.reshape(-1)[self.flat]
        self.log_values = log_weights.reshape(-1)[self.flat]
        with warnings.catch_warnings():  # torch calls its CSR support "beta"
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.sparse_csr_tensor(self.crow, self.cols, self.values, self.shape)
            self.t_matrix = torch.sparse_csr_tensor(self.t_crow, self.t_col, self.values[self.t_order],
                                                    self.shape[::-1])

    def mm(self, e: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (F * M, B) = S @ e, e (F * C, B)."""
        return out.copy_(torch.sparse.mm(self.matrix, e))

    def mm_t(self, r: torch.Tensor) -> torch.Tensor:
        """S^T @ r (F * C, B), r (F * M, B)."""
        return torch.sparse.mm(self.t_matrix, r)

    def edge_flows(self, r: torch.Tensor, e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Dense (F, M, C) weight flows: w * sum_b r[row, b] e[col, b] at the edges, 0 elsewhere."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sampled = torch.sparse.sampled_addmm(self.matrix, r, e.T, beta=0.0)
        out = torch.zeros_like(like)
        out.view(-1)[self.flat] = sampled.values() * self.values
        return out

    def max_product(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out (F * M, B) = max over each row's edges of log w + x[col] (-inf without edges)."""
        out.fill_(-torch.inf)
        warnings.filterwarnings("ignore", "index_reduce", UserWarning)  # "beta": its API may change
        step = max(1, MAX_EDGE_VALUES // max(1, x.shape[1]))
        for lo in range(0, len(self.cols), step):
            hi = lo + step
            terms = self.log_values[lo:hi, None] + x.index_select(0, self.cols[lo:hi])
            out.index_reduce_(0, self.rows[lo:hi], terms, "amax")
