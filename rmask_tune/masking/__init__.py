"""Random Masking: train a fixed random subset of the entries of chosen weight matrices."""

from rmask_tune.masking.adapter import base_fingerprint, load_adapter, save_adapter
from rmask_tune.masking.layer import RandomMaskingLinear
from rmask_tune.masking.model import (
    MaskingInfo,
    apply_random_masking,
    masked_layers,
    merge,
    plan_random_masking,
    remove_random_masking,
)
from rmask_tune.masking.targets import resolve_targets

__all__ = [
    "MaskingInfo",
    "RandomMaskingLinear",
    "base_fingerprint",
    "load_adapter",
    "save_adapter",
    "apply_random_masking",
    "masked_layers",
    "merge",
    "plan_random_masking",
    "remove_random_masking",
    "resolve_targets",
]
