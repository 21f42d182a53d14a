"""What an adapter records of its base model and masks, and the check of a base it is loaded on.

A base is recognised by a hash of its parameter names and shapes (the architecture) and a sample of its
values compared with a tolerance (the weights, in any of fp32, bf16 or fp16). A different architecture is
an error; the same architecture with other weights is a ``DifferentBaseWarning`` (an adapter applies to any
base of its architecture), or an error when the check is strict.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Callable

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.targets import is_base_parameter

_FINGERPRINT_STRIDE = 997
_SAMPLE_SIZE = 256


class DifferentBaseWarning(UserWarning):
    """An adapter is loaded on a base of its architecture whose weights differ from the one it was made on."""


def _base_parameters(model: nn.Module, skip: Callable[[str], bool] | None = None):
    """(name, tensor) of the base model's parameters, wrapped layers (a tuner layer's ``base_layer``, a
    saved module's ``original_module``) under their own name; adapter parameters and those whose name
    ``skip`` accepts are left out."""
    for name, param in model.named_parameters():
        name = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        if is_base_parameter(name) and not (skip and skip(name)):
            yield name, param.detach()


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base model: every parameter's name and shape, and a strided sample of its values
    (what format 1 adapters record; later ones record ``base_signature``)."""
    digest = hashlib.sha256()
    for name, param in _base_parameters(model):
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(param.reshape(-1)[::_FINGERPRINT_STRIDE].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def base_signature(model: nn.Module, skip: Callable[[str], bool] | None = None) -> tuple[str, torch.Tensor]:
    """A hash of the base model's parameter names and shapes, and ``_SAMPLE_SIZE`` of its values (fp32).

    Parameters whose name ``skip`` accepts (a head the adapter carries itself) are left out.
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


def check_base(recorded: str, recorded_sample: torch.Tensor, model_signature: tuple[str, torch.Tensor],
               strict: bool, what: str) -> None:
    """Refuse a base of another architecture than ``recorded``; warn of (or, ``strict``, refuse) one of the same
    architecture whose values differ from ``recorded_sample``. ``what`` names the adapter in the messages."""
    fingerprint, sample = model_signature
    if fingerprint != recorded:
        raise RmaskError(
            f"{what} was made on a different base model: its parameter names or shapes differ "
            f"(architecture fingerprint {recorded}, this model {fingerprint})"
        )
    if not same_base(sample, recorded_sample):
        gap = float((sample - recorded_sample).abs().max())
        message = (f"{what} was made on a different base model of the same architecture (fingerprint {fingerprint}): "
                   f"its sampled weights differ by up to {gap:.3g}")
        if strict:
            raise RmaskError(f"{message}; strict_base refuses it")
        warnings.warn(f"{message}; the adapter is applied to this base as it is", DifferentBaseWarning, stacklevel=3)


def index_checksum(flat: torch.Tensor) -> str:
    """A hash of one mask's indices."""
    return hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()[:16]


def masks_checksum(masks: dict[str, torch.Tensor]) -> str:
    """One hash of several layers' names and mask indices, in order."""
    digest = hashlib.sha256()
    for name, flat in masks.items():
        digest.update(f"{name}:{index_checksum(flat)}".encode())
    return digest.hexdigest()[:16]
