"""Baselines that only flip ``requires_grad``: full fine-tuning, zero-shot and BitFit."""

from __future__ import annotations

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.targets import count_parameters
from rmask_tune.methods.setup import MethodSetup


def full(model: nn.Module) -> MethodSetup:
    """Full fine-tuning: every parameter is trainable."""
    model.requires_grad_(True)
    return MethodSetup.measure("full", model, count_parameters(model), {})


def zero_shot(model: nn.Module) -> MethodSetup:
    """No fine-tuning: every parameter is frozen (method ``none``)."""
    model.requires_grad_(False)
    return MethodSetup.measure("none", model, count_parameters(model), {})


def bitfit(model: nn.Module) -> MethodSetup:
    """BitFit: only the bias terms (of linear and normalization layers alike) are trainable."""
    biases = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        raise RmaskError(f"bitfit: {type(model).__name__} has no bias parameters, so BitFit would train nothing")
    model.requires_grad_(False)
    for bias in biases:
        bias.requires_grad_(True)
    return MethodSetup.measure("bitfit", model, count_parameters(model), {"bias_tensors": len(biases)})
