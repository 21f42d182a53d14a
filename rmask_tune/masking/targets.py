"""Which weight matrices a PEFT method adapts: default attention q/v, name patterns, or groups."""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from rmask_tune.errors import RmaskError

# (query, value) leaf names, most common first. Fused projections are used whole when no pair exists.
QV_NAME_PAIRS = (
    ("q_proj", "v_proj"),  # Llama, OPT, Gemma, Mistral, ViT (transformers >= 5), BART
    ("query", "value"),  # BERT, RoBERTa, MiniLM, older ViT
    ("q_lin", "v_lin"),  # DistilBERT
    ("q", "v"),  # T5
    ("to_q", "to_v"),
)
FUSED_QKV_NAMES = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv")
GROUPS = ("attention", "mlp", "all-linear")
_ATTENTION_WORDS = ("attn", "attention")
_HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "pooler", "head")


def is_linear_like(module: nn.Module) -> bool:
    """True for modules whose forward is ``x @ W^T + b`` (nn.Linear) or ``x @ W + b`` (HF Conv1D)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_conv1d(module: nn.Module) -> bool:
    """HF's GPT-2 style ``Conv1D``: a linear layer whose weight is stored as (in, out)."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor)


def out_in_shape(module: nn.Module) -> tuple[int, int]:
    """The (out_features, in_features) shape of a linear-like module's weight, whatever its storage layout."""
    rows, cols = module.weight.shape
    return (cols, rows) if is_conv1d(module) else (rows, cols)


def _in_block(name: str) -> bool:
    """A module inside a repeated transformer block has a numeric path component (``layers.3``)."""
    return any(part.isdigit() for part in name.split("."))


def _is_attention(name: str) -> bool:
    return any(word in part.lower() for part in name.split(".")[:-1] for word in _ATTENTION_WORDS) or (
        name.split(".")[-1] in {n for pair in QV_NAME_PAIRS for n in pair} | set(FUSED_QKV_NAMES)
    )


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name) is not None


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All linear-like modules of ``model`` by qualified name, in model order; a module wrapped by an adapter
    layer (peft's ``base_layer``) is listed under the wrapper's name."""
    found = {}
    for name, module in model.named_modules():
        if not name or "base_layer" in name.split("."):
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if is_linear_like(base):
            found[name] = base
    return found


def shared_weights(model: nn.Module) -> set[int]:
    """The ids of the parameters that ``model`` holds under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def default_qv_targets(model: nn.Module) -> list[str]:
    """The attention query and value projections, found by their names in the architecture.

    Models with a fused projection (GPT-2's ``c_attn``, ``query_key_value``, ``qkv_proj``) get the whole
    fused matrix: its mask then spreads over the q, k and v parts alike (keys included), in proportion to size.
    """
    linears = linear_modules(model)
    leaves = {name.rsplit(".", 1)[-1] for name in linears}
    for q_name, v_name in QV_NAME_PAIRS:
        if q_name in leaves and v_name in leaves:
            return [n for n in linears if n.rsplit(".", 1)[-1] in (q_name, v_name)]
    for fused in FUSED_QKV_NAMES:
        if fused in leaves:
            return [n for n in linears if n.rsplit(".", 1)[-1] == fused]
    raise RmaskError(
        f"cannot find attention query/value projections in {type(model).__name__}; "
        f"pass targets as name patterns or one of the groups {', '.join(GROUPS)}"
    )


def _group_targets(model: nn.Module, group: str) -> list[str]:
    names = [n for n in linear_modules(model) if _in_block(n) and n.rsplit(".", 1)[-1] not in _HEAD_NAMES]
    if group == "attention":
        return [n for n in names if _is_attention(n)]
    if group == "mlp":
        return [n for n in names if not _is_attention(n)]
    return names


def resolve_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """Names of the linear modules to adapt.

    ``targets`` is None or ``"qv"`` (attention query and value, the paper's default), a group
    (``attention``, ``mlp``, ``all-linear``), or name patterns: a pattern matches a module whose
    qualified name equals it, ends with ``.pattern``, or fully matches it as a regular expression.
    """
    if targets is None or targets == "qv":
        return default_qv_targets(model)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    chosen: list[str] = []
    linears = linear_modules(model)
    for target in targets:
        if target == "qv":
            found = default_qv_targets(model)
        elif target in GROUPS:
            found = _group_targets(model, target)
        else:
            found = [n for n in linears if _matches(n, target)]
            if not found:
                non_linear = [n for n, _ in model.named_modules() if n and _matches(n, target)]
                hint = f" (it matches {non_linear[0]}, which is not a linear layer)" if non_linear else ""
                raise RmaskError(f"target '{target}' matches no linear layer of {type(model).__name__}{hint}")
        chosen.extend(n for n in found if n not in chosen)
    if not chosen:
        raise RmaskError(f"targets {list(targets)} select no linear layer of {type(model).__name__}")
    order = list(linears)
    return sorted(chosen, key=order.index)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; ``model.parameters()`` yields tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def is_base_parameter(name: str) -> bool:
    """Whether the parameter ``name`` belongs to the base model, not to an adapter peft added (a tuner
    layer's own parameters, or a ``modules_to_save`` copy)."""
    parts = name.split(".")
    return "modules_to_save" not in parts and not any(part.startswith("rmask_") for part in parts)


def count_base_parameters(model: nn.Module) -> int:
    """Number of the base model's parameters, whatever adapters ``model`` carries."""
    return sum(p.numel() for name, p in model.named_parameters() if is_base_parameter(name))
