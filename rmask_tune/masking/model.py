"""Apply, inspect and remove Random Masking on a whole model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.layer import PATHS, RandomMaskingLinear, is_masked
from rmask_tune.masking.backends import resolve_backend
from rmask_tune.masking.budget import allocate_counts, check_ratio
from rmask_tune.masking.sampling import SAMPLINGS, STRUCTURES, sample_flat_indices
from rmask_tune.masking.targets import (
    count_parameters, linear_modules, out_in_shape, resolve_targets, shared_weights,
)


@dataclass
class MaskingInfo:
    """What ``apply_random_masking`` did: exact counts and the settings that rebuild the masks."""

    trainable_params: int
    total_params: int
    ratio: float
    density: float
    requested_ratio: float | None
    requested_density: float | None
    seed: int
    structure: str
    sampling: str
    targets: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    backend: str = "torch"
    path: str = "auto"

    def to_dict(self) -> dict:
        """A json-able copy."""
        return asdict(self)


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RmaskError(f"unknown {what} '{value}'; choose one of {', '.join(choices)}")


def head_counts(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, int]:
    """The ``head`` structure's per-matrix counts: ``density`` of each matrix, rounded to the nearest
    entry (halves to even) and at least one, so every target matrix trains at (nearly) the same density.

    The authors' script truncates instead of rounding; the sum may differ from the budget by up to half
    an entry per matrix (more where a matrix is raised to one entry), and ``MaskingInfo`` reports the
    counts actually drawn.
    """
    return {n: max(1, round(density * r * c)) for n, (r, c) in shapes.items()}


def _plan_counts(shapes, total_params, ratio, density, structure) -> dict[str, int]:
    if (ratio is None) == (density is None):
        raise RmaskError("give exactly one of ratio (fraction of the whole model) or density (per matrix)")
    unit_of = {n: (r if structure == "columns" else 1) for n, (r, c) in shapes.items()}
    target_params = sum(r * c for r, c in shapes.values())
    if density is not None:
        if not 0 < density <= 1:
            raise RmaskError(f"density must be in (0, 1], got {density}")
        wanted = round(density * target_params)
    else:
        wanted = check_ratio(ratio, total_params, target_params)
    if structure == "head":
        return head_counts(shapes, wanted / target_params if density is None else density)
    counts = allocate_counts(shapes, wanted, unit_of)
    if sum(counts.values()) == 0:
        raise RmaskError(
            f"{structure} masking at this ratio selects nothing: one unit is {min(unit_of.values())} entries, "
            f"the request is {wanted}"
        )
    return counts


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
    indices) or ``auto`` (per layer and call, by the cost model in ``rmask_tune.masking.layer``).
    Every masked layer keeps the returned info as ``rmask_info``, so ``save_adapter`` needs nothing more.
    """
    info, masks = plan_random_masking(model, ratio, density, targets, seed, structure, sampling, backend, path)
    for param in model.parameters():
        param.requires_grad_(False)
    linears = linear_modules(model)
    shared = shared_weights(model)
    for name, (flat, p) in masks.items():
        layer = RandomMaskingLinear(linears[name], flat, p, info.backend, info.path)
        layer.rmask_info = info
        layer.rmask_weight_shared = id(layer.weight) in shared
        model.set_submodule(name, layer)
    return info


def plan_random_masking(
    model: nn.Module,
    ratio: float | None = None,
    density: float | None = None,
    targets: str | Sequence[str] | None = None,
    seed: int = 0,
    structure: str = "random",
    sampling: str = "exact",
    backend: str = "auto",
    path: str = "auto",
) -> tuple[MaskingInfo, dict[str, tuple[torch.Tensor, float]]]:
    """What ``apply_random_masking`` does, without changing ``model``: the info and, for each target that
    gets entries, its sorted flat (row-major, (out, in)) indices and the density they were drawn at."""
    _check_choice(structure, STRUCTURES, "structure")
    _check_choice(sampling, SAMPLINGS, "sampling")
    _check_choice(path, PATHS, "path")
    if sampling != "exact" and structure != "random":
        raise RmaskError(f"sampling '{sampling}' applies to structure 'random' only, not '{structure}'")
    if any(is_masked(m) for m in model.modules()):
        raise RmaskError("this model already carries Random Masking; remove or merge it first")
    names = resolve_targets(model, targets)
    linears = linear_modules(model)
    backend = resolve_backend(backend, linears[names[0]].weight.device)
    total_params = count_parameters(model)
    shapes = {n: out_in_shape(linears[n]) for n in names}
    counts = _plan_counts(shapes, total_params, ratio, density, structure)
    masks = {}
    for name in names:
        if counts[name] == 0:
            continue
        rows, cols = shapes[name]
        p = counts[name] / (rows * cols)
        masks[name] = sample_flat_indices(shapes[name], counts[name], p, seed, name, structure, sampling), p
    achieved = {name: flat.numel() for name, (flat, _) in masks.items()}
    trainable = sum(achieved.values())
    target_params = sum(r * c for r, c in shapes.values())
    info = MaskingInfo(
        trainable_params=trainable,
        total_params=total_params,
        ratio=trainable / total_params,
        density=trainable / target_params,
        requested_ratio=ratio,
        requested_density=density,
        seed=seed,
        structure=structure,
        sampling=sampling,
        targets=names,
        counts=achieved,
        backend=backend,
        path=path,
    )
    return info, masks


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``model`` that carry Random Masking deltas, by name."""
    return {n: m for n, m in model.named_modules() if is_masked(m)}


def remove_random_masking(model: nn.Module, merge: bool = True) -> nn.Module:
    """Drop the masking machinery; ``merge=True`` folds the deltas into the weights, else restores W0.

    The result is a plain transformers model that saves with ``save_pretrained``.
    """
    layers = masked_layers(model)
    if not layers:
        raise RmaskError("this model carries no Random Masking to remove")
    for name, layer in layers.items():
        model.set_submodule(name, layer.merged_base_layer() if merge else layer.base_layer)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold the trained deltas into the base weights (see ``remove_random_masking``)."""
    return remove_random_masking(model, merge=True)
