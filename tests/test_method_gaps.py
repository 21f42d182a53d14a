"""Random Masking against LoRA on test (rmask_tune/report/gaps.py): the paired gap and its interval, on synthetic
per-example scores with a known answer and on the committed 64-step sweep's per-example results."""

from __future__ import annotations

import numpy as np
import pytest

from paths import REPO
from rmask_tune.report import build_report, load_summary
from rmask_tune.report.gaps import method_gaps, paired_gap
from rmask_tune.report.summary import SplitScores
from rmask_tune.resampling import DevRecord

N = 1000


def scores(correct: np.ndarray, uids: list | None) -> SplitScores:
    return SplitScores(DevRecord.from_scores(correct), uids)


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
    both = paired_gap(ours, theirs, samples=400)
    (low, high) = both.interval
    assert both.paired and both.seeds == 3 and both.gap == pytest.approx(-0.05) and low < -0.05 < high < 0
    apart = paired_gap(other_uids, theirs, samples=400)
    assert not apart.paired and apart.gap == pytest.approx(-0.05)
    assert (high - low) < 0.5 * (apart.interval[1] - apart.interval[0])
    # Without per-example results: binomial draws around each side's metric, unpaired.
    bare = {s: SplitScores(DevRecord(r.record.value, N)) for s, r in ours.items()}
    binomial = paired_gap(bare, theirs, samples=400)
    assert not binomial.paired and binomial.gap == pytest.approx(-0.05)
    assert binomial.interval[0] < binomial.gap < binomial.interval[1]
    # Seeds only one side ran are left out; none shared: no gap.
    assert paired_gap({0: ours[0]}, theirs, samples=50).seeds == 1
    assert paired_gap({7: ours[0]}, theirs, samples=50) is None


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
