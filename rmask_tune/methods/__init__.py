"""The fine-tuning methods by name, and ``prepare_method`` to set one up on a model."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.methods.adapter_method import adapter
from rmask_tune.methods.masking import random_masking, structured_masking
from rmask_tune.methods.peft_methods import adalora, lora, prefix, shira
from rmask_tune.methods.setup import MethodSetup
from rmask_tune.methods.simple import bitfit, full, zero_shot

METHODS: dict[str, Callable[..., MethodSetup]] = {
    "random_masking": random_masking,
    "structured_masking": structured_masking,
    "full": full,
    "none": zero_shot,
    "bitfit": bitfit,
    "lora": lora,
    "adalora": adalora,
    "prefix": prefix,
    "shira": shira,
    "adapter": adapter,
}

__all__ = ["METHODS", "MethodSetup", "method_options", "prepare_method"]


def method_options(method: str) -> dict[str, inspect.Parameter]:
    """The options ``method`` accepts (its builder's keyword-only parameters), by name."""
    if method not in METHODS:
        raise RmaskError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    parameters = inspect.signature(METHODS[method]).parameters.values()
    return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def prepare_method(model: nn.Module, method: str, **options) -> MethodSetup:
    """Set ``model`` up for fine-tuning with ``method``; it is changed in place (peft methods wrap it)."""
    accepted = method_options(method)
    for name in options:
        if name not in accepted:
            known = f"its options: {', '.join(accepted)}" if accepted else "it takes no options"
            raise RmaskError(f"unknown option '{name}' for method '{method}' ({known})")
    for name, parameter in accepted.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise RmaskError(f"method '{method}' needs the option '{name}'")
    return METHODS[method](model, **options)
