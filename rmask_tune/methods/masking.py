"""Random Masking (entry-wise) and structured masking (entries laid out along weight columns)."""

from __future__ import annotations

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.methods.setup import MethodSetup

# structured_masking's ``layout`` option -> the masking structure (see apply_random_masking).
LAYOUTS = {"head": "head", "random-columns": "columns"}


def _masking_setup(method: str, model: nn.Module, **settings) -> MethodSetup:
    from rmask_tune.masking import apply_random_masking  # imports peft, which takes seconds

    info = apply_random_masking(model, **settings)
    return MethodSetup(method, model, info.trainable_params, info.total_params, info.to_dict())


def random_masking(
    model: nn.Module, *, ratio=None, density=None, targets=None, seed=0, sampling="exact", path="auto", backend="auto"
):
    """Random Masking: train a fixed random subset of the target weights' entries (``path`` and ``backend``:
    see ``apply_random_masking``)."""
    return _masking_setup(
        "random_masking", model, ratio=ratio, density=density, targets=targets, seed=seed, structure="random",
        sampling=sampling, path=path, backend=backend,
    )


def structured_masking(model: nn.Module, *, ratio=None, density=None, targets=None, seed=0, layout="head"):
    """Structured masking: train entries laid out along the target matrices' columns (input features).

    ``layout="head"`` (default, the paper's) gives every target matrix the same density as its leading
    columns plus one partly filled column; ``"random-columns"`` (this project's earlier variant) picks
    random whole columns, the budget split over the matrices in whole columns.
    """
    if layout not in LAYOUTS:
        raise RmaskError(f"unknown structured_masking layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    return _masking_setup(
        "structured_masking", model, ratio=ratio, density=density, targets=targets, seed=seed,
        structure=LAYOUTS[layout],
    )
