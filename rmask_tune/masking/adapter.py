"""Random Masking adapters: the trained values in a safetensors file; masks are rebuilt from the seed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.model import apply_random_masking, masked_layers

FORMAT = "rmask-tune/adapter/1"
_FINGERPRINT_STRIDE = 997
REBUILD_KEYS = ("requested_ratio", "requested_density", "seed", "structure", "sampling", "targets")


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base model: every parameter's name and shape, and a strided sample of its values.

    Masked layers keep their pretrained weights in their ``base_layer`` and are hashed under the
    wrapped layer's own name, so the fingerprint of a masked and trained model equals that of the
    freshly loaded base model.
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if name.endswith("rmask_values"):
            continue
        values = param.detach().reshape(-1)
        name = name.replace(".base_layer.", ".")
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(values[::_FINGERPRINT_STRIDE].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _index_checksum(flat: torch.Tensor) -> str:
    return hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()[:16]


def save_adapter(model: nn.Module, path: str | os.PathLike, masking: dict, overwrite: bool = False) -> Path:
    """Write the trained values (fp32), the masking settings and the base fingerprint to ``path``.

    ``masking`` is ``MaskingInfo.to_dict()`` from ``apply_random_masking``. Indices are not stored:
    they are rebuilt from the seed and checked against the stored checksums on load.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise RmaskError(f"adapter file {path} already exists; refusing to overwrite it")
    layers = masked_layers(model)
    if not layers:
        raise RmaskError("this model carries no Random Masking adapter to save")
    tensors = {name: layer.rmask_values.detach().float().contiguous().cpu() for name, layer in layers.items()}
    meta = {
        "format": FORMAT,
        "masking": json.dumps({k: masking[k] for k in REBUILD_KEYS}),
        "fingerprint": base_fingerprint(model),
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
    if meta.get("format") != FORMAT:
        raise RmaskError(f"{path} is not a rmask-tune adapter (format {meta.get('format')!r})")
    fingerprint = base_fingerprint(model)
    if fingerprint != meta["fingerprint"]:
        raise RmaskError(
            f"adapter {path} was trained on a different base model (fingerprint {meta['fingerprint']}, "
            f"this model {fingerprint})"
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
