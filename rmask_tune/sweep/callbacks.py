"""Ray Tune callbacks run by the sweep's driver: MLflow logging and the live progress line."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

from rmask_tune.runstore.names import CONFIG_PARAMS, NONE, POINT_PARAMS, TRIALS_TAG, param_text
from rmask_tune.sweep.results import describe, trial_status
from rmask_tune.sweep.tracking import SweepTracker

def trial_params(point: dict, settings: dict) -> dict:
    """The MLflow params of a trial's run: its grid point, its settings (CONFIG_PARAMS; of its method's options
    those not at their defaults) and its task's metric."""
    from rmask_tune.methods import method_options
    from rmask_tune.tasks import get_task
    from rmask_tune.trainer.config import TrialConfig

    config = TrialConfig.from_dict({**settings, **{key: value for key, value in point.items() if value is not None}})
    defaults = method_options(config.method)  # options left at their defaults log as not given
    config.method_options = {name: value for name, value in config.method_options.items()
                             if name not in defaults or defaults[name].default != value}
    return {
        **{key: param_text(point.get(key)) for key in POINT_PARAMS},
        "density": NONE,
        **{key: param_text(getattr(config, key)) for key in CONFIG_PARAMS},
        "metric": get_task(point["task"]).metric,
    }


class MlflowCallback(Callback):
    """Logs every trial to its own MLflow run under the sweep's parent run, from the driver."""

    def __init__(self, tracker: SweepTracker, sweep_params: dict):
        self.tracker = tracker
        self.sweep_params = sweep_params

    def setup(self, **info) -> None:
        self.tracker.open(self.sweep_params)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run(trial)
        self.tracker.restart_trial(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._run(trial)
        self.tracker.log_epoch(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, errored=True)

    def on_experiment_end(self, trials, **info) -> None:
        # Trials MLflow still has as running either ended without it hearing of it (an earlier session
        # was killed) and are caught up, or were cut short now by an interruption (Ctrl+C): Tune ended
        # them without a final result or a scheduler decision, and --resume will run them again.
        running = self.tracker.trials_with_status("running")
        for trial in trials:
            if trial.trial_id not in running or trial.status not in ("TERMINATED", "ERROR"):
                continue
            if trial.status == "ERROR" or (trial.last_result or {}).get("final"):
                self._end(trial, errored=trial.status == "ERROR")
            else:
                self._run(trial)
                self.tracker.interrupt_trial(trial.trial_id)
        unfinished = any(t.status not in ("TERMINATED", "ERROR") for t in trials)
        cut = self.tracker.trials_with_status("interrupted")
        self.tracker.close(tags={TRIALS_TAG: len(trials)}, interrupted=unfinished or bool(cut))

    def _run(self, trial) -> str:
        point = trial.config["trial"]
        return self.tracker.trial_run(trial.trial_id, describe(point), trial_params(point, trial.config["settings"]))

    def _end(self, trial, errored: bool) -> None:
        self._run(trial)
        result = trial.last_result or {}
        error_file = Path(trial.error_file) if errored and trial.error_file else None
        self.tracker.finish_trial(trial.trial_id, trial_status(result, errored), result, error_file)


class ProgressCallback(Callback):
    """One status line on stderr (rewritten in place on a terminal) whenever the counts or the best trial change.

    A trial counts as ended when Tune reported its end to the callbacks in this session, or had ended before
    it (a resumed sweep); one Tune terminated without reporting it (an interruption's clean-up) counts as
    interrupted, never as stopped early by ASHA."""

    def __init__(self, total: int):
        self.total = total
        self.started = time.monotonic()
        self.shown = ""
        self.ended: set[str] = set()  # trial ids whose end Tune reported
        self.earlier: set[str] | None = None  # trial ids already ended when this session first saw the trials

    def setup(self, **info) -> None:
        self.started = time.monotonic()
        self.earlier = None  # a resumed sweep's callback comes back pickled: this session looks again

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._show(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self._show(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self._show(trials)

    def on_experiment_end(self, trials, **info) -> None:
        self._show(trials)
        if sys.stderr.isatty():
            sys.stderr.write("\n")

    def _status(self, trial) -> str | None:
        """How a trial ended (``trial_status``, or ``interrupted``); None while it has not."""
        if trial.status not in ("TERMINATED", "ERROR"):
            return None
        errored = trial.status == "ERROR"
        if errored or trial.trial_id in self.ended or trial.trial_id in self.earlier:
            return trial_status(trial.last_result, errored)
        return "interrupted"

    def _show(self, trials) -> None:
        if self.earlier is None:
            self.earlier = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        counts = {"finished": 0, "stopped": 0, "diverged": 0, "errored": 0, "interrupted": 0}
        running, best = 0, None
        for trial in trials:
            running += trial.status == "RUNNING"
            status = self._status(trial)
            if status is not None:
                counts[status] += 1
            value = (trial.last_result or {}).get("best_dev_metric", math.nan)
            if math.isfinite(value) and (best is None or value > best[0]):
                best = (value, trial)
        ended = sum(counts.values()) - counts["interrupted"]
        line = (
            f"{ended}/{self.total} trials done ({counts['finished']} finished, {counts['stopped']} "
            f"stopped early, {counts['diverged']} diverged, {counts['errored']} errored), {running} running"
        )
        if counts["interrupted"]:
            line += f", {counts['interrupted']} interrupted"
        if best is not None:
            line += f" | best dev {best[0]:.4f}: {describe(best[1].config['trial'])}"
        if line == self.shown:
            return
        self.shown = line
        elapsed = int(time.monotonic() - self.started)
        out = sys.stderr
        stamped = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {line}"
        out.write(f"\r\033[K{stamped}" if out.isatty() else f"{stamped}\n")
        out.flush()
