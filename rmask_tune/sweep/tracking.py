"""MLflow bookkeeping of a sweep: one parent run per sweep, one nested run per trial.

A trial's run holds metrics.json and examples.json (its per-example results, see
``rmask_tune.tasks.results``) as artifacts. Runs are found again by their tags (``rmask.sweep_id`` on
the parent, ``rmask.trial_id`` on a trial), so a resumed sweep, a retried trial or a second call for
the same trial reuses its run instead of creating another. Everything goes through ``MlflowClient`` with explicit run ids: concurrent trials
never share the fluent API's global active run.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.runstore.names import (
    EPOCHS_COMPLETED, FINAL_METRICS, ROLE_SWEEP, ROLE_TAG, ROLE_TRIAL, SETTINGS_TAG, STATUS_TAG, SWEEP_ID_TAG, SWEEP_TAG,
    TRIAL_ID_TAG, TRIAL_PARAMS, WALL_TIME,
)
from rmask_tune.sweep.mlflow_view import mark_experiment

PROBE_TIMEOUT_S = 5.0


def probe_tracking_uri(uri: str, storage: Path) -> None:
    """Fail fast, with one line, when an http(s) tracking server does not answer or a sqlite folder is missing.

    ``storage`` (the sweep's folder, created when the sweep starts) counts as present.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # it answered; a server without /health is still a server
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RmaskError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix mlflow.tracking_uri") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir() and folder != storage:
            raise RmaskError(f"MLflow store folder {folder} does not exist (mlflow.tracking_uri {uri})")


class SweepTracker:
    """The parent run of one sweep and its trials' runs in one MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, sweep_id: str, artifact_root: Path):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        self.artifact_root = artifact_root
        self._client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.logged_epochs: dict[str, int] = {}  # trial id -> last epoch already in MLflow
        self.sized: set[str] = set()  # trial ids whose runs hold TRIAL_PARAMS
        self.examples: dict = {}  # trial id -> its per-example results so far (an ExampleLog)

    def __getstate__(self) -> dict:
        # Tune pickles callbacks with the experiment; the client and run ids are found again on load.
        return {**self.__dict__, "_client": None, "experiment_id": None, "parent_id": None, "runs": {},
                "logged_epochs": {}, "sized": set(), "examples": {}}

    def __setstate__(self, state: dict) -> None:
        # trackers pickled before ``sized`` or ``examples`` existed
        self.__dict__.update({"sized": set(), "examples": {}, **state})

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def open(self, params: dict, settings: dict | None = None, join: bool = False) -> str:
        """Find or create the experiment and this sweep's parent run; its id. A new parent run (tagged with the
        trials' shared ``settings``) goes into an experiment that holds another sweep's trials only with ``join``,
        and only when that sweep's settings are the same (``check_joinable``)."""
        if self.parent_id is not None:
            return self.parent_id
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise RmaskError(f"MLflow experiment '{self.experiment}' is deleted; restore it or set mlflow.experiment_name")
        if experiment is None:
            local = self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri
            location = self.artifact_root.as_uri() if local else None
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
            mark_experiment(self.client, self.experiment_id)  # the MLflow UI opens it on its runs
        else:
            self.experiment_id = experiment.experiment_id
        found = self._search(f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}' and tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}'")
        if found:
            self.parent_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
        else:
            text = json.dumps(settings, sort_keys=True, default=str)
            self.check_joinable(json.loads(text), join)
            tags = {ROLE_TAG: ROLE_SWEEP, SWEEP_TAG: self.sweep_name, SWEEP_ID_TAG: self.sweep_id,
                    SETTINGS_TAG: text}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name)
            self.parent_id = run.info.run_id
            self._log(self.parent_id, params=params)
        return self.parent_id

    def check_joinable(self, settings: dict | None, join: bool) -> None:
        """One owner for the experiment's integrity: refuse to add a sweep to an experiment that holds another
        sweep's trials, unless ``join`` and that sweep ran with the same ``settings``."""
        parents = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SWEEP}'",
                                          max_results=5000)
        for parent in parents:
            if not self.client.search_runs([self.experiment_id], max_results=1, filter_string=(
                    f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'")):
                continue  # a sweep that never started a trial
            name = parent.data.tags.get(SWEEP_TAG, "?")
            where = f"MLflow experiment '{self.experiment}' ({self.tracking_uri})"
            if not join:
                raise RmaskError(f"{where} already holds the trials of sweep '{name}'; pass --join to add this "
                                 "sweep's trials to it (same settings only), or set mlflow.experiment_name")
            theirs = json.loads(parent.data.tags.get(SETTINGS_TAG, "null"))
            if theirs is None or settings is None:
                raise RmaskError(f"--join: sweep '{name}' in {where} recorded no settings (an older rmask-tune), so "
                                 "joining it cannot be checked; set another mlflow.experiment_name")
            differ = sorted(key for key in set(theirs) | set(settings) if theirs.get(key) != settings.get(key))
            if differ:
                key = differ[0]
                raise RmaskError(f"--join: sweep '{name}' in {where} ran with {key} {theirs.get(key)!r}, this sweep "
                                 f"has {settings.get(key)!r}; only sweeps with the same settings share an experiment")

    def discard(self) -> None:
        """Delete this sweep's parent run (a sweep that failed before any trial started leaves nothing behind)."""
        if self.parent_id is not None:
            self.client.delete_run(self.parent_id)

    def close(self, tags: dict, interrupted: bool = False) -> None:
        """Tag and end the parent run: FINISHED once every trial has ended (errored trials included),
        KILLED when the sweep was interrupted (``--resume`` reopens it)."""
        self._log(self.parent_id, tags=tags)
        self.client.set_terminated(self.parent_id, status="KILLED" if interrupted else "FINISHED")

    def trial_run(self, trial_id: str, name: str, params: dict) -> str:
        """The run of ``trial_id`` (created on first sight, with ``params``); the same run on every later call."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self._search(f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_id}'")
        if found:
            run = found[0]
            history = self.client.get_metric_history(run.info.run_id, "dev_metric")
            self.logged_epochs[trial_id] = max((m.step for m in history), default=0)
            missing = {k: v for k, v in params.items() if k not in run.data.params}
            self._log(run.info.run_id, params=missing)
            if set(TRIAL_PARAMS) <= set(run.data.params):
                self.sized.add(trial_id)
        else:
            tags = {"mlflow.parentRunId": self.parent_id, ROLE_TAG: ROLE_TRIAL, TRIAL_ID_TAG: trial_id}
            run = self.client.create_run(self.experiment_id, tags={**tags, STATUS_TAG: "running"}, run_name=name)
            self.logged_epochs[trial_id] = 0
            self._log(run.info.run_id, params=params)
        self.runs[trial_id] = run.info.run_id
        return run.info.run_id

    def restart_trial(self, trial_id: str) -> None:
        """Mark the run of a trial that starts (again: resumed or retried) as running."""
        run_id = self.runs[trial_id]
        self._log(run_id, tags={STATUS_TAG: "running"})
        self.client.update_run(run_id, status="RUNNING")

    def trials_with_status(self, status: str) -> set[str]:
        """The trial ids of this sweep whose runs say ``status`` (``running``, ``interrupted``, ...)."""
        return set(self._runs_with_status(status))

    def abandon(self) -> int:
        """After Tune's driver died (Ray ended a worker it did not expect to lose): the trials MLflow has as
        running are marked interrupted and the parent run KILLED, as after Ctrl+C. Returns how many."""
        running = self._runs_with_status("running")
        for trial_id, run_id in running.items():
            self.runs.setdefault(trial_id, run_id)
            self.interrupt_trial(trial_id)
        self.close(tags={}, interrupted=True)
        return len(running)

    def _runs_with_status(self, status: str) -> dict[str, str]:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.`{STATUS_TAG}` = '{status}'",
            max_results=50000,
        )
        return {run.data.tags[TRIAL_ID_TAG]: run.info.run_id for run in found}

    def interrupt_trial(self, trial_id: str) -> None:
        """A trial the sweep's interruption cut short: tagged ``interrupted``, its run KILLED; --resume reruns it."""
        run_id = self.runs[trial_id]
        self._log(run_id, tags={STATUS_TAG: "interrupted"})
        self.client.set_terminated(run_id, status="KILLED")

    def log_epoch(self, trial_id: str, result: dict) -> None:
        """One epoch's train loss and dev metric (step = epoch), unless that epoch is already logged;
        its per-example results (``examples_part``) join the run's examples.json."""
        if "examples_part" in result:
            self.log_examples_part(trial_id, result["examples_part"])
        epoch = int(result.get("epoch", 0))
        if epoch < 1 or epoch <= self.logged_epochs.get(trial_id, 0):
            return
        metrics = {key: result[key] for key in ("train_loss", "dev_metric") if key in result}
        self._log(self.runs[trial_id], metrics=metrics, step=epoch)
        self.logged_epochs[trial_id] = epoch
        sizes = {key: result[key] for key in TRIAL_PARAMS if key in result}
        # every epoch carries them; log them once (records from before precision was logged lack it)
        if {"trainable_params", "total_params"} <= set(sizes) and trial_id not in self.sized:
            self._log(self.runs[trial_id], params=sizes)
            self.sized.add(trial_id)

    def log_examples_part(self, trial_id: str, text: str) -> None:
        """Merge per-example results a trial reported into those held for it, and rewrite its run's
        examples.json once every evaluation held has its examples (a trial run again resends them)."""
        from rmask_tune.tasks.results import EXAMPLES_FILE, ExampleLog

        part = ExampleLog.from_dict(json.loads(text))
        held = self.examples.setdefault(trial_id, part)
        if held is not part:
            held.merge(part)
        if held.complete:
            text = json.dumps(held.to_dict(), separators=(",", ":"))
            self.client.log_text(self.runs[trial_id], text, EXAMPLES_FILE)

    def finish_trial(self, trial_id: str, status: str, result: dict, error_file: Path | None = None) -> None:
        """The final metrics, status tag, metrics.json, examples.json and error file of a trial that ended;
        its run ends."""
        run_id = self.runs[trial_id]
        final = {key: result[key] for key in FINAL_METRICS if key in result}
        final[EPOCHS_COMPLETED] = result.get("epoch", 0)
        final["diverged"] = float(bool(result.get("diverged", False)))
        if WALL_TIME not in final and "elapsed_s" in result:
            final[WALL_TIME] = result["elapsed_s"]
        self._log(run_id, metrics=final, step=int(result.get("epoch", 0)), tags={STATUS_TAG: status})
        if "metrics_json" in result:
            self.client.log_text(run_id, result["metrics_json"], "metrics.json")
        if "examples_json" in result:
            from rmask_tune.tasks.results import EXAMPLES_FILE

            self.client.log_text(run_id, result["examples_json"], EXAMPLES_FILE)
        self.examples.pop(trial_id, None)
        if error_file is not None and error_file.is_file():
            self.client.log_artifact(run_id, str(error_file))
        self.client.set_terminated(run_id, status="FAILED" if status == "errored" else "FINISHED")

    def _search(self, filter_string: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=2))

    def _log(self, run_id: str, *, metrics: dict | None = None, params: dict | None = None, tags: dict | None = None, step: int = 0):
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _is_number(v)],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )


def _is_number(value) -> bool:
    """Numbers MLflow can store (NaN included; None and strings left out)."""
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isinf(value))
