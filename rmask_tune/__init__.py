"""rmask-tune: learning-rate search for Random Masking parameter-efficient fine-tuning."""

__version__ = "0.1.0"

# Loaded on first use: importing peft takes seconds, and most commands never need it.
_PEFT_NAMES = ("RandomMaskingConfig", "RandomMaskingModel")


def __getattr__(name: str):
    """``RandomMaskingConfig`` and ``RandomMaskingModel`` (the peft method; registers it with peft)."""
    if name in _PEFT_NAMES:
        from rmask_tune.masking import tuner

        return getattr(tuner, name)
    raise AttributeError(f"module 'rmask_tune' has no attribute {name!r}")
