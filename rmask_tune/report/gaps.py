"""Random Masking against a baseline on the test set: the gap between the two at each side's best-dev LR, with
its 95% interval.

The gap is Random Masking's test metric minus the baseline's, per seed, averaged over the seeds both ran at
their best-dev LRs. A seed's two trials were tested on the same examples (the data split depends on the seed
only), so every bootstrap resample draws the seeds with replacement and, within each drawn seed, one set of
test-example indices for both sides: the gap is resampled as a paired difference. A side recorded without
per-example results is drawn as a binomial proportion around its test metric (unpaired; the interval comes
out wider), and a seed whose two test sets differ is drawn unpaired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rmask_tune.report.summary import LAW_METHOD, Curve, SplitScores, Summary, split_scores
from rmask_tune.resampling import CONFIDENCE


@dataclass
class PairedGap:
    """One side's test metric minus the other's, mean over the seeds both ran (metric units), with its interval."""

    gap: float
    interval: tuple[float, float]
    seeds: int
    paired: bool  # every seed drawn as a paired difference on shared test examples


@dataclass
class MethodGap(PairedGap):
    """Random Masking at ``ratio`` minus ``baseline`` on one (model, task, budget)."""

    model: str
    task: str
    steps: int | None
    ratio: float
    baseline: str


def _at_best(curve: Curve) -> dict[int, SplitScores]:
    """The test scores of the curve's trials at its best-dev LR that have a test metric, by seed."""
    return {t.seed: split_scores(t, "test", t.test) for t in curve.trials.get(curve.best_lr, [])
            if t.test is not None and math.isfinite(t.test)}


def paired_gap(ours: dict[int, SplitScores], theirs: dict[int, SplitScores], *, samples: int = 1000,
               seed: int = 0) -> PairedGap | None:
    """Ours minus theirs over the seeds both ran, with its percentile bootstrap interval; None when none did."""
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    paired = {s: ours[s].uids is not None and ours[s].uids == theirs[s].uids for s in seeds}
    observed = float(np.mean([ours[s].record.value - theirs[s].record.value for s in seeds]))
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for b in range(samples):
        drawn = rng.choice(seeds, size=len(seeds)) if len(seeds) > 1 else seeds
        gaps = []
        for s in drawn:
            mine, other = ours[s].record, theirs[s].record
            idx = rng.integers(0, mine.n, mine.n) if mine.n else None
            other_idx = idx if paired[s] else rng.integers(0, other.n, other.n) if other.n else None
            gaps.append(mine.draw(idx, rng) - other.draw(other_idx, rng))
        draws[b] = np.mean(gaps)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return PairedGap(observed, (float(low), float(high)), len(seeds), all(paired.values()))


def method_gaps(summary: Summary, baseline: str = "lora", *, samples: int = 1000, seed: int = 0) -> list[MethodGap]:
    """Every Random Masking cell against ``baseline`` on the same (model, task, budget), in the report's order."""
    out = []
    for key, curve in summary.curves.items():
        other = summary.curves.get(key[:2] + (baseline, None) + key[4:])
        if curve.method != LAW_METHOD or curve.ratio is None or other is None:
            continue
        found = paired_gap(_at_best(curve), _at_best(other), samples=samples, seed=seed)
        if found is not None:
            out.append(MethodGap(**vars(found), model=curve.model, task=curve.task, steps=curve.steps,
                                 ratio=curve.ratio, baseline=baseline))
    return sorted(out, key=lambda g: (g.model, g.task, g.steps or 0, -g.ratio))
