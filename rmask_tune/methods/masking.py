"""Random Masking (entry-wise) and its structured variant (whole weight columns)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from rmask_tune.masking import apply_random_masking
from rmask_tune.methods.setup import MethodSetup


def masking_method(method: str, structure: str) -> Callable[..., MethodSetup]:
    """A builder that applies ``apply_random_masking`` with the given ``structure``."""

    def build(model: nn.Module, *, ratio=None, density=None, targets=None, seed=0, sampling="exact") -> MethodSetup:
        info = apply_random_masking(
            model, ratio=ratio, density=density, targets=targets, seed=seed, structure=structure, sampling=sampling
        )
        return MethodSetup(method, model, info.trainable_params, info.total_params, info.to_dict())

    build.__name__ = build.__qualname__ = method
    build.__doc__ = f"Random Masking with structure={structure!r}: train a fixed random subset of the target weights."
    return build


random_masking = masking_method("random_masking", "random")
structured_masking = masking_method("structured_masking", "columns")
