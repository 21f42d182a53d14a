"""The Ray Tune trainable: one trial through ``run_trial``, reported to Tune once per epoch.

A trial writes into ``<storage>/trials/<trial id>``. Its last epoch is reported only after
``run_trial`` has returned, so metrics.json is on disk before Tune (or ASHA) can end the trial; that
report carries the test metric and the text of metrics.json and examples.json (for MLflow, which logs
from the driver, maybe on another node). Every earlier epoch's report carries that epoch's per-example
dev results (``examples_part``), so a trial ASHA stops keeps them too. A trial whose metrics.json
already exists finished in an earlier, interrupted session (Tune had not saved that yet): it replays
its epochs from the file instead of training again.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import socket
import time
from pathlib import Path

import psutil

from rmask_tune.tasks.results import EXAMPLES_FILE

# Per-epoch record keys that go to Tune as they are (numbers, and the precision's name); the rest is left out.
_EPOCH_KEYS = ("epoch", "train_loss", "dev_metric", "diverged", "step_time_s", "elapsed_s", "trainable_params",
               "total_params", "precision", "budget_steps")
_FINAL_KEYS = ("test_metric", "best_epoch", "best_dev_metric", "peak_mem_bytes")


def run_tune_trial(config: dict) -> None:
    """Run the trial described by ``config`` (``trial``, ``settings``, ``trials_dir``) inside Ray Tune."""
    from ray import tune

    from rmask_tune.sweep.model_cache import CACHE
    from rmask_tune.trainer import run_trial

    output = Path(config["trials_dir"]) / tune.get_context().get_trial_id()
    saved = output / "metrics.json"
    if saved.exists():
        reporter = EpochReporter(tune.report, lambda: {"load_s": math.nan})
        result = json.loads(saved.read_text())
        for record in result["epochs"][:-1]:
            reporter(record)
        reporter.finish(result, replayed=True, metrics_json=saved.read_text(), **examples_json(output))
        return
    output.mkdir(parents=True, exist_ok=True)
    rss = release_memory()
    with open(output / "attempts.jsonl", "a") as log:
        log.write(json.dumps({"started": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
                              "rss_bytes": rss}) + "\n")
    trial = {key: value for key, value in config["trial"].items() if value is not None}
    CACHE.reset_stats()
    reporter = EpochReporter(tune.report, CACHE.stats)
    with CACHE.installed():
        result = run_trial({**config["settings"], **trial}, hooks=[reporter], output_dir=output, overwrite=True)
    reporter.finish(result, replayed=False, metrics_json=saved.read_text(), **examples_json(output))


def examples_json(output: Path) -> dict:
    """``examples_json``: the text of the trial's examples.json, when it wrote one."""
    path = output / EXAMPLES_FILE
    return {"examples_json": path.read_text()} if path.is_file() else {}


def release_memory() -> int:
    """Free what earlier trials in this (reused) worker left behind; returns the resident bytes after.

    Collects garbage (models sit in reference cycles) and hands glibc's freed heap back to the OS. Without
    it, SmolLM2-135M workers that had each run four RTE trials held 10.5 GB between trials and Ray's memory
    monitor killed one; with it, they start every trial at 1.1 GB (the cached base model included).
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    return psutil.Process().memory_info().rss


class EpochReporter:
    """The trainer's hook: reports every epoch but the final one, which ``finish`` reports.

    ``loading()`` gives the model cache's counters and ``load_s``, the seconds spent loading the model
    and tokenizer; every report carries them, and ``compute_s``: the trial's time so far less ``load_s``
    (NaN for a replayed trial, which computed nothing). An epoch's report also carries, as
    ``examples_part`` (JSON text), the per-example results not reported before, with the examples of
    each split the first time it appears.
    """

    def __init__(self, report, loading):
        self.report = report
        self.loading = loading
        self.best = -math.inf
        self.sent_evaluations = 0
        self.sent_splits: set[str] = set()

    def __call__(self, record: dict) -> None:
        if record.get("final"):
            return
        metrics = self.metrics(record)
        examples = record.get("examples")
        if examples is not None and len(examples.evaluations) > self.sent_evaluations:
            part = examples.since(self.sent_evaluations, self.sent_splits)
            metrics["examples_part"] = json.dumps(part.to_dict(), separators=(",", ":"))
            self.sent_evaluations = len(examples.evaluations)
            self.sent_splits |= set(part.splits)
        self.report(metrics)

    def metrics(self, record: dict) -> dict:
        """What Tune gets for an epoch; ``dev_metric`` is always there (NaN when the trial has none yet)."""
        metrics = {key: record[key] for key in _EPOCH_KEYS if record.get(key) is not None}
        metrics["dev_metric"] = _number(record.get("dev_metric"))
        if math.isfinite(metrics["dev_metric"]):
            self.best = max(self.best, metrics["dev_metric"])
        metrics["best_dev_metric"] = self.best if math.isfinite(self.best) else math.nan
        loading = self.loading()
        metrics.update(loading, compute_s=record.get("elapsed_s", math.nan) - loading["load_s"], final=False)
        return metrics

    def finish(self, result: dict, **extra) -> None:
        """Report the last epoch with the trial's final numbers (test metric, status, sizes, timing)."""
        last = result["epochs"][-1] if result["epochs"] else {"epoch": 0}
        metrics = self.metrics(last)
        metrics.update({key: result[key] for key in _FINAL_KEYS if result.get(key) is not None})
        metrics["best_dev_metric"] = _number(result.get("dev_metric"))
        metrics.update(
            final=True,
            status=result["status"],
            metric=result["metric"],
            wall_time_s=result["wall_time_s"],
            compute_s=result["wall_time_s"] - metrics["load_s"],
            trainable_fraction=result["trainable_fraction"],
            **extra,
        )
        self.report(metrics)


def _number(value) -> float:
    return math.nan if value is None else float(value)
