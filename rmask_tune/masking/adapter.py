"""Random Masking adapters on disk: peft's format (a folder with ``adapter_config.json`` and
``adapter_model.safetensors``, what ``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained``
loads). The values are saved; the masks are rebuilt from the seed and checked against the saved checksum.

Adapters written by earlier versions (one ``adapter.safetensors`` file) still load: see ``legacy``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from peft import PeftConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.config import RandomMaskingConfig
from rmask_tune.masking.legacy import load_legacy_adapter
from rmask_tune.masking.model import masked_layers
from rmask_tune.masking.peft_type import NAME
from rmask_tune.masking.tuner import inject
from rmask_tune.masking.tuner_layer import is_masked

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # the keys PeftModel.save_pretrained writes start with it


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 overwrite: bool = False) -> Path:
    """Write adapter ``adapter_name`` of ``model`` (made by ``apply_random_masking`` or ``get_peft_model``) to
    the folder ``path`` in peft's format, exactly as ``PeftModel.save_pretrained`` would; atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RmaskError(f"adapter {path} already exists; refusing to overwrite it")
    if not masked_layers(model):
        raise RmaskError("this model carries no Random Masking adapter to save")
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if not isinstance(config, RandomMaskingConfig):
        raise RmaskError(
            f"this model records no Random Masking config for adapter '{adapter_name}' (made outside "
            "apply_random_masking or get_peft_model?)"
        )
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {(k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k): v.detach().contiguous().cpu()
               for k, v in state.items()}  # fmt: skip
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    inference_mode, config.inference_mode = config.inference_mode, True  # as PeftModel.save_pretrained saves it
    try:
        config.save_pretrained(str(tmp))
    finally:
        config.inference_mode = inference_mode
    if path.exists():
        old = path.with_name(path.name + ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 strict_base: bool | None = None) -> dict:
    """Rebuild a saved adapter's masks on a base ``model`` and load its values (trainable, fp32); returns the
    masking's settings and counts (``MaskingInfo.to_dict()``).

    ``path`` is a peft adapter folder or an older ``adapter.safetensors`` file. A base of another
    architecture is refused; one of the same architecture with other weights gets a ``DifferentBaseWarning``,
    or is refused when ``strict_base`` (default: the saved config's) is set.
    """
    path = Path(path)
    if path.is_file():
        return load_legacy_adapter(model, path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise RmaskError(f"{path} is not an adapter: no {CONFIG_NAME} and {WEIGHTS_NAME} there")
    if any(is_masked(module) for module in model.modules()):
        raise RmaskError("this model already carries Random Masking; load the adapter on a fresh base model")
    config = PeftConfig.from_pretrained(str(path))
    if not isinstance(config, RandomMaskingConfig):
        raise RmaskError(f"{path} holds a {config.peft_type} adapter, not a Random Masking one")
    if config.modules_to_save:
        raise RmaskError(f"adapter {path} also saves whole modules ({', '.join(config.modules_to_save)}); "
                         "load it with peft's PeftModel.from_pretrained")
    config.inference_mode = False
    if strict_base is not None:
        config.strict_base = strict_base
    info = inject(model, config, adapter_name)
    result = set_peft_model_state_dict(model, load_file(str(path / WEIGHTS_NAME)), adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if ".rmask_values." in key]
    if missing or result.unexpected_keys:
        raise RmaskError(f"adapter {path} does not fit its own masks ({len(missing)} value tensors missing, "
                         f"{len(result.unexpected_keys)} unexpected)")
    return info.to_dict()


def find_adapter(run_dir: str | os.PathLike) -> Path | None:
    """A run folder's Random Masking adapter: its peft folder ``adapter`` when that holds a Random Masking
    adapter (another method's is not one), else an older run's ``adapter.safetensors``; None without one."""
    run_dir = Path(run_dir)
    config = run_dir / "adapter" / CONFIG_NAME
    if config.is_file() and json.loads(config.read_text()).get("peft_type") == NAME:
        return run_dir / "adapter"
    legacy = run_dir / "adapter.safetensors"
    return legacy if legacy.is_file() else None


def saved_values(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trained values a saved Random Masking adapter (a peft folder or an older file) holds, by name."""
    path = Path(path)
    return load_file(str(path / WEIGHTS_NAME if path.is_dir() else path))
