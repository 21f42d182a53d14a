"""ASHA with one set of rungs per cell, so a trial only competes with the other LRs of its own cell.

Ray's ASHA ranks every trial of a sweep against every other one. In a sweep over tasks and mask ratios
that compares an RTE accuracy with an SST-2 accuracy, and stops a sparse mask's best LR because a
denser mask scored higher: neither says anything about which LR is worse. Here each cell (model x task
x method x ratio, see :func:`rmask_tune.sweep.plan.cell_key`) gets its own bracket, so ASHA only ever
asks "is this LR worse than the other LRs tried for the same question?". A sweep continued in another
sitting (``--skip-done``) starts with the earlier sittings' trials in the rungs they reached, so its first trial
in a cell is ranked against them instead of passing every rung unopposed.
"""

from __future__ import annotations

from collections.abc import Iterable

from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler, _Bracket

from rmask_tune.sweep.plan import EndedTrial, cell_key


class _TolerantBracket(_Bracket):
    """A bracket whose cutoff sits ``tolerance`` below ASHA's (rewards are "higher is better" here)."""

    def __init__(self, *args, tolerance: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.tolerance = tolerance

    def cutoff(self, recorded):
        cutoff = super().cutoff(recorded)
        return None if cutoff is None else cutoff - self.tolerance


class CellASHA(AsyncHyperBandScheduler):
    """:class:`AsyncHyperBandScheduler` (one bracket) whose rungs are kept per cell; a trial is stopped
    only when it is more than ``tolerance`` (metric units) below its rung's cutoff."""

    _tolerance = 0.0  # schedulers pickled before the setting existed restore with ASHA's own rule

    def __init__(self, *, time_attr: str, max_t: int, grace_period: int, reduction_factor: float,
                 tolerance: float = 0.0, ended: Iterable[EndedTrial] = ()):
        super().__init__(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=1)
        self._bracket_args = (grace_period, max_t, reduction_factor, 0)
        self._tolerance = tolerance
        self._cell_brackets: dict[tuple, _Bracket] = {}
        for index, trial in enumerate(ended):
            self._record_ended(f"ended-{index}", trial)

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # validates metric and mode
        self._trial_info[trial.trial_id] = self._bracket(cell_key(trial.config))

    def _bracket(self, key: tuple) -> _Bracket:
        if key not in self._cell_brackets:
            self._cell_brackets[key] = _TolerantBracket(*self._bracket_args, stop_last_trials=self._stop_last_trials,
                                                        tolerance=self._tolerance)
        return self._cell_brackets[key]

    def _record_ended(self, name: str, trial: EndedTrial) -> None:
        """An earlier sitting's trial in each rung it reached, with the dev metric ASHA recorded there then
        (that of the first epoch at or past the rung's milestone)."""
        for milestone, recorded in self._bracket(cell_key({"trial": trial.point}))._rungs:
            reached = [dev for epoch, dev in sorted(trial.dev_by_epoch) if epoch >= milestone]
            if reached:
                recorded[name] = reached[0]

    def debug_string(self) -> str:
        return f"Using per-cell AsyncHyperBand: {len(self._cell_brackets)} cells, {self._num_stopped} trials stopped early"
