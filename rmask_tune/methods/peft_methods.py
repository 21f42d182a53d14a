"""Methods that peft implements: LoRA, AdaLoRA, prefix tuning and ShiRA.

peft is imported inside the builders because importing it takes seconds.
"""

from __future__ import annotations

from typing import Callable

import torch
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
    init_r: int = 8,
    target_r: int = 5,
    orth_reg_weight: float = 0.5,
    alpha: float = 16,
    dropout: float = 0.0,
    tinit: int = 0,
    tfinal: int = 0,
    targets=None,
) -> MethodSetup:
    """AdaLoRA: LoRA whose per-matrix rank is pruned from ``init_r`` to an average ``target_r`` over ``total_step``.

    The defaults compare AdaLoRA with LoRA r=8 at the same trainable budget: ``init_r`` 8 trains
    8 * (in + out) entries of A and B per matrix, LoRA r=8's count, plus the 8 singular values E (a relative
    excess of 1 / (in + out), e.g. 0.07% on OPT-125m's q/v). ``target_r`` 5 keeps AdaLoRA's initial / final
    budget ratio of about 1.5 (peft's own defaults, 12 and 8, trained 1.5x LoRA's count: pass them to get
    that variant). The orthogonal regularizer, weighted by ``orth_reg_weight`` (peft's default; 0 drops it),
    is the setup's ``extra_loss``, so it reaches the loss the trainer computes from the logits.
    """
    from peft import AdaLoraConfig

    if total_step - tfinal < 2:  # peft would fail at the first budget step, with no importance scores yet
        raise RmaskError(
            f"adalora: total_step - tfinal must be at least 2 (ranks are scored on the steps before the budget "
            f"is applied), got total_step {total_step} and tfinal {tfinal}"
        )
    names = resolve_targets(model, targets)
    schedule = {"total_step": total_step, "init_r": init_r, "target_r": target_r, "tinit": tinit, "tfinal": tfinal}
    details = {**schedule, "orth_reg_weight": orth_reg_weight, "alpha": alpha, "dropout": dropout, "targets": names}
    config = dict(
        lora_alpha=alpha, lora_dropout=dropout, target_modules=names, orth_reg_weight=orth_reg_weight, **schedule
    )
    setup = wrap_with_peft(model, "adalora", AdaLoraConfig, details, **config)
    setup.on_step_end = rank_allocation_step(setup.model)
    if orth_reg_weight > 0:
        setup.extra_loss = orthogonal_regularizer(setup.model, orth_reg_weight)
    return setup


def orthogonal_regularizer(peft_model: nn.Module, weight: float) -> Callable[[], torch.Tensor]:
    """``weight`` x the mean over AdaLoRA's A and B matrices of ||P P^T - I||_F, P the rank-by-features factor.

    P is A (rank x in) or B^T (rank x out); the penalty keeps the factors' rank directions orthonormal, as
    AdaLoRA's SVD-like form assumes (peft adds the same term only when the model is called with labels).
    """
    named = peft_model.base_model.named_parameters()
    factors = [(p, ".lora_B." in name) for name, p in named if ".lora_A." in name or ".lora_B." in name]

    def penalty(factor: torch.Tensor) -> torch.Tensor:
        gram = factor @ factor.T
        return torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype, device=gram.device))

    def extra_loss() -> torch.Tensor:  # transposes B here: the parameters' data may move after setup
        return weight * torch.stack([penalty(p.T if is_b else p) for p, is_b in factors]).mean()

    return extra_loss


def rank_allocation_step(peft_model: nn.Module) -> Callable[[int], None]:
    """AdaLoRA's ``update_and_allocate``; it scores ranks by weight * gradient, so it needs the gradients."""
    tuner = peft_model.base_model
    adapters = [p for name, p in tuner.named_parameters() if "lora_" in name and p.requires_grad]

    def on_step_end(global_step: int) -> None:
        if any(p.grad is None for p in adapters):
            raise RuntimeError("adalora: on_step_end needs the gradients; call it before optimizer.zero_grad()")
        tuner.update_and_allocate(global_step)

    return on_step_end


PREFIX_INITS = ("real-words", "random")


def prefix(model: nn.Module, *, virtual_tokens: int = 5, init: str = "real-words", seed: int = 0) -> MethodSetup:
    """Prefix tuning: trainable key/value prefixes in every layer; causal language models only.

    ``init`` ``real-words`` (the paper's, after Li & Liang) starts the prefix as the frozen model's own keys
    and values of ``virtual_tokens`` real tokens: vocabulary ids drawn uniformly with ``seed``, as the
    authors' run script draws its "random words". ``random`` keeps peft's random initialization.
    """
    from peft import PrefixTuningConfig, TaskType

    if init not in PREFIX_INITS:
        raise RmaskError(f"prefix: unknown init '{init}'; choose one of {', '.join(PREFIX_INITS)}")
    if peft_task_type(model) is not TaskType.CAUSAL_LM:
        raise RmaskError(f"prefix: prefix tuning needs a causal language model, and {type(model).__name__} is not one")
    if virtual_tokens < 1:
        raise RmaskError(f"prefix: virtual_tokens must be at least 1, got {virtual_tokens}")
    details = {"virtual_tokens": virtual_tokens, "init": init}
    if init == "random":
        return wrap_with_peft(model, "prefix", PrefixTuningConfig, details, num_virtual_tokens=virtual_tokens)
    vocabulary = model.get_input_embeddings().num_embeddings
    tokens = torch.randint(vocabulary, (virtual_tokens,), generator=torch.Generator().manual_seed(seed))
    rows = token_key_values(model, tokens)
    details.update(seed=seed, init_tokens=tokens.tolist())
    setup = wrap_with_peft(model, "prefix", PrefixTuningConfig, details, num_virtual_tokens=virtual_tokens)
    setup.model.prompt_encoder[setup.model.active_adapter].load_prompt_embeddings(rows)
    return setup


@torch.no_grad()
def token_key_values(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen model's keys and values of ``tokens`` in peft's prefix layout (prefix_projection off).

    Row t holds, layer by layer, token t's key then its value, each flattened over (kv heads, head dim):
    peft views a row as (layers * 2, heads, head dim) and gives layer l the slices 2l (key) and 2l + 1 (value).
    The keys are the cached ones (RoPE already applied at positions 0..n-1), so the prefix acts exactly
    as these tokens would in front of the input.
    """
    training = model.training
    model.eval()
    try:
        cache = model(input_ids=tokens[None].to(model.device), use_cache=True).cache
    finally:
        model.train(training)

    def rows(states: torch.Tensor) -> torch.Tensor:  # (1, heads, tokens, head dim) -> (tokens, heads * head dim)
        return states[0].transpose(0, 1).flatten(1)

    per_layer = [torch.stack([rows(layer.keys), rows(layer.values)], dim=1) for layer in cache.layers]
    return torch.stack(per_layer, dim=1).flatten(1)


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
