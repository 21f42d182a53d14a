"""Random Masking: train a fixed random subset of the entries of chosen weight matrices.

One implementation, peft's way: ``RandomMaskingLinear`` is the tuner layer, ``RandomMaskingModel`` the
tuner (registered with peft on import) and ``RandomMaskingConfig`` its config, so ``get_peft_model`` and
``apply_random_masking`` (the same layers injected without a ``PeftModel`` wrapper) build the same thing.

The names below load on first use: importing peft takes seconds, and the kernels (``layer``), the
planner and the targets need none of it.
"""

import importlib

_HOMES = {
    "DifferentBaseWarning": "signature",
    "MaskingInfo": "plan",
    "RandomMask": "layer",
    "RandomMaskingConfig": "tuner",  # through the tuner, which registers the method with peft
    "RandomMaskingLinear": "tuner_layer",
    "RandomMaskingModel": "tuner",
    "apply_random_masking": "model",
    "base_fingerprint": "signature",
    "load_adapter": "adapter",
    "masked_layers": "model",
    "merge": "model",
    "plan_random_masking": "plan",
    "remove_random_masking": "model",
    "resolve_targets": "targets",
    "save_adapter": "adapter",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"rmask_tune.masking.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'rmask_tune.masking' has no attribute {name!r}")
