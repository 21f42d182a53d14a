"""The value gradient on CPU as one compiled loop (numba): ``(g^T a)`` at the masked entries, in fp32.

PyTorch's CPU sampled product (``torch.sparse.sampled_addmm``) transposes both factors first, and at the
masks' densities (0.01-1% of a matrix) those two copies cost more than the product itself. This kernel
reads the factors in the layout autograd hands them over, rows of ``g`` (rows x out) and ``a`` (rows x in):
each thread takes a chunk of the masked entries and walks the input rows in tiles of ``TILE``, so that a
tile's rows of ``g`` and ``a`` stay in the core's cache while every entry of the chunk gathers from them.
No copy of either factor is made (fp32 inputs) and the work is rows x masked entries.

numba is optional (the ``cpu`` extra, included in ``sweep`` and ``test``): ``backend="auto"`` takes this
kernel on CPU when numba imports, else PyTorch's (``rmask_tune.masking.backends``). The first call
compiles the loop (about 2 s; numba caches it on disk for later processes).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

# Masked entries per task of the parallel loop, and input rows per cache tile (measured on this project's
# 2-core CPU, docs/speed.md: chunk 128 x tile 32 was among the fastest of 128-512 x 8-32 on SmolLM2's q and v shapes).
CHUNK = 128
TILE = 32


def numba_available() -> bool:
    """Whether numba is installed (imported only when the kernel first runs)."""
    return importlib.util.find_spec("numba") is not None


@lru_cache(maxsize=1)
def _kernel():
    import numba
    import numpy as np

    @numba.njit(parallel=True, fastmath=True, cache=True, nogil=True, boundscheck=False)
    def sampled_product(g, a, rows, cols, out, chunk, tile):  # pragma: no cover - compiled, run through the wrapper
        total_rows, k = g.shape[0], rows.shape[0]
        for c in numba.prange((k + chunk - 1) // chunk):
            lo = c * chunk
            hi = min(k, lo + chunk)
            for j in range(lo, hi):
                out[j] = np.float32(0.0)
            for t0 in range(0, total_rows, tile):
                t1 = min(total_rows, t0 + tile)
                for j in range(lo, hi):
                    r, col = rows[j], cols[j]
                    acc = np.float32(0.0)
                    for t in range(t0, t1):
                        acc += g[t, r] * a[t, col]
                    out[j] += acc

    return sampled_product


def numba_sampled_product(g: torch.Tensor, a: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(g^T a)[rows, cols]`` for CPU tensors ``g`` (n x out) and ``a`` (n x in), summed in fp32, on as many threads
    as PyTorch's intra-op pool has (``torch.get_num_threads()``, which a Ray trial's CPUs set), never more."""
    import numba

    g = g.detach().float().contiguous()
    a = a.detach().float().contiguous()
    out = torch.empty(rows.numel(), dtype=torch.float32)
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _kernel()(g.numpy(), a.numpy(), rows.numpy(), cols.numpy(), out.numpy(), CHUNK, TILE)
    finally:
        # numba's OpenMP pool shares PyTorch's libgomp, and launching it outside the main thread (a Ray Tune
        # trial runs in one) sets that thread's OpenMP thread count to numba's pool size: PyTorch would then run
        # every later op on all the machine's cores, beside the other trials' (4x slower steps, docs/speed.md).
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return out
