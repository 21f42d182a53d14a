"""``RandomMaskingLinear``: the one Random Masking layer class, a peft tuner layer (see ``layer`` for the
kernels and the per-adapter mask it runs them with)."""

from __future__ import annotations

import functools
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.layer import RandomMask, effective_weight, masked_linear
from rmask_tune.masking.targets import out_in_shape


class RandomMaskingLinear(nn.Module, BaseTunerLayer):
    """The Random Masking tuner layer: a frozen linear-like ``base_layer`` and named adapters, each a mask
    (``rmask_masks``) and values (``rmask_values``, starting at zero unless ``init_weights=False``).

    Made with one adapter (``adapter_name``, mask ``flat`` at ``density``; see ``RandomMask``); more are
    added with ``update_layer``. Several active adapters add their deltas; ``merge`` writes them into the
    base weight and ``unmerge`` restores it exactly (``W0``'s entries are kept, not recomputed).
    """

    adapter_layer_names = ("rmask_values",)
    other_param_names = ("rmask_masks",)

    def __init__(self, base_layer: nn.Module, flat: torch.Tensor, density: float, backend: str = "torch",
                 path: str = "auto", adapter_name: str = "default", init_weights: bool = True,
                 weight_shared: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.rmask_weight_shared = weight_shared  # another module uses the base weight: never write into it
        base_layer.weight.requires_grad_(False)
        self.out_features, self.in_features = out_in_shape(base_layer)
        self.rmask_values = nn.ParameterDict()
        self.rmask_masks = nn.ModuleDict()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._merged_entries: dict[str, torch.Tensor] = {}
        self._combined: dict[tuple[str, ...], tuple[RandomMask, list[torch.Tensor]]] = {}
        self.update_layer(adapter_name, flat, density, backend, path, init_weights)

    def update_layer(self, adapter_name: str, flat: torch.Tensor, density: float, backend: str = "torch",
                     path: str = "auto", init_weights: bool = True) -> None:
        """Add adapter ``adapter_name``: its mask and values (zeros, or small random values when
        ``init_weights`` is False, as peft's tests ask of a method), in the base dtype until peft's
        ``autocast_adapter_dtype`` casts them to fp32."""
        mask = RandomMask(self.base_layer, flat, density, backend, path, self.rmask_weight_shared)
        values = torch.zeros(mask.rmask_flat.numel(), dtype=torch.float32, device=mask.rmask_flat.device)
        if not init_weights:
            values.normal_(0.0, 0.02)
        self.rmask_masks[adapter_name] = mask
        self.rmask_values[adapter_name] = nn.Parameter(values)
        self._combined.clear()
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        self._combined.clear()
        super().delete_adapter(adapter_name)

    @property
    def mask(self) -> RandomMask:
        """The mask of the one active adapter."""
        return self.rmask_masks[self._single_active()]

    @property
    def values(self) -> nn.Parameter:
        """The values of the one active adapter."""
        return self.rmask_values[self._single_active()]

    def _single_active(self) -> str:
        active = self._active_here()
        if len(active) != 1:
            raise RmaskError(f"this layer has {len(active)} active adapters ({', '.join(active)}); name one")
        return active[0]

    def _active_here(self) -> list[str]:
        return [name for name in self.active_adapters if name in self.rmask_values]

    def uses_sparse_path(self, rows: int, dtype: torch.dtype) -> bool:
        """Whether the active adapter's delta takes the sparse path on ``rows`` input rows in ``dtype``."""
        return self.mask.uses_sparse_path(rows, dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        active = self._active_here()
        if self.disable_adapters or self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        if len(active) == 1:
            return masked_linear(x, self.rmask_masks[active[0]], self.rmask_values[active[0]])
        return masked_linear(x, *self._union(active))

    def _union(self, names: list[str]) -> tuple[RandomMask, torch.Tensor]:
        """One mask over the union of ``names``' entries and the sum of their values on it (differentiable
        to each adapter's values), so several active adapters cost one masked product."""
        key = tuple(names)
        device = self.base_layer.weight.device
        if key not in self._combined or self._combined[key][0].rmask_flat.device != device:
            masks = [self.rmask_masks[name] for name in names]
            union = torch.cat([mask.index for mask in masks]).unique()
            paths = {mask.rmask_path for mask in masks}
            mask = RandomMask(self.base_layer, union, union.numel() / (self.out_features * self.in_features),
                              masks[0].rmask_backend, paths.pop() if len(paths) == 1 else "auto",
                              self.rmask_weight_shared)
            self._combined[key] = mask, [torch.searchsorted(union, m.index) for m in masks]
        mask, places = self._combined[key]
        dtype = functools.reduce(torch.promote_types, (self.rmask_values[name].dtype for name in names))
        values = torch.zeros(mask.rmask_flat.numel(), dtype=dtype, device=device)
        for name, place in zip(names, places):
            values = values.index_add(0, place, self.rmask_values[name].to(dtype))
        return mask, values

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write the adapters' deltas into the base weight (in its own dtype), keeping the ``W0`` entries they
        overwrite; ``safe_merge`` refuses an adapter whose merged weight is not finite (peft's check)."""
        weight = self.base_layer.weight
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.rmask_values:
                continue
            mask = self.rmask_masks[name]
            merged = effective_weight(mask, self.rmask_values[name].detach(), weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise RmaskError(f"NaNs detected in the merged weights: adapter '{name}' seems to be broken")
            self._merged_entries[name] = weight.reshape(-1)[mask.rmask_flat].clone()
            weight.copy_(merged)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the ``W0`` entries the merged adapters overwrote, last merged first: exactly ``W0`` again."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight.view(-1)[self.rmask_masks[name].rmask_flat] = self._merged_entries.pop(name).to(weight.device)


def is_masked(module: nn.Module) -> bool:
    """True for a layer that carries Random Masking adapters."""
    return isinstance(module, RandomMaskingLinear)
