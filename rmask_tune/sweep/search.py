"""What Ray Tune searches: the grid's trials, Optuna's learning rates per cell, or the law-guided searcher's
trials, and the ASHA scheduler."""

from __future__ import annotations

from pathlib import Path

from rmask_tune.sweep.plan import METRIC, MODE, SweepSpace, trial_point
from rmask_tune.sweep.schema import AshaScheduler, LawGuidedSearch, OptunaSearch


class OptunaSpace:
    """Optuna's define-by-run space: trial ``n`` takes entry ``n`` of the sweep's round-robin schedule.

    Each learning rate is drawn log-uniformly from its cell's LR range under the cell's own parameter
    name, so TPE learns a separate optimum per model x task x method x ratio.
    """

    def __init__(self, space: SweepSpace, constants: dict):
        self.schedule = space.optuna_schedule()
        self.constants = constants

    def __call__(self, trial) -> dict:
        index, cell, seed = self.schedule[trial.number % len(self.schedule)]
        lr = trial.suggest_float(f"lr_cell{index}", min(cell.lrs), max(cell.lrs), log=True) if cell.lrs else None
        return {"trial": trial_point(cell, lr, seed), **self.constants}


def tune_search(space: SweepSpace, trials_dir: Path) -> tuple[dict, object, int]:
    """``(param_space, search_alg, num_samples)`` for the Tuner."""
    from ray import tune

    constants = {"settings": space.settings(), "trials_dir": str(trials_dir)}
    search = space.file.search
    if isinstance(search, LawGuidedSearch):
        from rmask_tune.sweep.law_search import LawSearcher

        searcher = LawSearcher(space, constants, space.prior, space.file.max_concurrent_trials)
        return {}, searcher, space.num_trials()  # at most the grid: the searcher says when it is finished
    if not isinstance(search, OptunaSearch):
        return {"trial": tune.grid_search(space.grid_trials()), **constants}, None, 1
    from optuna.samplers import TPESampler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch as TuneOptuna

    optuna_space = OptunaSpace(space, constants)
    searcher = TuneOptuna(optuna_space, metric=METRIC, mode=MODE, sampler=TPESampler(seed=search.seed))
    limited = ConcurrencyLimiter(searcher, max_concurrent=space.file.max_concurrent_trials)
    return {}, limited, len(optuna_space.schedule)


def tune_scheduler(space: SweepSpace):
    """ASHA over epochs (one report per epoch), run separately within each cell, or None; the trials earlier
    sittings ended (``--skip-done``) stand in its rungs as they stood when they ran."""
    settings = space.file.scheduler
    if not isinstance(settings, AshaScheduler):
        return None
    from rmask_tune.sweep.cell_asha import CellASHA

    return CellASHA(
        time_attr="training_iteration",
        max_t=space.epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        tolerance=settings.tolerance,
        ended=space.ended,
    )


def trial_dirname(trial) -> str:
    """Tune's folder for a trial: its id (the config is in params.json and MLflow)."""
    return trial.trial_id

