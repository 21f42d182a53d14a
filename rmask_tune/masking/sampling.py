"""Mask sampling: which entries of a weight matrix are trainable, deterministic from (seed, module name)."""

from __future__ import annotations

import hashlib

import torch

SAMPLINGS = ("exact", "bernoulli")
# "random": entries anywhere; "head": each matrix's first entries in column-major order (the paper's
# structured masking); "columns": whole columns picked at random (this project's earlier structured masking).
STRUCTURES = ("random", "head", "columns")


def module_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from a stable hash of (seed, module name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _uniform_subset(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct indices in [0, n), uniformly at random, without an O(n) allocation when k << n."""
    if k * 4 >= n:
        return torch.randperm(n, generator=gen)[:k]
    chosen = torch.empty(0, dtype=torch.int64)
    while chosen.numel() < k:
        draw = torch.randint(0, n, (int((k - chosen.numel()) * 1.1) + 16,), generator=gen)
        chosen = torch.cat([chosen, draw]).unique()
    return chosen[torch.randperm(chosen.numel(), generator=gen)[:k]]


def head_flat_indices(shape: tuple[int, int], count: int) -> torch.Tensor:
    """Sorted flat (row-major) indices of the first ``count`` entries of an (out, in) matrix in column-major
    order: the leading whole columns (input features) and the top rows of one partly filled column."""
    rows, cols = shape
    order = torch.arange(count)
    return (order % rows * cols + order // rows).sort().values


def sample_flat_indices(
    shape: tuple[int, int], count: int, density: float, seed: int, name: str, structure: str, sampling: str
) -> torch.Tensor:
    """Sorted flat (row-major) indices of the trainable entries of a weight of ``shape``.

    ``exact`` draws exactly ``count`` entries (uniform without replacement: every entry has marginal
    probability ``density``); ``bernoulli`` keeps each entry independently with probability ``density``
    as in the paper. ``head`` takes the first ``count`` entries in column-major order (no randomness);
    ``columns`` keeps random whole columns (``count`` is then a multiple of the row count).
    """
    rows, cols = shape
    if structure == "head":
        return head_flat_indices(shape, count)
    gen = module_generator(seed, name)
    if structure == "columns":
        n_cols = count // rows
        picked = _uniform_subset(cols, n_cols, gen)
        flat = (torch.arange(rows).unsqueeze(1) * cols + picked.unsqueeze(0)).reshape(-1)
    elif sampling == "bernoulli":
        flat = torch.nonzero(torch.rand(rows * cols, generator=gen) < density).reshape(-1)
    else:
        flat = _uniform_subset(rows * cols, count, gen)
    return flat.sort().values
