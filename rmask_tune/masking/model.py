"""Apply, inspect and remove Random Masking on a whole model, without a ``PeftModel`` wrapper.

``apply_random_masking`` injects the peft tuner's layers into the model itself (as peft's
``inject_adapter_in_model`` does), so parameter and module names stay the model's own.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.config import RandomMaskingConfig
from rmask_tune.masking.plan import MaskingInfo
from rmask_tune.masking.tuner import inject
from rmask_tune.masking.tuner_layer import is_masked


def apply_random_masking(
    model: nn.Module,
    ratio: float | None = None,
    density: float | None = None,
    targets: str | Sequence[str] | None = None,
    seed: int = 0,
    structure: str = "random",
    sampling: str = "exact",
    backend: str = "auto",
    path: str = "auto",
    adapter_name: str = "default",
) -> MaskingInfo:
    """Freeze ``model`` and make a fixed random subset of the target matrices' entries trainable.

    ``ratio`` is the fraction of ALL model parameters to train (the paper's "Params"); ``density`` the
    per-matrix fraction. ``structure`` lays the entries out: ``"random"`` anywhere in the target matrices
    (the budget split over them in proportion to their size); ``"head"`` the paper's structured masking,
    the same density of every target matrix as its leading whole columns (input features) plus one partly
    filled column, independent of ``seed`` (see ``head_counts`` for the rounding); ``"columns"`` random
    whole columns, the budget split over the matrices in whole columns (this project's earlier structured
    masking: at very small budgets only a few matrices train).
    ``sampling="exact"`` draws exactly the planned count per matrix; ``"bernoulli"`` keeps each entry with
    probability p as in the paper (the count then varies by about sqrt(count)).
    Targets are ``nn.Linear`` or HF ``Conv1D`` layers; masks are drawn over their (out, in) matrices.
    ``backend`` computes the sparse value gradient: ``torch``, ``numba`` (a compiled CPU loop, the ``cpu``
    extra), ``spops`` (IST-DASLab's kernels, CUDA only, installed from source) or ``auto`` (default: spops
    on CUDA and numba on CPU where they are installed, else torch).
    ``path`` applies the delta: ``dense`` (build ``W0 + delta``), ``sparse`` (add ``x delta^T`` from the
    indices), ``inplace`` (write the delta into the base weight for the one matmul, then restore ``W0``) or
    ``auto`` (per layer and call, by the cost model in ``rmask_tune.masking.layer``).
    The layers are peft's: the tuner ``get_peft_model`` uses injects them (values fp32, the adapter named
    ``adapter_name``) and ``model.peft_config`` records the settings, so ``save_adapter`` writes a peft
    adapter that ``PeftModel.from_pretrained`` loads.
    """
    if any(is_masked(module) for module in model.modules()):
        raise RmaskError("this model already carries Random Masking; remove or merge it first")
    config = RandomMaskingConfig(
        ratio=ratio, density=density, target_modules=targets, seed=seed, structure=structure, sampling=sampling,
        backend=backend, path=path,
    )
    return inject(model, config, adapter_name)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that carry Random Masking adapters, by name."""
    return {n: m for n, m in model.named_modules() if is_masked(m)}


def remove_random_masking(model: nn.Module, merge: bool = True) -> nn.Module:
    """Drop the masking machinery; ``merge=True`` folds the active adapters' deltas into the weights, else
    restores W0.

    The result is a plain transformers model that saves with ``save_pretrained``.
    """
    layers = masked_layers(model)
    if not layers:
        raise RmaskError("this model carries no Random Masking to remove")
    for name, layer in layers.items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        model.set_submodule(name, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold the trained deltas into the base weights (see ``remove_random_masking``)."""
    return remove_random_masking(model, merge=True)
