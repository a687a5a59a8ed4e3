"""IVF coarse quantizer work on a CUDA GPU through PyTorch, for when FAISS has no GPU build.

The two dense steps of building a large IVF index are k-means of the coarse centroids and the
assignment of every vector to its nearest centroid: at 10M x 512-d with 16384 lists that is
~4e14 floating-point operations, minutes on 16 CPU cores and seconds on one GPU. faiss-gpu is
rarely installable (its wheels need a matching CUDA toolkit), PyTorch with CUDA usually is, so
:mod:`vidsearch.indexer.build` hands these two steps to this module when a CUDA device is
visible; FAISS still trains the codes (PQ) and owns the index. Everything is float32 (TF32 off:
assignments must match what FAISS's own quantizer computes at search time, up to exact ties).
"""

from __future__ import annotations

import logging

import numpy as np

_logger = logging.getLogger(__name__)

# Vectors per GPU matmul (x @ centroids.T): 65536 x 16384 float32 scores = 4 GiB at most.
_BATCH = 65536


def cuda_device() -> str | None:
    """"cuda" when PyTorch sees a CUDA device, else None (no torch, or no GPU)."""
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def _batch_for(k: int) -> int:
    # Keep the (batch, k) score matrix near 1 GiB.
    return max(1024, min(_BATCH, (1 << 28) // max(k, 1)))


class TorchCoarse:
    """Nearest centroid by inner product, computed with PyTorch on ``device``."""

    def __init__(self, centroids: np.ndarray, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.k = len(centroids)
        self.c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32)).to(device)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """(n,) int64 index of the centroid with the largest inner product, per row of ``x``."""
        torch = self.torch
        out = np.empty(len(x), np.int64)
        b = _batch_for(self.k)
        with torch.no_grad():
            for i in range(0, len(x), b):
                # A writable copy: x is often a read-only memory map, which torch will not wrap.
                xb = torch.from_numpy(np.require(x[i:i + b], np.float32, ["C", "W"])).to(self.device)
                out[i:i + b] = (xb @ self.c.T).argmax(dim=1).cpu().numpy()
        return out


def spherical_kmeans(x: np.ndarray, k: int, *, niter: int = 25, seed: int = 0,
                     device: str = "cuda") -> np.ndarray:
    """(k, d) L2-normalised centroids of the rows of ``x`` (cosine k-means, Lloyd iterations).

    Starts from ``k`` distinct random rows; a centroid that loses all its points is moved to a
    random point of the largest cluster (FAISS splits big clusters the same way).
    """
    import torch

    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least {k} points, got {n}")
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        xt = torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(device)
        c = xt[torch.from_numpy(rng.choice(n, k, replace=False)).to(device)].clone()
        b = _batch_for(k)
        assign = torch.empty(n, dtype=torch.int64, device=device)
        for it in range(niter):
            for i in range(0, n, b):
                assign[i:i + b] = (xt[i:i + b] @ c.T).argmax(dim=1)
            sums = torch.zeros_like(c).index_add_(0, assign, xt)
            counts = torch.bincount(assign, minlength=k)
            empty = torch.nonzero(counts == 0).flatten()
            if len(empty):
                big = int(torch.argmax(counts))
                members = torch.nonzero(assign == big).flatten()
                pick = members[torch.from_numpy(rng.integers(0, len(members), len(empty))).to(device)]
                sums[empty] = xt[pick]
                _logger.debug("k-means iteration %d: %d empty clusters re-seeded", it, len(empty))
            c = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return c.cpu().numpy().astype(np.float32)
