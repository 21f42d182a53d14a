"""Random Masking: train a fixed random subset of the entries of chosen weight matrices.

One implementation, peft's way: ``RandomMaskingLinear`` is the tuner layer, ``RandomMaskingModel`` the
tuner (registered with peft on import) and ``RandomMaskingConfig`` its config, so ``get_peft_model`` and
``apply_random_masking`` (the same layers injected without a ``PeftModel`` wrapper) build the same thing.
"""

from rmask_tune.masking.adapter import load_adapter, save_adapter
from rmask_tune.masking.config import RandomMaskingConfig
from rmask_tune.masking.layer import RandomMask, RandomMaskingLinear
from rmask_tune.masking.model import apply_random_masking, masked_layers, merge, remove_random_masking
from rmask_tune.masking.plan import MaskingInfo, plan_random_masking
from rmask_tune.masking.signature import DifferentBaseWarning, base_fingerprint
from rmask_tune.masking.targets import resolve_targets
from rmask_tune.masking.tuner import RandomMaskingModel

__all__ = [
    "DifferentBaseWarning",
    "MaskingInfo",
    "RandomMask",
    "RandomMaskingConfig",
    "RandomMaskingLinear",
    "RandomMaskingModel",
    "apply_random_masking",
    "base_fingerprint",
    "load_adapter",
    "masked_layers",
    "merge",
    "plan_random_masking",
    "remove_random_masking",
    "resolve_targets",
    "save_adapter",
]
