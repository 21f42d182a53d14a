"""Plan Random Masking on a whole model: which entries of which matrices, from the ratio or density and the seed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.layer import PATHS
from rmask_tune.masking.backends import resolve_backend
from rmask_tune.masking.budget import allocate_counts, check_ratio
from rmask_tune.masking.sampling import SAMPLINGS, STRUCTURES, sample_flat_indices
from rmask_tune.masking.targets import count_base_parameters, linear_modules, out_in_shape, resolve_targets


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
    """The masks ``apply_random_masking`` (and the peft tuner) make, without changing ``model``: the info and,
    for each target that gets entries, its sorted flat (row-major, (out, in)) indices and the density they
    were drawn at. Adapters ``model`` already carries are not counted in its size."""
    _check_choice(structure, STRUCTURES, "structure")
    _check_choice(sampling, SAMPLINGS, "sampling")
    _check_choice(path, PATHS, "path")
    if sampling != "exact" and structure != "random":
        raise RmaskError(f"sampling '{sampling}' applies to structure 'random' only, not '{structure}'")
    names = resolve_targets(model, targets)
    linears = linear_modules(model)
    backend = resolve_backend(backend, linears[names[0]].weight.device)
    total_params = count_base_parameters(model)
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
