"""``RandomMaskingModel``: the peft tuner that puts ``RandomMaskingLinear`` layers on a model's targets.

Each adapter's masks are planned for the whole model at once (``plan_random_masking``: the model-level
ratio split over the targets, drawn from the adapter's seed), then each target peft visits gets that
adapter's mask: a new ``RandomMaskingLinear``, or a further adapter on the one already there. Importing
this module registers the method with peft, which ``PeftModel.from_pretrained`` needs.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, cast_adapter_dtype
from peft.utils import register_peft_method
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.config import RandomMaskingConfig
from rmask_tune.masking.tuner_layer import RandomMaskingLinear
from rmask_tune.masking.peft_type import NAME, RMASK
from rmask_tune.masking.plan import MaskingInfo, plan_random_masking
from rmask_tune.masking.signature import base_signature, check_base, masks_checksum
from rmask_tune.masking.targets import shared_weights

# Set on a config this process filled in: using it again makes a fresh adapter instead of checking a saved one.
_FILLED_HERE = "_rmask_filled_here"


def _under(name: str, modules: list[str] | None) -> bool:
    """Whether ``name`` is, or is inside, one of ``modules`` (peft's ``modules_to_save`` matching)."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules or ())


def plan_adapter(model: nn.Module, config: RandomMaskingConfig) -> tuple[MaskingInfo, dict]:
    """The masks of the adapter ``config`` describes on ``model``.

    A new adapter's config is filled in (masked modules, masks checksum, base fingerprint and sample); a
    saved one's is checked: the masks rebuilt from the seed must match, and the base must be of the same
    architecture (other weights: ``DifferentBaseWarning``, or an error with ``strict_base``).
    """
    saved = config.base_fingerprint is not None and not getattr(config, _FILLED_HERE, False)
    signature = base_signature(model, skip=lambda name: _under(name, config.modules_to_save))
    if saved:  # before planning: on another architecture the saved targets may not exist
        check_base(config.base_fingerprint, torch.tensor(config.base_sample), signature, config.strict_base,
                   "this Random Masking adapter")
    info, masks = plan_random_masking(
        model, config.ratio, config.density, config.masked_modules if saved else config.target_modules,
        config.seed, config.structure, config.sampling, config.backend, config.path,
    )
    also_saved = [n for n in masks if _under(n, config.modules_to_save)]
    if also_saved:
        raise RmaskError(f"target {also_saved[0]} is also in modules_to_save; a module is either masked or saved whole")
    checksum = masks_checksum({name: flat for name, (flat, _) in masks.items()})
    if saved and checksum != config.masks_checksum:
        raise RmaskError("the masks rebuilt from the seed differ from the saved ones (another torch version?)")
    if not saved:
        config.masked_modules = list(masks)
        config.masks_checksum = checksum
        config.base_fingerprint = signature[0]
        config.base_sample = [float(f"{v:.6g}") for v in signature[1].tolist()]
        setattr(config, _FILLED_HERE, True)
    return info, masks


class RandomMaskingModel(BaseTuner):
    """Random Masking on a model: made by ``peft.get_peft_model(model, RandomMaskingConfig(...))``."""

    prefix = "rmask_"
    tuner_layer_cls = RandomMaskingLinear
    target_module_mapping: dict[str, list[str]] = {}  # rmask_tune resolves the targets (None: attention q/v)

    def _prepare_adapter_config(self, peft_config: RandomMaskingConfig, model_config: dict) -> RandomMaskingConfig:
        """Plan the adapter's masks (each adapter peft injects passes here first) into ``last_plan``: the
        ``MaskingInfo`` and each target's mask; the targets are resolved."""
        self.last_plan = plan_adapter(self.model, peft_config)
        self.shared = shared_weights(self.model)
        return peft_config

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's cast to fp32, keeping which values train: peft puts a cast value back into the
        ``ParameterDict`` as a new Parameter, which would make an inactive adapter trainable."""
        layers = [m for m in self.model.modules()
                  if isinstance(m, RandomMaskingLinear) and adapter_name in m.rmask_values]
        trains = [layer.rmask_values[adapter_name].requires_grad for layer in layers]
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        for layer, flag in zip(layers, trains):
            layer.rmask_values[adapter_name].requires_grad_(flag)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """peft's mixed adapter batches (``adapter_names=`` in a call) are refused here, not ignored."""
        if kwargs.get("adapter_names") is not None:
            raise RmaskError("Random Masking has no mixed adapter batches (adapter_names=); use set_adapter")
        yield

    def _check_target_module_exists(self, peft_config: RandomMaskingConfig, key: str) -> bool:
        return key in self.last_plan[1]

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        info, masks = self.last_plan
        flat, density = masks[current_key]
        if isinstance(target, RandomMaskingLinear):
            target.update_layer(adapter_name, flat, density, info.backend, info.path, config.init_weights)
            return
        layer = RandomMaskingLinear(target, flat, density, info.backend, info.path, adapter_name, config.init_weights,
                                    weight_shared=id(target.weight) in self.shared)
        layer.set_adapter(self.active_adapters)  # a further adapter on a fresh layer starts inactive, as on the others
        self._replace_module(parent, target_name, layer, target)


def inject(model: nn.Module, config: RandomMaskingConfig, adapter_name: str = "default") -> MaskingInfo:
    """Put adapter ``adapter_name`` into ``model`` itself, without a ``PeftModel`` wrapper (what peft's
    ``inject_adapter_in_model`` does), with fp32 values; ``model.peft_config`` records the config."""
    info = RandomMaskingModel(model, config, adapter_name).last_plan[0]
    cast_adapter_dtype(model, adapter_name, autocast_adapter_dtype=True)
    return info


if RMASK not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name=NAME.lower(), config_cls=RandomMaskingConfig, model_cls=RandomMaskingModel)
