"""One cell's learning-rate curve under resampling: the optimal LR's interval and the signal test.

A cell is one (model, task, method, ratio) swept over learning rates and seeds; its data are the trials'
dev results. Every bootstrap resample draws the seeds with replacement (when there are several) and,
within each drawn seed, the dev examples with replacement. The same draw applies to every LR of the
cell and to its reference (the frozen model, or else the cell's smallest LR): they were evaluated on
the same examples, because the data split depends on the seed only, so differences between LRs are
resampled as paired differences. A trial's value on a resample is its best epoch's metric on the
resampled examples: the epoch choice is redone on every resample, as model selection on dev would.

Trials recorded without per-example results (before they existed) are drawn as binomial proportions
around their reported value, n = their dev-example count: a stated approximation that ignores the
pairing (differences come out noisier) and the epoch choice (the reported best epoch is taken as is).

The signal test is fixed before any data are seen (docs/statistics.md):
  H0: no LR of the cell beats the reference on dev. Statistic: T = max over LRs of (mean dev metric at
  the LR - the reference's), means over seeds. Its null distribution is the bootstrap distribution of
  max over LRs of (d*_lr - d_lr), the resampled differences centred on the observed ones (a max-type
  bootstrap test, so the choice of the best LR among many is accounted for). p = (1 + #{T* >= T}) / (B + 1);
  the cell enters the law when p < ``SIGNAL_LEVEL``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rmask_tune.errors import RmaskError

SIGNAL_LEVEL = 0.05
CONFIDENCE = 0.95


@dataclass
class DevRecord:
    """One trial's dev results.

    ``per_epoch(idx)`` gives the metric of every evaluated epoch on the examples ``idx`` (an index array
    into its ``n`` dev examples); without it the record is ``value`` measured on ``n`` examples, drawn
    as a binomial proportion (``n`` 0: a constant, e.g. a diverged trial counted as the curve's floor).
    """

    value: float
    n: int
    per_epoch: Callable[[np.ndarray], np.ndarray] | None = None

    def draw(self, idx: np.ndarray | None, rng: np.random.Generator) -> float:
        """The record's selection value (best epoch) on a resample."""
        if self.per_epoch is not None and idx is not None:
            return float(np.max(self.per_epoch(idx)))
        if self.n <= 0:
            return self.value
        return float(rng.binomial(self.n, min(max(self.value, 0.0), 1.0)) / self.n)

    @classmethod
    def from_scores(cls, scores: np.ndarray, value: float | None = None) -> DevRecord:
        """A record whose epoch metric is the mean of per-example ``scores`` (epochs x examples)."""
        scores = np.atleast_2d(np.asarray(scores, dtype=float))
        best = float(scores.mean(1).max()) if value is None else value
        return cls(best, scores.shape[1], lambda idx: scores[:, idx].mean(1))


def quadratic_vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """The maximiser of ``y`` over sorted ``x`` (log10 LRs): the vertex of the quadratic through the best
    point and its neighbours, or the best point itself, flagged ``edge-low``/``edge-high``, at the grid's ends."""
    best = int(np.argmax(y))
    if best == 0:
        return float(x[0]), "edge-low"
    if best == len(x) - 1:
        return float(x[-1]), "edge-high"
    xs, ys = x[best - 1 : best + 2], y[best - 1 : best + 2]
    c2, c1, _ = np.linalg.solve(np.stack([xs**2, xs, np.ones(3)], axis=1), ys)
    if c2 >= 0:  # flat top (ties): the best grid point
        return float(x[best]), "quadratic"
    return float(np.clip(-c1 / (2 * c2), xs[0], xs[2])), "quadratic"


def mean_draw(by_seed: dict[int, DevRecord], drawn: list[int], idx: dict[int, np.ndarray | None],
              rng: np.random.Generator) -> float:
    """One LR's mean selection value on a resample: over the drawn seeds that ran it (every seed that ran it when
    none was drawn), each on its seed's example indices ``idx``."""
    have = [s for s in drawn if s in by_seed] or sorted(by_seed)
    return float(np.mean([by_seed[s].draw(idx.get(s), rng) for s in have]))


@dataclass
class CellBootstrap:
    """Resampled mean dev curves of one cell (rows: resamples, columns: the LRs) and of its reference."""

    lrs: list[float]
    observed: np.ndarray  # mean over seeds per LR
    draws: np.ndarray  # (samples, len(lrs))
    reference_observed: float | None
    reference_draws: np.ndarray | None  # (samples,)
    reference_kind: str  # "frozen model", "smallest LR" or "none"
    source: str  # "per-example", "binomial" or "mixed"


def bootstrap_cell(
    records: dict[float, dict[int, DevRecord]],
    reference: dict[int, DevRecord] | None = None,
    *,
    samples: int = 1000,
    seed: int = 0,
) -> CellBootstrap:
    """Resample a cell: ``records[lr][seed]`` are its trials, ``reference[seed]`` the frozen model's (or None:
    the smallest LR is the reference)."""
    if samples < 1:
        raise RmaskError(f"bootstrap must be at least 1 resample, got {samples}")
    lrs = sorted(records)
    if not lrs or any(not records[lr] for lr in lrs):
        raise RmaskError("a cell bootstrap needs at least one trial per learning rate")
    seeds = sorted({s for lr in lrs for s in records[lr]})
    sizes = {s: max([records[lr][s].n for lr in lrs if s in records[lr]] + [0]) for s in seeds}
    every = [r for lr in lrs for r in records[lr].values()] + list((reference or {}).values())
    with_examples = sum(r.per_epoch is not None for r in every)
    source = "per-example" if with_examples == len(every) else "binomial" if with_examples == 0 else "mixed"
    rng = np.random.default_rng(seed)
    draws = np.empty((samples, len(lrs)))
    ref_draws = np.empty(samples) if reference else None
    for b in range(samples):
        drawn = list(rng.choice(seeds, size=len(seeds))) if len(seeds) > 1 else seeds
        idx = {s: rng.integers(0, sizes[s], sizes[s]) if sizes[s] else None for s in set(drawn)}
        for j, lr in enumerate(lrs):
            draws[b, j] = mean_draw(records[lr], drawn, idx, rng)
        if reference:
            ref_draws[b] = mean_draw(reference, drawn, idx, rng)
    observed = np.array([np.mean([r.value for r in records[lr].values()]) for lr in lrs])
    ref_observed = float(np.mean([r.value for r in reference.values()])) if reference else None
    kind = "frozen model" if reference else "smallest LR" if len(lrs) > 1 else "none"
    return CellBootstrap(lrs, observed, draws, ref_observed, ref_draws, kind, source)


@dataclass
class OptimumEstimate:
    """A cell's optimal LR (log10) with its bootstrap interval."""

    log10_lr: float
    kind: str  # "quadratic", "edge-low", "edge-high"
    best_grid_lr: float
    se: float  # log10 units: bootstrap sd combined with the grid's resolution (spacing / sqrt 12)
    interval: tuple[float, float]  # log10 units, percentile interval of the resampled optima
    edge_fraction: float  # share of resamples whose best LR is at the grid's edge
    source: str

    @property
    def lr(self) -> float:
        return 10.0**self.log10_lr

    @property
    def at_edge(self) -> bool:
        return self.kind.startswith("edge")


def optimum_with_interval(boot: CellBootstrap) -> OptimumEstimate:
    """The optimum of the observed mean curve, with the spread of the resampled curves' optima."""
    if len(boot.lrs) < 2:
        raise RmaskError("an optimal-LR estimate needs at least two learning rates")
    x = np.log10(boot.lrs)
    centre, kind = quadratic_vertex(x, boot.observed)
    resampled = np.array([quadratic_vertex(x, row) for row in boot.draws], dtype=object)
    vertices = resampled[:, 0].astype(float)
    edge = float(np.mean([k.startswith("edge") for k in resampled[:, 1]]))
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(vertices, [tail, 100 - tail])
    spacing = float(np.median(np.diff(x)))
    se = math.hypot(float(np.std(vertices, ddof=1)) if len(vertices) > 1 else 0.0, spacing / math.sqrt(12.0))
    best = float(boot.lrs[int(np.argmax(boot.observed))])
    return OptimumEstimate(centre, kind, best, se, (float(lo), float(hi)), edge, boot.source)


@dataclass
class SignalTest:
    """The cell's best LR against its reference (see the module docstring)."""

    reference: str  # "frozen model" or "smallest LR"
    difference: float  # observed max over LRs of the mean dev difference
    p_value: float
    level: float = SIGNAL_LEVEL

    @property
    def passed(self) -> bool:
        return self.p_value < self.level

    def to_dict(self) -> dict:
        return {"reference": self.reference, "difference": self.difference, "p_value": self.p_value,
                "level": self.level, "passed": self.passed}


def signal_test(boot: CellBootstrap, level: float = SIGNAL_LEVEL) -> SignalTest:
    """The max-type bootstrap test of "some LR beats the reference"."""
    if boot.reference_draws is not None:
        observed = boot.observed - boot.reference_observed
        resampled = boot.draws - boot.reference_draws[:, None]
    elif len(boot.lrs) > 1:
        observed = boot.observed[1:] - boot.observed[0]
        resampled = boot.draws[:, 1:] - boot.draws[:, :1]
    else:
        raise RmaskError("a signal test needs a reference: a frozen-model trial or a second learning rate")
    statistic = float(observed.max())
    null = (resampled - observed).max(axis=1)
    p_value = float((1 + np.sum(null >= statistic)) / (len(null) + 1))
    return SignalTest(boot.reference_kind, statistic, p_value, level)
