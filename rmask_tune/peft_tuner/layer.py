"""``RandomMaskingLayer``: the project's ``RandomMaskingLinear`` as a peft tuner layer.

The masked layer itself (values, masks, forward and backward) is ``RandomMaskingLinear``; this
subclass adds what peft asks of a tuner layer: an adapter name, enabling and disabling, merging into
the base weight and unmerging. A layer holds one adapter (``rmask_values``), so a model carries one
Random Masking adapter at a time.
"""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.layer import RandomMaskingLinear


class RandomMaskingLayer(RandomMaskingLinear, BaseTunerLayer):
    """A ``RandomMaskingLinear`` that peft can enable, disable, merge, unmerge and unload."""

    adapter_layer_names = ("rmask_values",)

    def __init__(
        self, base_layer: nn.Module, flat: torch.Tensor, density: float, backend: str, adapter_name: str,
        path: str = "auto",
    ):
        super().__init__(base_layer, flat, density, backend, path)
        self.adapter_name = adapter_name
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self._unmerged_entries: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if self.disable_adapters or self.merged or self.adapter_name not in self.active_adapters:
            return self.base_layer(x, *args, **kwargs)
        return super().forward(x)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write ``W0 + delta`` into the base weight; ``safe_merge`` refuses non-finite values first."""
        if self.adapter_name not in check_adapters_to_merge(self, adapter_names):
            return
        if safe_merge and not torch.isfinite(self.rmask_values).all():
            raise RmaskError(f"adapter '{self.adapter_name}' holds non-finite values; refusing to merge it")
        self._unmerged_entries = self.fold_delta()
        self.merged_adapters.append(self.adapter_name)

    def unmerge(self) -> None:
        """Restore the base weight to exactly ``W0``."""
        if self.merged:
            self.unfold_delta(self._unmerged_entries)
            self._unmerged_entries = None
            self.merged_adapters = []

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.rmask_values.requires_grad_(self.adapter_name in names and not inference_mode)
        self._active_adapter = names

    def enable_adapters(self, enabled: bool) -> None:
        if enabled:
            self.set_adapter(self.active_adapters)
        else:
            self.rmask_values.requires_grad_(False)
        self._disable_adapters = not enabled

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        if self.adapter_name in names:
            self.rmask_values.requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        raise RmaskError("a Random Masking adapter cannot be deleted from its layers; unload() the model instead")

    def _get_available_adapters(self) -> set[str]:
        return {self.adapter_name}

    def _all_available_adapter_names(self) -> list[str]:
        return [self.adapter_name]

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """The values follow the base weight's device and stay fp32 (peft would cast them to its dtype)."""
        device = device or self.weight.device
        self.rmask_values.data = self.rmask_values.data.to(device)
