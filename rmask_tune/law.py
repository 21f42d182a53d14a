"""The "optimal learning rate vs sparsity" law: ``log10 lr* = a + b * log10(ratio)``.

Numpy only (importable without mlflow or matplotlib). The optima it is fitted on, with their errors,
come from :mod:`rmask_tune.resampling`; the rules for which enter are in docs/statistics.md.

1. :func:`fit_shared` fits one exponent across (model, task) pairs with an offset per pair (what
   ``recommend`` uses), and with optima at two or more training budgets a shared budget exponent g
   (``+ g * (log10 steps - s0)``) and the test of whether b changes with the budget; :func:`fit_law` fits a
   single line (per model, per pair, pooled: shown in reports).
2. :class:`Law` (saved as ``law.json``, loaded by :func:`load_law`) recommends an LR for a ratio with an
   interval that holds for the case asked (a known pair, a new task, an unseen model), and
   :func:`narrow_grid` gives a short log-spaced grid around it for a follow-up sweep.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.files import validated
from rmask_tune.files.atomic import write_atomic
from rmask_tune.files.law import LAW_FORMAT, LAW_FORMATS, LawFile
from rmask_tune.law_record import ExcludedCell, LawPoint, LawSource, ProbeCalibration, Validation

CONFIDENCE = 0.95
_Z = 1.959963984540054  # two-sided 95% normal quantile
# Two-sided 95% Student-t quantiles by degrees of freedom (interpolated in 1/dof; the normal's beyond 120).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(dof: float) -> float:
    """The two-sided 95% Student-t quantile for ``dof`` degrees of freedom (at least 1)."""
    dof = max(float(dof), 1.0)
    if dof >= 120:
        return _Z if dof == math.inf else float(np.interp(1 / dof, [0.0, 1 / 120], [_Z, _T975[120]]))
    keys = sorted(_T975)
    inv = [1 / k for k in reversed(keys)]
    return float(np.interp(1 / dof, inv, [_T975[k] for k in reversed(keys)]))


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
    points: list[LawPoint] = field(default_factory=list)
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
            "n_points": len(self.points), "bootstrap": self.bootstrap, "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Fit:
        return cls(
            a=float(d["a"]), b=float(d["b"]), a_ci=tuple(d["a_ci"]), b_ci=tuple(d["b_ci"]), cov=d["cov"],
            r2=float(d["r2"]), residual_sd=float(d["residual_sd"]), ratio_range=tuple(d["ratio_range"]),
            points=[LawPoint.from_json(p) for p in d.get("points", [])], bootstrap=int(d.get("bootstrap", 0)),
        )


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    b = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
    return float(ym - b * xm), float(b)


def fit_law(points: list[LawPoint], *, bootstrap: int = 1000, seed: int = 0) -> Fit:
    """Fit ``log10 lr* = a + b log10 ratio`` by weighted least squares over ``points``.

    Each point's ``log10_lr`` is weighted by ``1/se**2`` (``se``: its standard error, log10 units); the points are
    kept in the fit. The intervals are percentile intervals of ``bootstrap`` case-resampled refits (seeded;
    resamples with a single ratio are redrawn).
    """
    if bootstrap < 1:
        raise RmaskError(f"bootstrap must be at least 1 resample, got {bootstrap}")
    if len({p.ratio for p in points}) < 2:
        raise RmaskError("a law fit needs optimal learning rates at two or more ratios")
    x = np.log10([p.ratio for p in points])
    y = np.array([p.log10_lr for p in points], dtype=float)
    w = 1.0 / np.maximum(np.array([p.se for p in points], dtype=float), 1e-6) ** 2
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
    ratios = [p.ratio for p in points]
    return Fit(a, b, a_ci, b_ci, cov.tolist(), r2, residual_sd, (min(ratios), max(ratios)), list(points), bootstrap)


def _paule_mandel(residual_q, dof: int) -> float:
    """The extra variance tau^2 >= 0 at which the weighted residual sum ``residual_q(tau2)`` equals ``dof``."""
    if dof < 1 or residual_q(0.0) <= dof:
        return 0.0
    lo, hi = 0.0, 1.0
    while residual_q(hi) > dof:
        hi *= 4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if residual_q(mid) > dof else (lo, mid)
    return (lo + hi) / 2


@dataclass
class SharedFit:
    """``log10 lr* = offset[pair] + b * (log10 ratio - x0) [+ g * (log10 steps - s0)]``: one exponent ``b`` shared by
    every (model, task) pair (``"model/task"``), an offset per pair, and, when the optima were measured at two or
    more training budgets (optimizer steps), one budget exponent ``g`` shared by every pair.

    ``tau`` is the points' scatter around their pair's line beyond their own errors, and ``between_sd`` the
    spread of the offsets between pairs (None with one pair), both estimated by Paule-Mandel moments.
    A known pair's interval combines the fit's uncertainty and ``tau``; a new pair's adds ``between_sd``,
    with the Student-t quantile of (pairs - 1) degrees of freedom: few pairs give wide, honest intervals.
    ``cov`` is the covariance of (offsets..., g, b) with a budget term, of (offsets..., b) without: b is last.
    ``steps_range`` is the budgets the points were measured at (None when they do not say); ``b_change`` (with its
    95% interval) is the change of b per decade of steps in the fit with an interaction term
    (docs/statistics.md), None when the budgets cannot show one.
    """

    b: float
    x0: float
    pairs: list[str]
    offsets: list[float]
    cov: list[list[float]]
    tau: float
    dof: int
    mean_offset: float
    mean_offset_se: float
    between_sd: float | None
    ratio_range: tuple[float, float]
    points: list[LawPoint] = field(default_factory=list)
    g: float | None = None
    s0: float | None = None
    steps_range: tuple[int, int] | None = None
    b_change: float | None = None
    b_change_ci: tuple[float, float] | None = None

    @property
    def b_ci(self) -> tuple[float, float]:
        half = t_quantile(self.dof) * math.sqrt(self.cov[-1][-1])
        return self.b - half, self.b + half

    @property
    def g_ci(self) -> tuple[float, float] | None:
        if self.g is None:
            return None
        half = t_quantile(self.dof) * math.sqrt(self.cov[-2][-2])
        return self.g - half, self.g + half

    def slopes(self, ratio: float, steps: float | None) -> np.ndarray:
        """The coefficients of (g, b) at ``ratio`` and ``steps`` (steps ignored without a budget term)."""
        dx = math.log10(ratio) - self.x0
        if self.g is None:
            return np.array([dx])
        return np.array([0.0 if steps is None else math.log10(steps) - self.s0, dx])

    def centre(self, offset: float, ratio: float, steps: float | None = None) -> float:
        """log10 lr* of a pair with ``offset`` at ``ratio`` (and ``steps``, with a budget term)."""
        coefficients = self.slopes(ratio, steps)
        return float(offset + coefficients @ np.array([self.b] if self.g is None else [self.g, self.b]))

    def slope_variance(self, ratio: float, steps: float | None = None) -> float:
        """The variance the shared slopes (b, and g with a budget term) add at ``ratio`` and ``steps``."""
        return self.slope_variance_of(self.slopes(ratio, steps))

    def slope_variance_of(self, coefficients: np.ndarray) -> float:
        """The variance of ``coefficients`` @ (g, b) (or @ (b,) without a budget term)."""
        block = np.asarray(self.cov)[-len(coefficients):, -len(coefficients):]
        return float(coefficients @ block @ coefficients)

    def pair_interval(self, pair: str, ratio: float, steps: float | None = None) -> tuple[float, float, float]:
        """(log10 centre, lo, hi) of the pair's optimum at ``ratio`` (and ``steps``, with a budget term)."""
        i = self.pairs.index(pair)
        var = self.pair_variance(i, ratio, steps) + self.tau**2
        centre = self.centre(self.offsets[i], ratio, steps)
        half = t_quantile(self.dof) * math.sqrt(var)
        return centre, centre - half, centre + half

    def pair_variance(self, i: int, ratio: float, steps: float | None) -> float:
        """The variance of pair ``i``'s line at ``ratio`` and ``steps`` (its offset, the slopes, their covariance)."""
        coefficients = self.slopes(ratio, steps)
        cov = np.asarray(self.cov)
        cross = cov[i, -len(coefficients):]
        return float(cov[i, i] + 2 * coefficients @ cross) + self.slope_variance(ratio, steps)

    def new_pair_interval(self, ratio: float, pairs: list[str] | None = None,
                          steps: float | None = None) -> tuple[float, float, float] | None:
        """(log10 centre, lo, hi) for a pair the fit has not seen, from the offsets of ``pairs`` (default all);
        None when fewer than two pairs leave the between-pair spread unknown."""
        chosen = pairs or self.pairs
        mean, mean_se, between = self._offset_spread(chosen)
        if between is None:
            return None
        centre = self.centre(mean, ratio, steps)
        var = mean_se**2 + self.slope_variance(ratio, steps) + between**2 + self.tau**2
        half = t_quantile(len(chosen) - 1) * math.sqrt(var)
        return centre, centre - half, centre + half

    def _offset_spread(self, pairs: list[str]) -> tuple[float, float, float | None]:
        if sorted(pairs) == sorted(self.pairs):
            return self.mean_offset, self.mean_offset_se, self.between_sd
        index = [self.pairs.index(p) for p in pairs]
        return offset_spread(np.asarray(self.offsets)[index], np.asarray(self.cov)[index][:, index].diagonal())

    def to_dict(self) -> dict:
        budget = {} if self.steps_range is None else {"steps_range": list(self.steps_range)}
        if self.g is not None:
            budget = {"law": "log10(lr*) = offset[model/task] + b * (log10(ratio) - x0) + g * (log10(steps) - s0)",
                      "g": self.g, "g_ci": list(self.g_ci), "s0": self.s0, **budget,
                      "b_change": self.b_change, "b_change_ci": None if self.b_change_ci is None else list(self.b_change_ci)}
        return {
            "law": "log10(lr*) = offset[model/task] + b * (log10(ratio) - x0)", "b": self.b, "b_ci": list(self.b_ci),
            "x0": self.x0, "pairs": self.pairs, "offsets": self.offsets, "cov": self.cov, "tau": self.tau,
            "dof": self.dof, "mean_offset": self.mean_offset, "mean_offset_se": self.mean_offset_se,
            "between_sd": self.between_sd, "ratio_range": list(self.ratio_range), "n_points": len(self.points),
            **budget, "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_dict(cls, d: dict) -> SharedFit:
        change_ci = d.get("b_change_ci")
        return cls(
            b=float(d["b"]), x0=float(d["x0"]), pairs=list(d["pairs"]), offsets=[float(v) for v in d["offsets"]],
            cov=d["cov"], tau=float(d["tau"]), dof=int(d["dof"]), mean_offset=float(d["mean_offset"]),
            mean_offset_se=float(d["mean_offset_se"]), between_sd=d.get("between_sd"),
            ratio_range=tuple(d["ratio_range"]), points=[LawPoint.from_json(p) for p in d.get("points", [])],
            g=d.get("g"), s0=d.get("s0"), steps_range=tuple(d["steps_range"]) if d.get("steps_range") else None,
            b_change=d.get("b_change"), b_change_ci=tuple(change_ci) if change_ci else None,
        )


def offset_spread(offsets: np.ndarray, variances: np.ndarray) -> tuple[float, float, float | None]:
    """Random-effects mean of the pairs' offsets, its standard error, and the between-pair sd (None for one pair)."""
    if len(offsets) < 2:
        return float(offsets[0]), float(math.sqrt(variances[0])), None

    def q(tau2: float) -> float:
        w = 1 / (variances + tau2)
        return float(np.sum(w * (offsets - np.average(offsets, weights=w)) ** 2))

    between2 = _paule_mandel(q, len(offsets) - 1)
    w = 1 / (variances + between2)
    return float(np.average(offsets, weights=w)), float(math.sqrt(1 / np.sum(w))), float(math.sqrt(between2))


def usual_budget(points: list[LawPoint]) -> int | None:
    """The budget (optimizer steps) most of ``points`` were measured at (ties: the larger); None when there are no
    points or any does not say."""
    budgets = [p.steps for p in points]
    if not budgets or None in budgets:
        return None
    return max(set(budgets), key=lambda steps: (budgets.count(steps), steps))


def point_budgets(points: list[LawPoint]) -> list[int] | None:
    """The distinct budgets (optimizer steps) of ``points``, sorted; None when any point does not say."""
    budgets = {p.steps for p in points}
    return None if None in budgets else sorted(budgets)


def _budget_varies_within_a_pair(points: list[LawPoint]) -> bool:
    """Whether some (model, task) has optima at two or more budgets: only then do the points tell the budget
    exponent g apart from the pairs' offsets (pairs each at its own budget leave g unidentified)."""
    budgets: dict[str, set] = {}
    for p in points:
        budgets.setdefault(p.pair, set()).add(p.steps)
    return any(len(steps) >= 2 for steps in budgets.values())


def _weighted_fit(design: np.ndarray, y: np.ndarray, se2: np.ndarray, dof: int):
    """Weighted least squares of ``y`` on ``design`` with the extra variance tau^2 (Paule-Mandel at ``dof``):
    the coefficients, their covariance and tau^2."""

    def solve(tau2: float):
        w = 1 / (se2 + tau2)
        information = design.T @ (design * w[:, None])
        theta = np.linalg.solve(information, design.T @ (w * y))
        return theta, information, float(np.sum(w * (y - design @ theta) ** 2))

    tau2 = _paule_mandel(lambda t: solve(t)[2], dof)
    theta, information, _ = solve(tau2)
    return theta, np.linalg.inv(information), tau2


def fit_shared(points: list[LawPoint]) -> SharedFit:
    """Fit one exponent across (model, task) pairs with an offset per pair, by weighted least squares; with
    points at two or more budgets (each point's ``steps``) within some pair, one budget exponent ``g`` too, and the interaction
    of ratio and budget (``b_change``) that tests whether b depends on the budget.

    Each point's ``log10_lr`` is weighted by its ``se``; a point without ``steps`` leaves the fit without a budget
    term. Pairs with one ratio still inform the exponent only through their
    offset (they add no slope information) and are kept.
    """
    pairs = sorted({p.pair for p in points})
    slope_pairs = [k for k in pairs if len({p.ratio for p in points if p.pair == k}) >= 2]
    if not slope_pairs:
        raise RmaskError("a law fit needs optimal learning rates at two or more ratios of one (model, task)")
    budgets = point_budgets(points)
    x = np.log10([p.ratio for p in points])
    x0 = float(x.mean())
    y = np.array([p.log10_lr for p in points], dtype=float)
    se2 = np.maximum(np.array([p.se for p in points], dtype=float), 1e-6) ** 2
    columns = [np.array([p.pair == pair for p in points], dtype=float) for pair in pairs]
    s = s0 = None
    if budgets is not None and len(budgets) >= 2 and _budget_varies_within_a_pair(points):
        s = np.log10([p.steps for p in points])
        s0 = float(s.mean())
        columns.append(s - s0)
    design = np.column_stack(columns + [x - x0])
    dof = len(points) - design.shape[1]
    theta, cov, tau2 = _weighted_fit(design, y, se2, dof)
    offsets = theta[: len(pairs)]
    mean, mean_se, between = offset_spread(offsets, cov.diagonal()[: len(pairs)])
    ratios = [p.ratio for p in points]
    change = _b_change(design, (x - x0) * (s - s0), y, se2) if s is not None else None
    return SharedFit(
        float(theta[-1]), x0, pairs, offsets.tolist(), cov.tolist(), math.sqrt(tau2), max(dof, 1), mean, mean_se,
        between, (min(ratios), max(ratios)), list(points), g=None if s is None else float(theta[-2]), s0=s0,
        steps_range=None if budgets is None else (budgets[0], budgets[-1]),
        b_change=None if change is None else change[0], b_change_ci=None if change is None else change[1],
    )


def _b_change(design: np.ndarray, interaction: np.ndarray, y: np.ndarray,
              se2: np.ndarray) -> tuple[float, tuple[float, float]] | None:
    """The interaction coefficient (change of b per decade of steps) of the budget fit extended by
    ``interaction`` = (log10 ratio - x0)(log10 steps - s0), with its 95% Student-t interval; None when the
    budgets do not identify it (ratios varying at one budget only) or no degree of freedom is left."""
    extended = np.column_stack([design, interaction])
    dof = len(y) - extended.shape[1]
    if dof < 1 or np.linalg.matrix_rank(extended) < extended.shape[1]:
        return None
    theta, cov, _ = _weighted_fit(extended, y, se2, dof)
    half = t_quantile(dof) * math.sqrt(cov[-1, -1])
    return float(theta[-1]), (float(theta[-1] - half), float(theta[-1] + half))


def check_ratio(ratio: float) -> float:
    """A trainable ratio must lie in (0, 1]."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise RmaskError(f"ratio must be a fraction of the model in (0, 1], got {ratio}")
    return float(ratio)


@dataclass(frozen=True)
class LawEstimate:
    """The law's LR for a ratio with its 95% interval (None ends: no interval), and what it rests on."""

    lr: float
    lo: float | None
    hi: float | None
    basis: str  # "pair", "new task", "anchor", "pooled law (unseen model)"
    detail: str
    warning: str | None = None


@dataclass
class Law:
    """Fitted laws. ``shared``: one exponent across (model, task) pairs with an offset per pair, which
    ``recommend`` uses; ``pooled`` (all points, one line), ``models`` (one line per model) and ``tasks`` (one
    per ``"model/task"``) are shown in reports to see whether the pairs agree."""

    pooled: Fit | None
    models: dict[str, Fit]
    method: str = "random_masking"
    points: list[LawPoint] = field(default_factory=list)  # the optima the fits are made on
    excluded: list[ExcludedCell] = field(default_factory=list)
    validation: Validation | None = None
    probe_calibration: ProbeCalibration | None = None  # the Hessian probe's constant (rmask_tune.analysis)
    tasks: dict[str, Fit] = field(default_factory=dict)
    shared: SharedFit | None = None
    source: LawSource = field(default_factory=lambda: LawSource())

    def fit_for(self, model: str | None = None) -> Fit:
        """The single-line fit for ``model`` (its own), or the pooled fit when ``model`` is None."""
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
        """The single-line fit's LR for ``ratio`` and its 95% interval: ``(lr, lo, hi)``.

        The interval is the fitted line's confidence band; ``prediction=True`` widens it by the
        points' scatter around the line.
        """
        fit = self.fit_for(model)
        ratio = check_ratio(ratio)
        lo, hi = fit.band(ratio, prediction=prediction)
        return lr_of(fit.log10_lr(ratio)), lr_of(float(lo)), lr_of(float(hi))

    def models_known(self) -> list[str]:
        return sorted({pair.split("/", 1)[0] for pair in self.shared.pairs}) if self.shared else sorted(self.models)

    def budget(self) -> int | None:
        """The law's own budget (optimizer steps): the one most of its optima were measured at (ties: the larger;
        points that do not say: the largest fitted budget); None when the law does not know its budgets (a
        law.json from before budgets were recorded)."""
        usual = usual_budget(self.shared.points if self.shared is not None else self.points)
        if usual is not None:
            return usual
        fitted = self.shared.steps_range if self.shared is not None else None
        return None if fitted is None else fitted[1]

    def steps_in_range(self, steps: float) -> bool:
        """Whether ``steps`` lies within the budgets the law was fitted on (False when it does not know them)."""
        budgets = self.shared.steps_range if self.shared is not None else None
        return budgets is not None and budgets[0] * (1 - 1e-9) <= steps <= budgets[1] * (1 + 1e-9)

    def recommend(self, ratio: float, model: str | None = None, task: str | None = None,
                  anchor: LawPoint | None = None, steps: float | None = None) -> LawEstimate:
        """The LR for ``ratio`` on (``model``, ``task``), with an interval that holds for that case.

        A known pair uses its own offset; a new task on a known model the model's pairs' mean offset plus
        their spread; a model the law has never seen needs ``anchor`` (an optimum measured on it:
        its ``ratio``, ``log10_lr`` and ``se``), which sets its offset under the shared exponent; without one the
        pooled pairs are used, with a warning. With a budget term, ``steps`` is the budget asked for (default:
        the law's own, ``budget``); without one it changes nothing (the LR is for the law's own budget).
        """
        ratio = check_ratio(ratio)
        if self.shared is None:
            raise RmaskError("the law has no shared fit (optimal LRs at fewer than two ratios of any task); "
                             "it cannot recommend")
        fit = self.shared
        if fit.g is None:
            steps = None
        elif steps is None:
            steps = self.budget()
        pair = f"{model}/{task}"
        if anchor is not None:
            at = steps if anchor.steps is None else anchor.steps
            slopes = fit.slopes(ratio, steps) - fit.slopes(anchor.ratio, at)
            centre = fit.centre(anchor.log10_lr, ratio, steps) - fit.centre(0.0, anchor.ratio, at)
            var = anchor.se**2 + fit.slope_variance_of(slopes) + fit.tau**2
            half = t_quantile(fit.dof) * math.sqrt(var)
            detail = (f"offset from an anchor optimum {10 ** anchor.log10_lr:.3g} at ratio {anchor.ratio:g}, "
                      f"shared exponent {fit.b:.3f}")
            return _recommendation(centre, centre - half, centre + half, "anchor", detail)
        if pair in fit.pairs:
            return _recommendation(*fit.pair_interval(pair, ratio, steps), "pair", f"{pair}'s own offset")
        mine = [p for p in fit.pairs if p.split("/", 1)[0] == model]
        if mine:
            interval = fit.new_pair_interval(ratio, mine, steps)
            if interval is not None:
                return _recommendation(*interval, "new task",
                                       f"mean offset of {model}'s {len(mine)} tasks, plus their spread")
            return self._borrowed_spread(fit, mine[0], ratio, steps)
        interval = fit.new_pair_interval(ratio, steps=steps)
        warning = (f"model {model!r} is not in the law: " if model else "no model given: ") + (
            "this is the pooled law over other models, which can miss by several grid steps on an unseen model; "
            "calibrate it with --anchor (a short sweep at one ratio on your model) or --probe")
        if interval is None:
            only = fit.pairs[0]
            centre = fit.centre(fit.offsets[0], ratio, steps)
            return _recommendation(centre, None, None, "pooled law (unseen model)", f"{only}'s offset (one pair)",
                                   warning + "; with one pair in the law there is no interval")
        return _recommendation(*interval, "pooled law (unseen model)", f"mean offset of {len(fit.pairs)} pairs",
                               warning)

    @staticmethod
    def _borrowed_spread(fit: SharedFit, pair: str, ratio: float, steps: float | None) -> LawEstimate:
        """A new task on a model with one task in the law: that task's offset, with the spread between all pairs."""
        i = fit.pairs.index(pair)
        centre = fit.centre(fit.offsets[i], ratio, steps)
        model = pair.split("/", 1)[0]
        if fit.between_sd is None:
            return _recommendation(centre, None, None, "new task", f"{pair}'s offset",
                                   f"{model} has one task in the law and the law one pair: no interval for a new task")
        var = fit.pair_variance(i, ratio, steps) + fit.between_sd**2 + fit.tau**2
        half = t_quantile(len(fit.pairs) - 1) * math.sqrt(var)
        return _recommendation(centre, centre - half, centre + half, "new task", f"{pair}'s offset",
                               f"{model} has one task in the law; the interval borrows the spread between all pairs")

    def in_range(self, ratio: float, model: str | None = None) -> bool:
        """Whether ``ratio`` lies within the ratios the fit was made on (no extrapolation)."""
        if self.shared is not None:
            low, high = self.shared.ratio_range
        else:
            low, high = self.fit_for(model).ratio_range
        return low * (1 - 1e-9) <= ratio <= high * (1 + 1e-9)

    def to_dict(self) -> dict:
        return {
            "format": LAW_FORMAT,
            "law": "log10(lr*) = a + b * log10(ratio)",
            "method": self.method,
            "confidence": CONFIDENCE,
            "shared": self.shared.to_dict() if self.shared else None,
            "pooled": self.pooled.to_dict() if self.pooled else None,
            "models": {m: f.to_dict() for m, f in sorted(self.models.items())},
            "tasks": {t: f.to_dict() for t, f in sorted(self.tasks.items())},
            **self.source.head(),
            "points": [p.to_json() for p in self.points],
            "excluded": [e.to_json() for e in self.excluded],
            **self.source.tail(),
            **({} if self.validation is None else {"validation": self.validation.to_json()}),
            **self.source.extra,
            "probe_calibration": None if self.probe_calibration is None else self.probe_calibration.to_json(),
        }

    def save(self, path: str | Path) -> None:
        """Write law.json atomically."""
        write_atomic(Path(path), self.to_json(path))

    def to_json(self, path: str | Path) -> bytes:
        """law.json's text; a law its own schema would refuse to read back (NaN, ...) is refused here, when it
        would be written to ``path``."""
        try:
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        except ValueError:
            raise RmaskError(f"not writing {path}: the law holds NaN or infinite numbers") from None
        validated(LawFile, json.loads(text), path, "law about to be written to")
        return (text + "\n").encode()


def _recommendation(centre: float, lo: float | None, hi: float | None, basis: str, detail: str,
                    warning: str | None = None) -> LawEstimate:
    return LawEstimate(lr_of(centre), None if lo is None else lr_of(lo), None if hi is None else lr_of(hi),
                          basis, detail, warning)


def lr_of(log10_lr: float) -> float:
    """``10 ** log10_lr``, refused when that is no usable learning rate (NaN, zero or overflowing)."""
    try:
        lr = 10.0**log10_lr
    except OverflowError:
        lr = math.inf
    if not (math.isfinite(lr) and lr > 0):
        raise RmaskError(f"the law gives a learning rate of 10^{log10_lr:.4g}, which is not a usable number; "
                         "check the law file's offsets and exponent")
    return lr


def load_law(path: str | Path) -> Law:
    """Read a ``law.json`` written by ``rmask-tune report`` (v1 files have no shared fit), checked against its
    schema (``rmask_tune.files.law``): a malformed file is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise RmaskError(f"law file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise RmaskError(f"law file {path} is not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    except OSError as err:
        raise RmaskError(f"cannot read law file {path} ({err.strerror or err})") from None
    if not isinstance(d, dict) or d.get("format") not in LAW_FORMATS:
        raise RmaskError(f"{path} is not an rmask-tune law file (expected format {LAW_FORMAT!r})")
    validated(LawFile, d, path, "law file")
    known = {"format", "law", "method", "confidence", "pooled", "models", "tasks", "probe_calibration", "shared",
             "points", "excluded", "validation"}
    return Law(
        pooled=Fit.from_dict(d["pooled"]) if d.get("pooled") else None,
        models={m: Fit.from_dict(f) for m, f in d.get("models", {}).items()},
        method=d.get("method", "random_masking"),
        points=[LawPoint.from_json(p) for p in d.get("points", [])],
        excluded=[ExcludedCell.from_json(e) for e in d.get("excluded", [])],
        validation=Validation.from_json(d["validation"]) if d.get("validation") else None,
        probe_calibration=ProbeCalibration.from_json(d["probe_calibration"]) if d.get("probe_calibration") else None,
        tasks={t: Fit.from_dict(f) for t, f in d.get("tasks", {}).items()},
        shared=SharedFit.from_dict(d["shared"]) if d.get("shared") else None,
        source=LawSource.from_json({k: v for k, v in d.items() if k not in known}),
    )


def log_grid(centre: float, points: int = 5, decades: float = 1.0) -> list[float]:
    """``points`` log-spaced values (3 significant digits) spanning ``decades`` decades, centred on ``centre``."""
    if points < 1 or not (decades > 0 and math.isfinite(decades)):
        raise RmaskError(f"an LR grid needs points >= 1 and decades > 0, got points={points}, decades={decades}")
    if not (math.isfinite(centre) and centre > 0):
        raise RmaskError(f"an LR grid needs a positive, finite centre, got {centre}")
    offsets = np.linspace(-decades / 2, decades / 2, points) if points > 1 else np.zeros(1)
    return [float(f"{centre * 10.0**o:.3g}") for o in offsets]


def narrow_grid(law: Law, ratio: float, model: str | None = None, points: int = 5, decades: float = 1.0,
                task: str | None = None, steps: float | None = None) -> list[float]:
    """``points`` log-spaced LRs spanning ``decades`` decades, centred on the law's recommendation for
    ``ratio`` on (``model``, ``task``) at the budget ``steps`` (the shared fit's; a law without a budget term
    recommends for its own budget, and a v1 law.json, which has no shared fit, from its single-line fit);
    ``points`` 1 is the recommendation alone, as check runs train it."""
    if law.shared is not None:
        centre = law.recommend(ratio, model, task, steps=steps).lr
    else:
        centre = law.predict(ratio, model)[0]
    return log_grid(centre, points, decades)
