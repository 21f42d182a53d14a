"""The "optimal learning rate vs sparsity" law: ``log10 lr* = a + b * log10(ratio)``.

Three steps, numpy only (importable without mlflow or matplotlib):

1. :func:`estimate_optimum` turns one LR curve (dev metric per LR, several seeds) into a continuous
   optimal LR with a standard error in log10 units: a quadratic in ``log10 lr`` through the best grid
   point and its two neighbours, or the grid point itself when it lies at the grid's edge (flagged).
2. :func:`fit_law` fits the line by weighted least squares (weights ``1 / se**2``) with seeded
   case-resampling bootstrap intervals.
3. :class:`Law` (saved as ``law.json``, loaded by :func:`load_law`) predicts the LR for a ratio, and
   :func:`narrow_grid` gives a short log-spaced grid around the prediction for a follow-up sweep.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmask_tune.errors import RmaskError

LAW_FORMAT = "rmask-tune law v1"
CONFIDENCE = 0.95
_Z = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class Optimum:
    """A continuous optimal LR estimated from one LR curve."""

    log10_lr: float
    se: float  # standard error of log10_lr
    kind: str  # "quadratic", or "edge-low" / "edge-high" (best LR at the grid's edge)
    best_grid_lr: float

    @property
    def lr(self) -> float:
        return 10.0**self.log10_lr

    @property
    def at_edge(self) -> bool:
        return self.kind.startswith("edge")


def estimate_optimum(lrs, values) -> Optimum:
    """Estimate the dev-metric-maximising LR from ``values[i]`` = the metrics (one per seed) at ``lrs[i]``.

    The mean curve's best point and its neighbours get a quadratic in ``log10 lr``; its vertex is the
    estimate. Its standard error combines the seed noise (the per-point standard error of the mean,
    propagated through the vertex) with the grid's resolution (``spacing / sqrt(12)``). A best point
    at either end of the grid returns that grid point, flagged ``edge-*``, with one grid spacing as
    its error: the true optimum may lie beyond the grid.
    """
    x = np.log10(np.asarray(lrs, dtype=float))
    if len(x) < 2 or len(set(x.tolist())) != len(x):
        raise RmaskError("an optimal-LR estimate needs at least two distinct learning rates")
    order = np.argsort(x)
    x = x[order]
    samples = [np.asarray(values[i], dtype=float) for i in order]
    if any(s.size == 0 for s in samples):
        raise RmaskError("an optimal-LR estimate needs at least one metric per learning rate")
    mean = np.array([s.mean() for s in samples])
    sem = np.array([s.std(ddof=1) / math.sqrt(s.size) if s.size > 1 else 0.0 for s in samples])
    best = int(np.argmax(mean))
    best_lr = float(10.0 ** x[best])
    if best in (0, len(x) - 1):
        spacing = abs(x[1] - x[0]) if best == 0 else abs(x[-1] - x[-2])
        kind = "edge-low" if best == 0 else "edge-high"
        return Optimum(float(x[best]), float(spacing), kind, best_lr)
    xs, ys, es = x[best - 1 : best + 2], mean[best - 1 : best + 2], sem[best - 1 : best + 2]
    spacing = (xs[2] - xs[0]) / 2
    grid_se = spacing / math.sqrt(12.0)
    design = np.stack([xs**2, xs, np.ones(3)], axis=1)
    solve = np.linalg.inv(design)  # coefficients (c2, c1, c0) = solve @ ys
    c2, c1, _ = solve @ ys  # c2 < 0: the middle point is the first maximum of the three
    vertex = float(np.clip(-c1 / (2 * c2), xs[0], xs[2]))
    grad = np.array([c1 / (2 * c2**2), -1 / (2 * c2), 0.0]) @ solve  # d vertex / d ys
    noise_se = float(math.sqrt(np.sum((grad * es) ** 2)))
    return Optimum(vertex, float(math.hypot(noise_se, grid_se)), "quadratic", best_lr)


@dataclass
class Fit:
    """A fitted line ``log10 lr* = a + b log10 ratio`` with bootstrap intervals."""

    a: float
    b: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    cov: list[list[float]]  # bootstrap covariance of (a, b)
    r2: float
    residual_sd: float  # weighted scatter of the points around the line, log10 units
    ratio_range: tuple[float, float]
    points: list[dict] = field(default_factory=list)
    bootstrap: int = 0

    def log10_lr(self, ratio: float) -> float:
        return self.a + self.b * math.log10(ratio)

    def band(self, ratio, *, prediction: bool = False):
        """The 95% interval (log10 lo, log10 hi) of the line at ``ratio`` (a number or an array).

        ``prediction=True`` widens it by the points' scatter: where one new task's optimum falls.
        """
        x = np.log10(np.asarray(ratio, dtype=float))
        var = self.cov[0][0] + 2 * x * self.cov[0][1] + x**2 * self.cov[1][1]
        if prediction:
            var = var + self.residual_sd**2
        centre = self.a + self.b * x
        half = _Z * np.sqrt(np.maximum(var, 0.0))
        return centre - half, centre + half

    def to_dict(self) -> dict:
        return {
            "a": self.a, "b": self.b, "a_ci": list(self.a_ci), "b_ci": list(self.b_ci), "cov": self.cov,
            "r2": self.r2, "residual_sd": self.residual_sd, "ratio_range": list(self.ratio_range),
            "n_points": len(self.points), "bootstrap": self.bootstrap, "points": self.points,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Fit:
        return cls(
            a=float(d["a"]), b=float(d["b"]), a_ci=tuple(d["a_ci"]), b_ci=tuple(d["b_ci"]), cov=d["cov"],
            r2=float(d["r2"]), residual_sd=float(d["residual_sd"]), ratio_range=tuple(d["ratio_range"]),
            points=list(d.get("points", [])), bootstrap=int(d.get("bootstrap", 0)),
        )


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    b = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
    return float(ym - b * xm), float(b)


def fit_law(points: list[dict], *, bootstrap: int = 1000, seed: int = 0) -> Fit:
    """Fit ``log10 lr* = a + b log10 ratio`` by weighted least squares over ``points``.

    Each point needs ``ratio``, ``log10_lr`` and ``se`` (its standard error, log10 units; weight
    ``1/se**2``); other keys are kept in the fit's ``points``. The intervals are percentile intervals
    of ``bootstrap`` case-resampled refits (seeded; resamples with a single ratio are redrawn).
    """
    if bootstrap < 1:
        raise RmaskError(f"bootstrap must be at least 1 resample, got {bootstrap}")
    if len({p["ratio"] for p in points}) < 2:
        raise RmaskError("a law fit needs optimal learning rates at two or more ratios")
    x = np.log10([p["ratio"] for p in points])
    y = np.array([p["log10_lr"] for p in points], dtype=float)
    w = 1.0 / np.maximum(np.array([p["se"] for p in points], dtype=float), 1e-6) ** 2
    a, b = _wls(x, y, w)
    resid = y - (a + b * x)
    ym = np.average(y, weights=w)
    total = np.sum(w * (y - ym) ** 2)
    r2 = float(1 - np.sum(w * resid**2) / total) if total > 0 else 1.0
    dof = max(len(x) - 2, 1)
    residual_sd = float(math.sqrt(np.sum(w * resid**2) / np.sum(w) * len(x) / dof))
    rng = np.random.default_rng(seed)
    draws = []
    while len(draws) < bootstrap:
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0:
            draws.append(_wls(x[idx], y[idx], w[idx]))
    draws = np.array(draws)
    tail = (1 - CONFIDENCE) / 2 * 100
    a_ci = tuple(float(v) for v in np.percentile(draws[:, 0], [tail, 100 - tail]))
    b_ci = tuple(float(v) for v in np.percentile(draws[:, 1], [tail, 100 - tail]))
    cov = np.cov(draws.T) if bootstrap > 1 else np.zeros((2, 2))
    ratios = [p["ratio"] for p in points]
    return Fit(a, b, a_ci, b_ci, cov.tolist(), r2, residual_sd, (min(ratios), max(ratios)), list(points), bootstrap)


def check_ratio(ratio: float) -> float:
    """A trainable ratio must lie in (0, 1]."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise RmaskError(f"ratio must be a fraction of the model in (0, 1], got {ratio}")
    return float(ratio)


@dataclass
class Law:
    """Fitted laws: one pooled over every model and task, one per model (pooled over its tasks), and one per
    model and task (``"model/task"``; shown in reports to see whether the tasks agree; recommend uses the others)."""

    pooled: Fit | None
    models: dict[str, Fit]
    method: str = "random_masking"
    data: dict = field(default_factory=dict)  # everything else law.json holds (points, excluded, source...)
    probe_calibration: dict | None = None  # written by the Hessian-probe calibration (rmask_tune.analysis)
    tasks: dict[str, Fit] = field(default_factory=dict)

    def fit_for(self, model: str | None = None) -> Fit:
        """The fit for ``model`` (its own), or the pooled fit when ``model`` is None."""
        if model is None:
            if self.pooled is None:
                raise RmaskError("the law has no pooled fit (fewer than two ratios with an interior optimum)")
            return self.pooled
        if model not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise RmaskError(
                f"the law has no fit for model {model!r} (fitted models: {known}); omit --model for the pooled fit"
            )
        return self.models[model]

    def predict(
        self, ratio: float, model: str | None = None, *, prediction: bool = False
    ) -> tuple[float, float, float]:
        """The recommended LR for ``ratio`` and its 95% interval: ``(lr, lo, hi)``.

        The interval is the fitted line's confidence band; ``prediction=True`` widens it by the
        tasks' scatter around the line (where one new task's optimum is expected to fall).
        """
        fit = self.fit_for(model)
        ratio = check_ratio(ratio)
        lo, hi = fit.band(ratio, prediction=prediction)
        return 10.0 ** fit.log10_lr(ratio), float(10.0**lo), float(10.0**hi)

    def in_range(self, ratio: float, model: str | None = None) -> bool:
        """Whether ``ratio`` lies within the ratios the fit was made on (no extrapolation)."""
        low, high = self.fit_for(model).ratio_range
        return low * (1 - 1e-9) <= ratio <= high * (1 + 1e-9)

    def to_dict(self) -> dict:
        return {
            "format": LAW_FORMAT,
            "law": "log10(lr*) = a + b * log10(ratio)",
            "method": self.method,
            "confidence": CONFIDENCE,
            "pooled": self.pooled.to_dict() if self.pooled else None,
            "models": {m: f.to_dict() for m, f in sorted(self.models.items())},
            "tasks": {t: f.to_dict() for t, f in sorted(self.tasks.items())},
            **self.data,
            "probe_calibration": self.probe_calibration,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def load_law(path: str | Path) -> Law:
    """Read a ``law.json`` written by ``rmask-tune report``."""
    path = Path(path)
    if not path.is_file():
        raise RmaskError(f"law file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RmaskError(f"law file {path} is not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    if not isinstance(d, dict) or d.get("format") != LAW_FORMAT:
        raise RmaskError(f"{path} is not an rmask-tune law file (expected format {LAW_FORMAT!r})")
    known = {"format", "law", "method", "confidence", "pooled", "models", "tasks", "probe_calibration"}
    return Law(
        pooled=Fit.from_dict(d["pooled"]) if d.get("pooled") else None,
        models={m: Fit.from_dict(f) for m, f in d.get("models", {}).items()},
        method=d.get("method", "random_masking"),
        data={k: v for k, v in d.items() if k not in known},
        probe_calibration=d.get("probe_calibration"),
        tasks={t: Fit.from_dict(f) for t, f in d.get("tasks", {}).items()},
    )


def log_grid(centre: float, points: int = 5, decades: float = 1.0) -> list[float]:
    """``points`` log-spaced values (3 significant digits) spanning ``decades`` decades, centred on ``centre``."""
    if points < 1 or not decades > 0:
        raise RmaskError(f"an LR grid needs points >= 1 and decades > 0, got points={points}, decades={decades}")
    offsets = np.linspace(-decades / 2, decades / 2, points) if points > 1 else np.zeros(1)
    return [float(f"{centre * 10.0**o:.3g}") for o in offsets]


def narrow_grid(law: Law, ratio: float, model: str | None = None, points: int = 5, decades: float = 1.0) -> list[float]:
    """``points`` log-spaced LRs spanning ``decades`` decades, centred on the law's prediction for ``ratio``."""
    return log_grid(law.predict(ratio, model)[0], points, decades)
