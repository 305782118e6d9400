"""Exact inner-product search: faiss when installed (GPU faiss on a GPU), else a numpy fallback.

The fallback exists so the pipeline runs where faiss wheels are unavailable (some GPU images); both
return the same (scores, ids) arrays, sorted best first, ids -1 past the end of the corpus.
"""

from __future__ import annotations

import numpy as np


class NumpyFlatIP:
    def __init__(self, dim: int):
        self.d = dim
        self._x = np.zeros((0, dim), dtype=np.float32)

    @property
    def ntotal(self) -> int:
        return self._x.shape[0]

    def add(self, x: np.ndarray) -> None:
        self._x = np.concatenate([self._x, np.asarray(x, dtype=np.float32)])

    def search(self, q: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, dtype=np.float32)
        n = self.ntotal
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        kk = min(k, n)
        for s in range(0, len(q), block):
            sim = q[s : s + block] @ self._x.T
            if kk == 0:
                continue
            part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            part_scores = np.take_along_axis(sim, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            ids[s : s + block, :kk] = np.take_along_axis(part, order, axis=1)
            scores[s : s + block, :kk] = np.take_along_axis(part_scores, order, axis=1)
        return scores, ids


def flat_ip_index(dim: int, gpu: bool = False):
    """An empty exact inner-product index."""
    try:
        import faiss
    except ImportError:
        return NumpyFlatIP(dim)
    index = faiss.IndexFlatIP(dim)
    if gpu and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
