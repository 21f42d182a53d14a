"""``RandomMaskingModel``: the peft tuner that puts ``RandomMaskingLayer`` on a model's target layers.

The masks are planned for the whole model at once (``plan_random_masking``, the planner of the
project's own ``apply_random_masking``: the model-level ratio split over the targets), then each
target peft visits is wrapped with its planned mask.
"""

from __future__ import annotations

import copy
import re

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.adapter import base_signature, masks_checksum, same_base
from rmask_tune.masking.model import plan_random_masking
from rmask_tune.masking.targets import shared_weights
from rmask_tune.peft_tuner.config import RandomMaskingConfig
from rmask_tune.peft_tuner.layer import RandomMaskingLayer


def _under(name: str, modules: list[str] | None) -> bool:
    """Whether ``name`` is, or is inside, one of ``modules`` (peft's ``modules_to_save`` matching)."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules or ())


class RandomMaskingModel(BaseTuner):
    """Random Masking on a model: made by ``peft.get_peft_model(model, RandomMaskingConfig(...))``."""

    prefix = "rmask_"
    tuner_layer_cls = RandomMaskingLayer
    target_module_mapping: dict[str, list[str]] = {}  # rmask_tune resolves the targets (None: attention q/v)

    def _pre_injection_hook(self, model: nn.Module, config: RandomMaskingConfig, adapter_name: str) -> None:
        """Plan the masks; a new adapter records the checks in (a copy of) its config, a loaded one passes them."""
        config = self.peft_config[adapter_name] = copy.copy(config)  # the user's config stays reusable
        info, masks = plan_random_masking(
            model, config.ratio, config.density, config.masked_modules or config.target_modules, config.seed,
            config.structure, config.sampling, config.backend, config.path,
        )
        saved = [n for n in masks if _under(n, config.modules_to_save)]
        if saved:
            raise RmaskError(f"target {saved[0]} is also in modules_to_save; a module is either masked or saved whole")
        fingerprint, sample = base_signature(model, skip=lambda name: _under(name, config.modules_to_save))
        checksum = masks_checksum({name: flat for name, (flat, _) in masks.items()})
        if config.base_fingerprint is None:
            config.masked_modules = list(masks)
            config.masks_checksum = checksum
            config.base_fingerprint = fingerprint
            config.base_sample = [float(f"{v:.6g}") for v in sample.tolist()]
        elif fingerprint != config.base_fingerprint or not same_base(sample, torch.tensor(config.base_sample)):
            raise RmaskError(
                f"this Random Masking adapter was made on a different base model (fingerprint "
                f"{config.base_fingerprint}, this model {fingerprint})"
            )
        elif checksum != config.masks_checksum:
            raise RmaskError("the masks rebuilt from the seed differ from the saved ones (another torch version?)")
        self._planned = info, masks, shared_weights(model)

    def _post_injection_hook(self, model: nn.Module, config: RandomMaskingConfig, adapter_name: str) -> None:
        del self._planned  # the layers hold their masks now

    def _check_new_adapter_config(self, config: RandomMaskingConfig) -> None:
        if len(self.peft_config) > 1:
            raise RmaskError("a model carries one Random Masking adapter; unload() it or load the base model again")

    def _prepare_adapter_config(self, peft_config: RandomMaskingConfig, model_config: dict) -> RandomMaskingConfig:
        return peft_config  # targets were resolved with the plan

    def _check_target_module_exists(self, peft_config: RandomMaskingConfig, key: str) -> bool:
        return key in self._planned[1]

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        info, masks, shared = self._planned
        flat, density = masks[current_key]
        layer = RandomMaskingLayer(target, flat, density, info.backend, adapter_name, info.path)
        layer.rmask_info = info
        layer.rmask_weight_shared = id(target.weight) in shared
        self._replace_module(parent, target_name, layer, target)

    def delete_adapter(self, adapter_name: str) -> None:
        raise RmaskError("a Random Masking adapter cannot be deleted; unload() the model instead")
