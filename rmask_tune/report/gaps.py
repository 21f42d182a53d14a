"""Random Masking against a baseline on the test set: the gap between the two at each side's best-dev LR, with
its 95% interval.

The gap is Random Masking's test metric minus the baseline's, per seed, averaged over the seeds both ran at
their best-dev LRs. Its interval carries the noise of both the test and the LR selection. Every bootstrap
resample draws the seeds with replacement and, within each drawn seed, one set of dev-example indices and one
set of test-example indices, shared by every LR of both sides (a seed's trials were evaluated on the same
examples: the data split depends on the seed only). On each resample each side picks its best-dev LR anew, as
the report does (the mean resampled dev metric over the drawn seeds that ran the LR, with the epoch choice redone
too), and the gap is taken at the two picked LRs, paired on the shared test examples. A seed that ran only one
side's picked LR does not enter the paired mean; when no drawn seed ran both, the draw takes each side's mean
over the seeds that ran its pick, unpaired. A side recorded without per-example results is drawn as a binomial
proportion around its metric (unpaired; the interval comes out wider), and a seed whose two test sets differ is
drawn unpaired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rmask_tune.report.summary import LAW_METHOD, Curve, SplitScores, Summary, split_scores
from rmask_tune.resampling import CONFIDENCE, DevRecord, mean_draw


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


@dataclass
class Selection:
    """What one side's model selection saw: dev records and test scores per LR and seed, and its best-dev LR."""

    dev: dict[float, dict[int, DevRecord]]
    test: dict[float, dict[int, SplitScores]]
    best_lr: float

    @classmethod
    def of(cls, curve: Curve) -> Selection:
        test = {lr: {t.seed: split_scores(t, "test", t.test) for t in curve.trials.get(lr, [])
                     if t.test is not None and math.isfinite(t.test)} for lr in curve.records}
        return cls(curve.records, test, curve.best_lr)

    def pick(self, drawn: list[int], idx: dict[int, np.ndarray | None], rng: np.random.Generator) -> float:
        """The best-dev LR on one resample (``resampling.mean_draw`` per LR, as the cell bootstrap draws it)."""
        return max(self.dev, key=lambda lr: mean_draw(self.dev[lr], drawn, idx, rng))


def _uid_ids(sides: list[Selection]) -> dict[tuple[int, float, int], int | None]:
    """Each test record's example set as a small integer (equal sets, equal numbers; None: no per-example uids)."""
    ids: dict[tuple, int] = {}
    return {(k, lr, s): None if sc.uids is None else ids.setdefault(tuple(sc.uids), len(ids))
            for k, side in enumerate(sides) for lr, by_seed in side.test.items() for s, sc in by_seed.items()}


class _TestDraw:
    """One resample's test draws: one set of example indices per drawn seed (a slot) and example set, shared by
    the two sides where they were tested on the same examples."""

    def __init__(self, uid: dict[tuple[int, float, int], int | None], rng: np.random.Generator):
        self.uid, self.rng, self.idx = uid, rng, {}

    def __call__(self, side: int, lr: float, scores: SplitScores, slot: tuple[int, int]) -> float:
        n, examples = scores.record.n, self.uid[(side, lr, slot[1])]
        if not n:
            return scores.record.draw(None, self.rng)
        key = slot + ((examples,) if examples is not None else ("side", side))
        if key not in self.idx:
            self.idx[key] = self.rng.integers(0, n, n)
        return scores.record.draw(self.idx[key], self.rng)

    def mean(self, side: int, lr: float, by_seed: dict[int, SplitScores], slots: list[tuple[int, int]]) -> float:
        """A side's mean over the drawn seeds that ran ``lr`` (over every seed that ran it when none was drawn)."""
        mine = [(i, s) for i, s in slots if s in by_seed] or [(-1, s) for s in sorted(by_seed)]
        return float(np.mean([self(side, lr, by_seed[slot[1]], slot) for slot in mine]))


def paired_gap(ours: Selection, theirs: Selection, *, samples: int = 1000, seed: int = 0) -> PairedGap | None:
    """Ours minus theirs at their best-dev LRs over the seeds both ran there, with its percentile bootstrap
    interval (the LR selection redone on every resample); None when no seed ran both."""
    mine, other = ours.test.get(ours.best_lr, {}), theirs.test.get(theirs.best_lr, {})
    shared = sorted(set(mine) & set(other))
    if not shared:
        return None
    uid = _uid_ids([ours, theirs])
    observed = float(np.mean([mine[s].record.value - other[s].record.value for s in shared]))
    seeds = sorted({s for side in (ours, theirs) for by_seed in side.dev.values() for s in by_seed})
    dev_n = {s: max([by_seed[s].n for side in (ours, theirs) for by_seed in side.dev.values() if s in by_seed] + [0])
             for s in seeds}
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for b in range(samples):
        drawn = list(rng.choice(seeds, size=len(seeds))) if len(seeds) > 1 else seeds
        dev_idx = {s: rng.integers(0, dev_n[s], dev_n[s]) if dev_n[s] else None for s in set(drawn)}
        lr_ours, lr_theirs = ours.pick(drawn, dev_idx, rng), theirs.pick(drawn, dev_idx, rng)
        a, z = ours.test.get(lr_ours, {}), theirs.test.get(lr_theirs, {})
        test = _TestDraw(uid, rng)
        slots = list(enumerate(drawn))
        both = [(i, s) for i, s in slots if s in a and s in z]
        if both:
            draws[b] = np.mean([test(0, lr_ours, a[s], (i, s)) - test(1, lr_theirs, z[s], (i, s)) for i, s in both])
        elif a and z:
            draws[b] = test.mean(0, lr_ours, a, slots) - test.mean(1, lr_theirs, z, slots)
        else:  # a picked LR without a test result (only diverged trials there)
            draws[b] = np.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    paired = all(uid[(0, ours.best_lr, s)] is not None and uid[(0, ours.best_lr, s)] == uid[(1, theirs.best_lr, s)]
                 for s in shared)
    return PairedGap(observed, (float(low), float(high)), len(shared), paired)


def method_gaps(summary: Summary, baseline: str = "lora", *, samples: int = 1000, seed: int = 0) -> list[MethodGap]:
    """Every Random Masking cell against ``baseline`` on the same (model, task, budget), in the report's order."""
    out = []
    for key, curve in summary.curves.items():
        other = summary.curves.get(key[:2] + (baseline, None) + key[4:])
        if curve.method != LAW_METHOD or curve.ratio is None or other is None or None in (curve.best_lr, other.best_lr):
            continue
        found = paired_gap(Selection.of(curve), Selection.of(other), samples=samples, seed=seed)
        if found is not None:
            out.append(MethodGap(**vars(found), model=curve.model, task=curve.task, steps=curve.steps,
                                 ratio=curve.ratio, baseline=baseline))
    return sorted(out, key=lambda g: (g.model, g.task, g.steps or 0, -g.ratio))
