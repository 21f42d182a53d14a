"""The precision policy: one place that says how weights are stored, what autocast computes in, and
what the optimizer updates.

| policy | frozen weights stored in | autocast (compute) | trained tensors (master) | loss scaling |
|--------|--------------------------|--------------------|--------------------------|--------------|
| fp32   | fp32                     | off                | fp32                     | no           |
| bf16   | bf16                     | bf16               | fp32                     | no           |
| fp16   | fp16                     | fp16               | fp32                     | dynamic      |

Normalization layers are kept in fp32 under every policy.

``auto`` is bf16 on CUDA (fp16 where the GPU has no bf16) and fp32 on CPU. Whatever is trained is kept
in fp32 whatever the checkpoint's dtype (an fp16 hub checkpoint included), so small AdamW updates are not
rounded away; frozen weights are stored in the compute dtype to save memory. Random Masking's values
are fp32 by construction, LoRA's adapters are upcast by peft, and full fine-tuning, BitFit, prefix
tuning and trained heads are upcast by :meth:`PrecisionPolicy.cast_model`. fp16 scales the loss
(``torch.amp.GradScaler``) and skips steps whose gradients overflow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from rmask_tune.errors import RmaskError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionPolicy:
    """Weight storage, autocast and master dtypes of one precision setting (see the module's table)."""

    name: str
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    master_dtype: torch.dtype = torch.float32

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without a scaled loss."""
        return self.autocast_dtype == torch.float16

    def load_dtype(self, trains_everything: bool) -> torch.dtype:
        """The dtype to load a checkpoint in: the master dtype when every weight trains, else the storage dtype."""
        return self.master_dtype if trains_everything else self.weight_dtype

    def cast_model(self, model: nn.Module) -> dict[str, int]:
        """Store trainable parameters and normalization layers in the master dtype, the other frozen
        parameters in the weight dtype, in place.

        Normalization layers stay fp32 as in usual mixed-precision practice; it also keeps a layer norm
        whose bias trains (BitFit) in one dtype, which CPU autocast needs (it does not cast layer_norm).
        Returns how many parameter values each dtype holds afterwards (logged with the trial).
        """
        in_norms = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
        counts: dict[str, int] = {}
        with torch.no_grad():
            for param in model.parameters():
                if param.is_floating_point():
                    master = param.requires_grad or id(param) in in_norms
                    wanted = self.master_dtype if master else self.weight_dtype
                    if param.dtype != wanted:
                        param.data = param.data.to(wanted)
                key = str(param.dtype).removeprefix("torch.")
                counts[key] = counts.get(key, 0) + param.numel()
        return counts

    def autocast(self, device_type: str):
        """The autocast context for forward passes (a no-op for fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def grad_scaler(self, device_type: str) -> torch.amp.GradScaler:
        """A dynamic loss scaler for fp16, a pass-through (disabled) scaler otherwise."""
        return torch.amp.GradScaler(device_type, enabled=self.loss_scaling)

    def to_dict(self) -> dict:
        """A json-able description (logged with every trial)."""
        name = lambda dtype: None if dtype is None else str(dtype).removeprefix("torch.")  # noqa: E731
        return {
            "precision": self.name,
            "weight_dtype": name(self.weight_dtype),
            "autocast_dtype": name(self.autocast_dtype),
            "master_dtype": name(self.master_dtype),
            "loss_scaling": self.loss_scaling,
        }


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, batch norms, and models' own norms (LlamaRMSNorm, T5LayerNorm, ...)."""
    return "norm" in type(module).__name__.lower()


POLICIES = {
    "fp32": PrecisionPolicy("fp32", torch.float32, None),
    "bf16": PrecisionPolicy("bf16", torch.bfloat16, torch.bfloat16),
    "fp16": PrecisionPolicy("fp16", torch.float16, torch.float16),
}


def resolve_precision(name: str | None, device_type: str) -> PrecisionPolicy:
    """The policy called ``name`` (None or ``auto``: bf16 on CUDA, fp16 on GPUs without bf16, fp32 on CPU)."""
    if name in (None, "auto"):
        if device_type != "cuda":
            return POLICIES["fp32"]
        return POLICIES["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    if name not in POLICIES:
        raise RmaskError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    return POLICIES[name]
