"""Random Masking against LoRA on test (rmask_tune/report/gaps.py): the paired gap and its interval, on synthetic
per-example scores with a known answer and on the committed 64-step sweep's per-example results."""

from __future__ import annotations

import numpy as np
import pytest

from paths import REPO
from rmask_tune.report import build_report, load_summary
from rmask_tune.report.gaps import Selection, method_gaps, paired_gap
from rmask_tune.report.summary import SplitScores
from rmask_tune.resampling import DevRecord

N = 1000


def scores(correct: np.ndarray, uids: list | None) -> SplitScores:
    return SplitScores(DevRecord.from_scores(correct), uids)


def one_lr(test: dict[int, SplitScores], lr: float = 1e-3) -> Selection:
    """A side that ran one LR: its selection has nothing to choose."""
    return Selection({lr: {s: DevRecord(0.5, 0) for s in test}}, {lr: test}, lr)


def test_a_paired_gap_is_exact_and_narrower_than_an_unpaired_one():
    """Ours = theirs with 50 of 1000 right answers turned wrong, per seed: the gap is -0.05 exactly; drawn on the
    same examples it is much surer than the same two sides drawn as if tested on different examples."""
    rng = np.random.default_rng(0)
    uids = [f"u{i}" for i in range(N)]
    theirs, ours, other_uids = {}, {}, {}
    for seed in range(3):
        base = (rng.random(N) < 0.8).astype(float)
        worse = base.copy()
        worse[rng.choice(np.flatnonzero(base), 50, replace=False)] = 0.0
        theirs[seed], ours[seed] = scores(base, uids), scores(worse, uids)
        other_uids[seed] = scores(worse, [f"v{i}" for i in range(N)])
    both = paired_gap(one_lr(ours), one_lr(theirs), samples=400)
    (low, high) = both.interval
    assert both.paired and both.seeds == 3 and both.gap == pytest.approx(-0.05) and low < -0.05 < high < 0
    apart = paired_gap(one_lr(other_uids), one_lr(theirs), samples=400)
    assert not apart.paired and apart.gap == pytest.approx(-0.05)
    assert (high - low) < 0.5 * (apart.interval[1] - apart.interval[0])
    # Without per-example results: binomial draws around each side's metric, unpaired.
    bare = {s: SplitScores(DevRecord(r.record.value, N)) for s, r in ours.items()}
    binomial = paired_gap(one_lr(bare), one_lr(theirs), samples=400)
    assert not binomial.paired and binomial.gap == pytest.approx(-0.05)
    assert binomial.interval[0] < binomial.gap < binomial.interval[1]
    # Seeds only one side ran are left out; none shared: no gap.
    assert paired_gap(one_lr({0: ours[0]}), one_lr(theirs), samples=50).seeds == 1
    assert paired_gap(one_lr({7: ours[0]}), one_lr(theirs), samples=50) is None


def test_the_interval_carries_the_noise_of_the_lr_selection():
    """Ours has two LRs level on dev (independent draws of a 70% accuracy on 500 examples per seed) whose test
    metrics are 10 points apart, the better one at the observed best-dev LR; the observed gap to theirs is +5
    points. A resample picks either LR often, so the interval must reach both +5 and -5, where an interval at the
    observed pick alone sits around +5 and excludes 0."""
    rng = np.random.default_rng(1)
    uids = [f"u{i}" for i in range(N)]
    dev = {lr: {seed: DevRecord.from_scores((rng.random((2, 500)) < 0.7).astype(float)) for seed in range(3)}
           for lr in (1e-3, 1e-2)}
    best = max(dev, key=lambda lr: np.mean([r.value for r in dev[lr].values()]))
    test, theirs = {1e-3: {}, 1e-2: {}}, {}
    for seed in range(3):
        base = (rng.random(N) < 0.75).astype(float)
        better, worse = base.copy(), base.copy()
        better[rng.choice(np.flatnonzero(base == 0), 50, replace=False)] = 1.0
        worse[rng.choice(np.flatnonzero(base == 1), 50, replace=False)] = 0.0
        other = 1e-2 if best == 1e-3 else 1e-3
        test[best][seed], test[other][seed], theirs[seed] = scores(better, uids), scores(worse, uids), scores(base, uids)
    ours = Selection(dev, test, best)
    found = paired_gap(ours, one_lr(theirs), samples=400)
    assert found.paired and found.seeds == 3 and found.gap == pytest.approx(0.05)
    low, high = found.interval
    assert low < -0.04 and high > 0.04
    at_the_pick = paired_gap(Selection({best: dev[best]}, {best: test[best]}, best), one_lr(theirs), samples=400)
    assert at_the_pick.interval[0] > 0.03


def test_a_searched_cell_whose_pick_lacks_a_seed_is_drawn_from_the_seeds_that_ran_it():
    """A law-searched cell: seed 0 ran two LRs, seeds 1 and 2 only the better one. Resamples that pick seed 0's
    other LR have one seed there; the gap uses it, and every resample yields a number."""
    rng = np.random.default_rng(2)
    uids = [f"u{i}" for i in range(N)]
    dev, test, theirs = {1e-3: {}, 1e-2: {}}, {1e-3: {}, 1e-2: {}}, {}
    for seed in range(3):
        correct = (rng.random(N) < 0.8).astype(float)
        theirs[seed] = scores(correct, uids)
        dev[1e-3][seed] = DevRecord.from_scores((rng.random(500) < 0.8).astype(float))
        test[1e-3][seed] = scores(correct, uids)
    dev[1e-2][0] = DevRecord.from_scores((rng.random(500) < 0.79).astype(float))
    test[1e-2][0] = scores(np.zeros(N), uids)
    found = paired_gap(Selection(dev, test, 1e-3), one_lr(theirs), samples=300)
    assert found.gap == 0.0 and found.seeds == 3
    low, high = found.interval
    assert np.isfinite(low) and np.isfinite(high) and low <= 0.0 <= high


@pytest.mark.slow
def test_the_committed_sweeps_gaps_in_the_report(tmp_path):
    """The committed 64-step export (per-example results, 3 seeds): each gap is the mean over seeds of the two
    sides' test metrics at their best-dev LRs, paired on the same test examples; the report's section 1c shows
    it, and SmolLM2 SST-2 at 0.001% lies below LoRA (FINDINGS.md of reports/law-across-tasks)."""
    export = str(REPO / "reports" / "law-across-tasks" / "sweep-export.json.gz")
    summary = load_summary(export, bootstrap=50)
    gaps = method_gaps(summary, samples=200)
    assert len(gaps) == 30  # 5 ratios x 6 (model, task) pairs, each with LoRA
    for g in gaps:
        rm = summary.curves[(g.model, g.task, "random_masking", g.ratio)]
        lora = summary.curves[(g.model, g.task, "lora", None)]
        mine = {t.seed: t.test for t in rm.trials[rm.best_lr]}
        theirs = {t.seed: t.test for t in lora.trials[lora.best_lr]}
        assert g.seeds == 3 and g.paired
        assert g.gap == pytest.approx(np.mean([mine[s] - theirs[s] for s in mine]))
        assert g.interval[0] <= g.gap <= g.interval[1]
    sparse = next(g for g in gaps if (g.model, g.task, g.ratio) == ("smollm2-135m", "SST-2", 1e-5))
    assert sparse.interval[1] < 0
    readme = (build_report(export, out=tmp_path / "r", bootstrap=50).folder / "README.md").read_text()
    assert "## 1c. Random Masking against LoRA" in readme
    row = next(line for line in readme.splitlines()
               if line.startswith("| smollm2-135m | SST-2 | 64 steps | Random Masking 0.001% |"))
    assert f"{sparse.gap * 100:+.1f} [" in row and row.endswith("| 3 | below LoRA |")
