"""A real sqlite MLflow store with known noisy metrics, for tests of the law's statistics: trials logged by the
sweep's own tracker with per-example dev results (simulated: an example is right when its fixed difficulty lies
under the accuracy at that LR, so results are paired across LRs), on a known law."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rmask_tune.sweep.tracking import SweepTracker
from rmask_tune.tasks.results import ExampleLog

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
GRID = [float(f"{10 ** e:.3g}") for e in np.arange(-4.0, 0.01, 0.5)]
SEEDS, DEV, TEST = (0, 1), 200, 200
FROZEN, PEAK = 0.6, 0.85  # accuracy of the frozen model (and of a cell that does not learn), and at the optimum


@dataclass
class NoisyLaw:
    """log10 lr* = a + offset[task] + b log10 ratio for ``model``; accuracy PEAK - 0.1 (log10 lr - log10 lr*)^2,
    floored at FROZEN, at the ratios that learn, FROZEN at the others."""

    ratios: dict[float, bool]  # ratio -> learns
    offsets: dict[str, float] = field(default_factory=lambda: {"SST-2": 0.0})  # task -> offset (decades)
    a: float = -4.0
    b: float = -0.8
    model: str = "m"

    def log_lr(self, task: str, ratio: float) -> float:
        return self.a + self.offsets[task] + self.b * math.log10(ratio)

    def accuracy(self, task: str, ratio: float | None, lr: float | None) -> float:
        if ratio is None or not self.ratios[ratio]:
            return FROZEN
        return max(FROZEN, PEAK - 0.1 * (math.log10(lr) - self.log_lr(task, ratio)) ** 2)


def _log(task: str, difficulty: np.ndarray, level: float, rng) -> ExampleLog:
    log = ExampleLog(task, "accuracy", "accuracy")
    uids = [f"dev-{i}" for i in range(DEV)]
    for epoch in (1, 2):
        log.add("dev", epoch, uids, {"correct": (difficulty < level + rng.normal(0, 0.005)).astype(int).tolist()})
    log.add("test", 2, [f"test-{i}" for i in range(TEST)], {"correct": (rng.random(TEST) < level).astype(int).tolist()})
    return log


def _fill(uri: str, artifacts: Path, law: NoisyLaw, ratios, frozen: bool) -> None:
    """The frozen model (when ``frozen``) and the Random Masking cells at ``ratios`` of every task; every trial's
    noise is seeded by its place in the whole plan, so a store holding part of it holds the same trials."""
    tracker = SweepTracker(uri, "noisy-law", "noisy-law", "sweep-1", artifacts)
    tracker.open({"sweep_file": "noisy-law.yaml"})
    cells = [("none", None, None)] + [("random_masking", r, lr) for r in law.ratios for lr in GRID]
    plan = [(t, cell, seed) for t in range(len(law.offsets)) for cell in cells for seed in SEEDS]
    tasks = list(law.offsets)
    for n, (t, (method, ratio, lr), seed) in enumerate(plan):
        if (ratio is None and not frozen) or (ratio is not None and ratio not in ratios):
            continue
        difficulty = np.random.default_rng(100 + seed + 10 * t).random(DEV)  # one dev set per task and seed
        trial_id = f"t{n:03d}"
        log = _log(tasks[t], difficulty, law.accuracy(tasks[t], ratio, lr), np.random.default_rng(n))
        dev = [log.scores(e)["accuracy"] for e in log.evaluations if e.split == "dev"]
        tracker.trial_run(trial_id, trial_id, {
            "model": law.model, "task": tasks[t], "method": method, "lr": "none" if lr is None else lr, "seed": seed,
            "ratio": "none" if ratio is None else ratio, "density": "none", "epochs": 2, "train_examples": 256,
            "dev_examples": DEV, "test_examples": TEST, "metric": "accuracy"})
        for epoch, value in enumerate(dev, 1):
            tracker.log_epoch(trial_id, {"epoch": epoch, "train_loss": 1.0, "dev_metric": value,
                                         "trainable_params": 0 if ratio is None else round(ratio * 1e6),
                                         "total_params": 1_000_000, "precision": "fp32"})
        tracker.finish_trial(trial_id, "finished", {
            "epoch": 2, "best_dev_metric": max(dev), "best_epoch": 1 + int(np.argmax(dev)),
            "test_metric": log.scores(log.find("test"))["accuracy"], "wall_time_s": 1.0,
            "examples_json": json.dumps(log.to_dict())})
    tracker.close(tags={"rmask.trials": len(plan)})


def noisy_store(law: NoisyLaw, ratios=None, frozen: bool = True) -> Path:
    """A sweep folder (``mlflow.db`` and artifacts, in /dev/shm when writable) with ``law``'s trials at ``ratios``
    (default all); the caller removes it."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="rmask-noisy-law-", dir=shm))
    _fill(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", law, tuple(law.ratios) if ratios is None else ratios,
          frozen)
    return folder
