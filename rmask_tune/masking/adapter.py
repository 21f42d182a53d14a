"""Random Masking adapters: the trained values in a safetensors file; masks are rebuilt from the seed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.model import apply_random_masking, masked_layers

FORMAT = "rmask-tune/adapter/2"
FORMATS = ("rmask-tune/adapter/1", FORMAT)
_FINGERPRINT_STRIDE = 997
_SAMPLE_SIZE = 256
REBUILD_KEYS = ("requested_ratio", "requested_density", "seed", "structure", "sampling", "targets")


def _base_parameters(model: nn.Module, skip: Callable[[str], bool] | None = None):
    """(name, tensor) of the base model's parameters, masked layers under their wrapped layer's own name;
    parameters whose name ``skip`` accepts are left out."""
    for name, param in model.named_parameters():
        name = name.replace(".base_layer.", ".")
        if not name.endswith("rmask_values") and not (skip and skip(name)):
            yield name, param.detach()


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base model: every parameter's name and shape, and a strided sample of its values.

    Masked layers keep their pretrained weights in their ``base_layer`` and are hashed under the
    wrapped layer's own name, so the fingerprint of a masked and trained model equals that of the
    freshly loaded base model in the same dtype (format 1 adapters; format 2 uses ``base_signature``).
    """
    digest = hashlib.sha256()
    for name, param in _base_parameters(model):
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(param.reshape(-1)[::_FINGERPRINT_STRIDE].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def base_signature(model: nn.Module, skip: Callable[[str], bool] | None = None) -> tuple[str, torch.Tensor]:
    """A hash of the base model's parameter names and shapes, and ``_SAMPLE_SIZE`` of its values (fp32).

    The values are compared with a tolerance (``same_base``), so the base loaded in another dtype
    (bf16 or fp16 under a precision policy, fp32 elsewhere) is still recognised. Parameters whose name
    ``skip`` accepts (a head the adapter carries itself) are left out.
    """
    digest = hashlib.sha256()
    strided = []
    for name, param in _base_parameters(model, skip):
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        strided.append(param.reshape(-1)[::_FINGERPRINT_STRIDE].float().cpu())
    values = torch.cat(strided)
    picks = torch.linspace(0, values.numel() - 1, min(_SAMPLE_SIZE, values.numel())).long()
    return digest.hexdigest()[:32], values[picks]


def same_base(sample: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether two value samples are one base model up to a cast to bf16 or fp16 (and back)."""
    scale = float(other.abs().max()) or 1.0
    return sample.shape == other.shape and bool(torch.allclose(sample, other, rtol=1e-2, atol=1e-4 * scale))


def _index_checksum(flat: torch.Tensor) -> str:
    return hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()[:16]


def masks_checksum(masks: dict[str, torch.Tensor]) -> str:
    """One hash of several layers' names and mask indices, in order."""
    digest = hashlib.sha256()
    for name, flat in masks.items():
        digest.update(f"{name}:{_index_checksum(flat)}".encode())
    return digest.hexdigest()[:16]


def _masking_of(layers: dict[str, nn.Module]) -> dict:
    """The settings the masked layers were made with (``MaskingInfo.to_dict()``)."""
    infos = {id(layer.rmask_info): layer.rmask_info for layer in layers.values()}
    if None in infos.values() or len(infos) != 1:
        raise RmaskError(
            "this model's masked layers do not record one masking (made outside apply_random_masking?); "
            "pass masking=MaskingInfo.to_dict()"
        )
    return next(iter(infos.values())).to_dict()


def save_adapter(
    model: nn.Module, path: str | os.PathLike, masking: dict | None = None, overwrite: bool = False
) -> Path:
    """Write the trained values (fp32), the masking settings and the base fingerprint to ``path``.

    The settings come from the masked layers themselves (``apply_random_masking`` records them);
    ``masking`` (``MaskingInfo.to_dict()``) overrides them. Indices are not stored: they are rebuilt
    from the seed and checked against the stored checksums on load.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise RmaskError(f"adapter file {path} already exists; refusing to overwrite it")
    layers = masked_layers(model)
    if not layers:
        raise RmaskError("this model carries no Random Masking adapter to save")
    if masking is None:
        masking = _masking_of(layers)
    tensors = {name: layer.rmask_values.detach().float().contiguous().cpu() for name, layer in layers.items()}
    structure, sample = base_signature(model)
    meta = {
        "format": FORMAT,
        "masking": json.dumps({k: masking[k] for k in REBUILD_KEYS}),
        "fingerprint": structure,
        "base_sample": json.dumps([float(f"{v:.6g}") for v in sample.tolist()]),
        "index_checksums": json.dumps({n: _index_checksum(l.rmask_flat) for n, l in layers.items()}),
    }
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> dict:
    """Rebuild the masks on a freshly loaded base ``model`` and load the trained values into them."""
    path = Path(path)
    if not path.is_file():
        raise RmaskError(f"adapter file {path} does not exist")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") not in FORMATS:
        raise RmaskError(f"{path} is not a rmask-tune adapter (format {meta.get('format')!r})")
    if meta["format"] == FORMAT:
        structure, sample = base_signature(model)
        same = structure == meta["fingerprint"] and same_base(sample, torch.tensor(json.loads(meta["base_sample"])))
    else:
        structure = base_fingerprint(model)
        same = structure == meta["fingerprint"]
    if not same:
        raise RmaskError(
            f"adapter {path} was trained on a different base model (fingerprint {meta['fingerprint']}, "
            f"this model {structure})"
        )
    masking = json.loads(meta["masking"])
    info = apply_random_masking(
        model,
        ratio=masking["requested_ratio"],
        density=masking["requested_density"],
        targets=masking["targets"],
        seed=masking["seed"],
        structure=masking["structure"],
        sampling=masking["sampling"],
    )
    checksums = json.loads(meta["index_checksums"])
    values = load_file(str(path))
    layers = masked_layers(model)
    for name, layer in layers.items():
        if _index_checksum(layer.rmask_flat) != checksums.get(name):
            raise RmaskError(f"the mask of {name} rebuilt from the seed differs from the saved one (torch version?)")
        with torch.no_grad():
            layer.rmask_values.copy_(values[name])
    return info.to_dict()
