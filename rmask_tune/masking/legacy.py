"""Adapters written by earlier versions: one ``adapter.safetensors`` file, formats ``rmask-tune/adapter/1``
and ``/2``: the values under the masked modules' names, the masking's settings and the base's fingerprint
in the metadata. They still load, on their exact base only (as they always did): format 1 records a hash
of the base's values, format 2 a sample of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.model import apply_random_masking, masked_layers
from rmask_tune.masking.signature import base_fingerprint, base_signature, index_checksum, same_base

FORMATS = ("rmask-tune/adapter/1", "rmask-tune/adapter/2")


def load_legacy_adapter(model: nn.Module, path: Path) -> dict:
    """Rebuild the masks of a format 1 or 2 adapter file on its base ``model`` and load the values."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") not in FORMATS:
        raise RmaskError(f"{path} is not a rmask-tune adapter (format {meta.get('format')!r})")
    if meta["format"] == FORMATS[1]:
        structure, sample = base_signature(model)
        same = structure == meta["fingerprint"] and same_base(sample, torch.tensor(json.loads(meta["base_sample"])))
    else:
        structure = base_fingerprint(model)
        same = structure == meta["fingerprint"]
    if not same:
        raise RmaskError(
            f"adapter {path} was trained on a different base model (fingerprint {meta['fingerprint']}, "
            f"this model {structure}); adapters of format {meta['format']} load on their exact base only"
        )
    masking = json.loads(meta["masking"])
    info = apply_random_masking(
        model, ratio=masking["requested_ratio"], density=masking["requested_density"], targets=masking["targets"],
        seed=masking["seed"], structure=masking["structure"], sampling=masking["sampling"],
    )
    checksums = json.loads(meta["index_checksums"])
    values = load_file(str(path))
    for name, layer in masked_layers(model).items():
        if index_checksum(layer.mask.rmask_flat) != checksums.get(name):
            raise RmaskError(f"the mask of {name} rebuilt from the seed differs from the saved one (torch version?)")
        with torch.no_grad():
            layer.values.copy_(values[name])
    return info.to_dict()
