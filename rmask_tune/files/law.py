"""``law.json``'s schema: the fits ``recommend``, ``sweep --lr-from`` and ``analyze`` read back from it.

Every number a recommendation is computed from (exponents, offsets, covariances, ratios, the probe's constant)
must be finite, ratios must lie in (0, 1], variances and spreads must not be negative, and the shared fit's
lists must agree in length. Other keys (validation, excluded cells, ...) are kept as written.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from rmask_tune.files import Count, Finite, NonNegative, Positive, Ratio, Section

LAW_FORMAT = "rmask-tune law v2"
LAW_FORMATS = ("rmask-tune law v1", LAW_FORMAT)
Matrix = list[list[Finite]]


def _square(cov: Matrix, size: int, name: str) -> None:
    """A covariance matrix: ``size`` x ``size``, symmetric, positive semi-definite (no interval from it is NaN)."""
    if len(cov) != size or any(len(row) != size for row in cov):
        raise ValueError(f"{name} must be a {size} x {size} matrix")
    if any(cov[i][i] < 0 for i in range(size)):
        raise ValueError(f"{name} has a negative variance on its diagonal")
    matrix = np.asarray(cov, dtype=float)
    scale = max(float(np.abs(matrix).max()), 1e-300)
    if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-12 * scale):
        raise ValueError(f"{name} is not symmetric")
    if np.linalg.eigvalsh(matrix).min() < -1e-9 * scale:
        raise ValueError(f"{name} is not a covariance matrix (not positive semi-definite)")


class _Ranged(Section):
    ratio_range: tuple[Ratio, Ratio]

    @model_validator(mode="after")
    def _ordered(self):
        if self.ratio_range[0] > self.ratio_range[1]:
            raise ValueError("ratio_range must be [low, high]")
        return self


Steps = Annotated[int, Field(strict=True, ge=1)]


class LawPoint(Section):
    """An optimal-LR point a fit was made on (``steps``: its training budget, absent in law.json from before it)."""

    model: str | None = None
    task: str | None = None
    ratio: Ratio
    steps: Steps | None = None
    log10_lr: Finite | None = None
    se: NonNegative | None = None


class FitSection(_Ranged):
    """A single line ``log10 lr* = a + b log10 ratio`` (``pooled``, ``models``, ``tasks``)."""

    a: Finite
    b: Finite
    a_ci: tuple[Finite, Finite]
    b_ci: tuple[Finite, Finite]
    cov: Matrix
    r2: Finite
    residual_sd: NonNegative
    points: list[LawPoint] = []
    bootstrap: Count = 0

    @model_validator(mode="after")
    def _shape(self):
        _square(self.cov, 2, "cov")
        return self


class SharedSection(_Ranged):
    """One exponent ``b`` across (model, task) pairs with an offset per pair."""

    b: Finite
    x0: Finite
    pairs: list[str] = Field(min_length=1)
    offsets: list[Finite]
    cov: Matrix
    tau: NonNegative
    dof: Annotated[int, Field(strict=True, ge=1)]
    mean_offset: Finite
    mean_offset_se: NonNegative
    between_sd: NonNegative | None = None
    points: list[LawPoint] = []
    g: Finite | None = None  # the budget term (absent: a law fitted at one budget)
    s0: Finite | None = None
    steps_range: tuple[Steps, Steps] | None = None
    b_change: Finite | None = None
    b_change_ci: tuple[Finite, Finite] | None = None

    @model_validator(mode="after")
    def _shape(self):
        if len(self.offsets) != len(self.pairs):
            raise ValueError(f"offsets has {len(self.offsets)} values for {len(self.pairs)} pairs")
        if len(set(self.pairs)) != len(self.pairs) or not all("/" in p for p in self.pairs):
            raise ValueError("pairs must be distinct 'model/task' names")
        if (self.g is None) != (self.s0 is None) or (self.g is not None and self.steps_range is None):
            raise ValueError("g, s0 and steps_range come together (the budget term)")
        if self.steps_range is not None and self.steps_range[0] > self.steps_range[1]:
            raise ValueError("steps_range must be [low, high]")
        _square(self.cov, len(self.pairs) + 1 + (self.g is not None), "cov")
        return self


class ProbePoint(Section):
    model: str | None = None
    lr: Positive
    lambda_max: Positive


class ProbeRecord(Section):
    """The settings the probe measured with (``analysis.landscape.ProbeSettings``; absent ones at its defaults)."""

    batches: Steps = 4
    batch_size: Steps = 8
    iters: Steps = 20
    tol: Positive = 1e-3
    hvp: str = "fd"
    solver: str = "lanczos"
    fd_step: Positive = 1e-2
    fd_step_mode: str = "relative"
    fd_loss_change: Positive = 1e-3
    seed: Annotated[int, Field(strict=True, ge=0)] = 0


class ProbeCalibration(Section):
    """The Hessian probe's constant ``c`` (``lr = c / lambda_max``) and what it was calibrated on."""

    c: Positive
    n: Count | None = None
    c_by_model: dict[str, Positive] = {}
    log10_sd: NonNegative = 0.0
    points: list[ProbePoint] = []
    probe: ProbeRecord = ProbeRecord()


class LawFile(Section):
    """The whole of law.json."""

    format: Literal["rmask-tune law v1", "rmask-tune law v2"]
    method: str = "random_masking"
    shared: SharedSection | None = None
    pooled: FitSection | None = None
    models: dict[str, FitSection] = {}
    tasks: dict[str, FitSection] = {}
    probe_calibration: ProbeCalibration | None = None
    points: list[LawPoint] = []
