"""Per-cell ASHA: a trial competes only with the other learning rates of its own cell."""

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from rmask_tune.sweep.cell_asha import CellASHA
from rmask_tune.sweep.plan import EndedTrial


def _trial(trial_id: str, task: str, ratio: float, lr: float):
    point = {"model": "tiny-llama", "task": task, "method": "random_masking", "ratio": ratio, "lr": lr, "seed": 0}
    return SimpleNamespace(trial_id=trial_id, config={"trial": point})


def _first_rung(scheduler, results: list[tuple]) -> dict[str, str]:
    """Feed one epoch-1 result per trial, in order; the scheduler's decision for each."""
    scheduler.set_search_properties("dev_metric", "max")
    trials = [(_trial(*spec), metric) for *spec, metric in results]
    for trial, _ in trials:
        scheduler.on_trial_add(None, trial)
    return {trial.trial_id: scheduler.on_trial_result(None, trial, {"training_iteration": 1, "dev_metric": metric})
            for trial, metric in trials}


# SST-2 trials score high, RTE trials low; within RTE the second LR is clearly the better one.
RESULTS = [
    ("sst-a", "SST-2", 1e-3, 1e-3, 0.90), ("sst-b", "SST-2", 1e-3, 1e-2, 0.92),
    ("sst-c", "SST-2", 1e-3, 1e-1, 0.91), ("rte-a", "RTE", 1e-3, 1e-3, 0.50),
    ("rte-b", "RTE", 1e-3, 1e-2, 0.62), ("sst-d", "SST-2", 1e-3, 1.0, 0.50),
]


def test_cell_asha_ranks_within_cells():
    args = dict(time_attr="training_iteration", max_t=2, grace_period=1, reduction_factor=2)
    decisions = _first_rung(CellASHA(**args), RESULTS)
    # RTE's better LR goes on: it is only compared with RTE's other LR, not with SST-2's accuracies.
    assert decisions["rte-b"] == TrialScheduler.CONTINUE
    assert decisions["sst-b"] == TrialScheduler.CONTINUE
    assert decisions["sst-a"] == TrialScheduler.CONTINUE  # first in its cell: nothing to compare with
    assert decisions["sst-d"] == TrialScheduler.STOP  # SST-2's diverging LR is still cut
    # Ray's own ASHA, sharing one rung across the sweep, stops RTE's best LR: the bug CellASHA avoids.
    plain = _first_rung(ASHAScheduler(**args), RESULTS)
    assert plain["rte-b"] == TrialScheduler.STOP


def test_cell_asha_separates_ratios():
    args = dict(time_attr="training_iteration", max_t=2, grace_period=1, reduction_factor=2)
    results = [("dense-a", "SST-2", 1e-2, 1e-3, 0.90), ("dense-b", "SST-2", 1e-2, 1e-2, 0.91),
               ("sparse-a", "SST-2", 1e-5, 1e-2, 0.55), ("sparse-b", "SST-2", 1e-5, 1e-1, 0.70)]
    decisions = _first_rung(CellASHA(**args), results)
    assert decisions["sparse-b"] == TrialScheduler.CONTINUE
    assert decisions["sparse-a"] == TrialScheduler.CONTINUE  # first result of the sparse cell


def test_tolerance_keeps_a_climbing_lr_that_sits_just_under_the_no_op_trials():
    # What the SmolLM2 SST-2 sweep saw at 0.001%: low LRs change nothing and hold the zero-shot dev accuracy;
    # a large LR, still learning after epoch 1, scores three dev examples less and ASHA stopped it.
    args = dict(time_attr="training_iteration", max_t=2, grace_period=1, reduction_factor=2)
    cell = [(f"lr{i}", "SST-2", 1e-5, lr, 0.545) for i, lr in enumerate((1e-4, 1e-3, 1e-2))]
    results = cell + [("climbing", "SST-2", 1e-5, 0.1, 0.53), ("broken", "SST-2", 1e-5, 1.0, 0.465)]
    strict = _first_rung(CellASHA(**args), results)
    assert strict["climbing"] == TrialScheduler.STOP and strict["broken"] == TrialScheduler.STOP
    tolerant = _first_rung(CellASHA(**args, tolerance=0.03), results)
    assert tolerant["climbing"] == TrialScheduler.CONTINUE and tolerant["broken"] == TrialScheduler.STOP


def _point(ratio: float, lr: float, seed: int = 0) -> dict:
    return {"model": "tiny-llama", "task": "SST-2", "method": "random_masking", "ratio": ratio, "lr": lr, "seed": seed}


def test_an_earlier_sittings_trials_stand_in_their_cells_rungs():
    # The 625-step grid check's second sitting: the sitting's first trial of a cell passed every rung unopposed,
    # though earlier sittings had run that cell's best LRs to the end.
    args = dict(time_attr="training_iteration", max_t=4, grace_period=2, reduction_factor=2)
    ended = [EndedTrial(_point(1e-5, 0.1), 0.80, ((1, 0.70), (2, 0.78), (3, 0.79), (4, 0.80))),
             EndedTrial(_point(1e-5, 0.316), 0.81, ((1, 0.72), (2, 0.80), (3, 0.80), (4, 0.81))),
             EndedTrial(_point(1e-5, 10.0), 0.52, ((1, 0.50), (2, 0.52))),  # stopped by ASHA at epoch 2
             EndedTrial(_point(1e-3, 0.01), 0.86, ((2, 0.86), (4, 0.86)))]  # another cell
    scheduler = CellASHA(**args, ended=ended)
    (rung_4, at_4), (rung_2, at_2) = scheduler._bracket(("tiny-llama", "SST-2", "random_masking", 1e-5))._rungs
    assert (rung_2, sorted(at_2.values()), rung_4, sorted(at_4.values())) == (2, [0.52, 0.78, 0.80], 4, [0.80, 0.81])

    def decisions(scheduler) -> dict[str, str]:
        scheduler.set_search_properties("dev_metric", "max")
        out = {}
        for name, ratio in (("sparse", 1e-5), ("dense", 1e-2)):
            trial = SimpleNamespace(trial_id=name, config={"trial": _point(ratio, 1.0, seed=1)})
            scheduler.on_trial_add(None, trial)
            out[name] = scheduler.on_trial_result(None, trial, {"training_iteration": 2, "dev_metric": 0.71})
        return out

    # ranked against the cell's earlier trials (cutoff 0.78 at epoch 2); a cell no sitting ran is still unopposed
    assert decisions(scheduler) == {"sparse": TrialScheduler.STOP, "dense": TrialScheduler.CONTINUE}
    assert decisions(CellASHA(**args)) == {"sparse": TrialScheduler.CONTINUE, "dense": TrialScheduler.CONTINUE}
