"""Methods that peft implements: LoRA, AdaLoRA, prefix tuning and ShiRA.

peft is imported inside the builders because importing it takes seconds.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.targets import count_parameters, linear_modules, resolve_targets
from rmask_tune.methods.setup import MethodSetup


def peft_task_type(model: nn.Module):
    """peft's task type for ``model``: CAUSAL_LM, SEQ_CLS, or None (plain ``PeftModel``) for the rest."""
    from peft import TaskType
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    if name in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return TaskType.CAUSAL_LM
    if name in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
        return TaskType.SEQ_CLS
    return None


def wrap_with_peft(model: nn.Module, method: str, config_cls: type, details: dict, **config) -> MethodSetup:
    """Wrap ``model`` with ``config_cls(**config)``; peft freezes the base model.

    For sequence classifiers peft also makes the classification head trainable (``modules_to_save``).
    """
    from peft import get_peft_model

    total = count_parameters(model)
    task_type = peft_task_type(model)
    try:
        peft_model = get_peft_model(model, config_cls(task_type=task_type, **config))
    except (ValueError, TypeError) as exc:
        raise RmaskError(f"{method}: {' '.join(str(exc).split())}") from exc
    task = task_type.value if task_type is not None else None
    return MethodSetup.measure(method, peft_model, total, {**details, "task_type": task})


def lora(model: nn.Module, *, r: int = 8, alpha: float = 16, dropout: float = 0.0, targets=None) -> MethodSetup:
    """LoRA on the target matrices (attention q/v by default)."""
    from peft import LoraConfig

    names = resolve_targets(model, targets)
    details = {"r": r, "alpha": alpha, "dropout": dropout, "targets": names}
    return wrap_with_peft(
        model, "lora", LoraConfig, details, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names
    )


def adalora(
    model: nn.Module,
    *,
    total_step: int,
    init_r: int = 12,
    target_r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    tinit: int = 0,
    tfinal: int = 0,
    targets=None,
) -> MethodSetup:
    """AdaLoRA: LoRA whose per-matrix rank is pruned from ``init_r`` to an average ``target_r`` over ``total_step``."""
    from peft import AdaLoraConfig

    names = resolve_targets(model, targets)
    schedule = {"total_step": total_step, "init_r": init_r, "target_r": target_r, "tinit": tinit, "tfinal": tfinal}
    details = {**schedule, "alpha": alpha, "dropout": dropout, "targets": names}
    config = dict(lora_alpha=alpha, lora_dropout=dropout, target_modules=names, **schedule)
    setup = wrap_with_peft(model, "adalora", AdaLoraConfig, details, **config)
    setup.on_step_end = rank_allocation_step(setup.model)
    return setup


def rank_allocation_step(peft_model: nn.Module) -> Callable[[int], None]:
    """AdaLoRA's ``update_and_allocate``; it scores ranks by weight * gradient, so it needs the gradients."""
    tuner = peft_model.base_model
    adapters = [p for name, p in tuner.named_parameters() if "lora_" in name and p.requires_grad]

    def on_step_end(global_step: int) -> None:
        if any(p.grad is None for p in adapters):
            raise RuntimeError("adalora: on_step_end needs the gradients; call it before optimizer.zero_grad()")
        tuner.update_and_allocate(global_step)

    return on_step_end


def prefix(model: nn.Module, *, virtual_tokens: int = 5) -> MethodSetup:
    """Prefix tuning: trainable key/value prefixes in every layer; causal language models only."""
    from peft import PrefixTuningConfig, TaskType

    if peft_task_type(model) is not TaskType.CAUSAL_LM:
        raise RmaskError(f"prefix: prefix tuning needs a causal language model, and {type(model).__name__} is not one")
    details = {"virtual_tokens": virtual_tokens}
    return wrap_with_peft(model, "prefix", PrefixTuningConfig, details, num_virtual_tokens=virtual_tokens)


def shira(
    model: nn.Module, *, r: int | None = None, ratio: float | None = None, seed: int = 0, targets=None
) -> MethodSetup:
    """ShiRA with random masks: a sparse trainable delta of r * (in + out) entries per target matrix.

    ``ratio`` (a fraction of the whole model) picks the ``r`` that comes closest to it instead.
    """
    from peft import ShiraConfig

    names = resolve_targets(model, targets)
    if r is not None and ratio is not None:
        raise RmaskError("shira: give r or ratio, not both")
    if ratio is not None:
        r = shira_rank_for_ratio(model, names, ratio)
    elif r is None:
        r = ShiraConfig.r
    details = {"r": r, "ratio_requested": ratio, "seed": seed, "mask_type": "random", "targets": names}
    return wrap_with_peft(
        model, "shira", ShiraConfig, details, r=r, mask_type="random", random_seed=seed, target_modules=names
    )


def shira_rank_for_ratio(model: nn.Module, targets: list[str], ratio: float) -> int:
    """The ShiRA ``r`` whose r * sum(in + out) trainable entries is closest to ``ratio`` of the model."""
    if not 0 < ratio <= 1:
        raise RmaskError(f"shira: ratio must be in (0, 1], got {ratio}")
    modules = linear_modules(model)
    per_rank = sum(sum(modules[name].weight.shape) for name in targets)
    total = count_parameters(model)
    r = round(ratio * total / per_rank)
    if r < 1:
        raise RmaskError(
            f"shira: ratio {ratio} is below the smallest ShiRA on these targets "
            f"(r=1 trains {per_rank} parameters, {per_rank / total:.2e} of the model)"
        )
    return r
