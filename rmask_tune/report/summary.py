"""What a sweep found: best-dev LR per curve, the results table, optimal LRs and the law, compute,
and what is missing. Pure data (no plotting, no MLflow)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from rmask_tune.analysis.probes import loss_settings
from rmask_tune.errors import RmaskError
from rmask_tune.law import Fit, Law, fit_law, fit_shared
from rmask_tune.law_record import ExcludedCell, LawPoint, LawSource, Validation
from rmask_tune.runstore.reader import TERMINAL, Trial, check_has_trials, check_one_sweep
from rmask_tune.resampling import (
    SIGNAL_LEVEL, DevRecord, OptimumEstimate, SignalTest, bootstrap_cell, optimum_with_interval, signal_test,
)
from rmask_tune.tasks.results import ExampleLog
from rmask_tune.validation import (
    leave_one_budget_out, leave_one_ratio_out, leave_one_task_out, summarize_by_source, summarize_validation,
)

LAW_METHOD = "random_masking"
METHOD_NAMES = {
    "random_masking": "Random Masking", "structured_masking": "Structured Masking", "full": "Full FT",
    "lora": "LoRA", "adalora": "AdaLoRA", "prefix": "Prefix", "bitfit": "BitFit", "shira": "SHiRA",
    "adapter": "Adapter", "none": "Frozen",
}


def fmt_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:.2g}"


def fmt_pct(fraction: float | None) -> str:
    if fraction is None:
        return "—"
    return np.format_float_positional(fraction * 100, precision=3, unique=True, fractional=False, trim="-") + "%"


def slug(text: str) -> str:
    """``text`` as a file-name-safe string."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def row_label(method: str, ratio: float | None, steps: int | None = None) -> str:
    """A row's name: the method, its ratio, and (``steps``, in a report of several budgets) the budget."""
    name = METHOD_NAMES.get(method, method)
    label = name if ratio is None else f"{name} {fmt_pct(ratio)}"
    return label if steps is None else f"{label} · {steps} steps"


@dataclass
class Curve:
    """The trials of one (model, task, method, ratio, budget) across learning rates; ``steps``: the budget."""

    model: str
    task: str
    method: str
    ratio: float | None
    steps: int | None
    metric: str
    dev: dict[float | None, list[float]]  # selection values (best dev metric) per LR, one per seed; LR order
    trials: dict[float | None, list[Trial]]
    best_lr: float | None = None
    test: list[float] = field(default_factory=list)  # test metrics at the best-dev LR
    optimum: OptimumEstimate | None = None  # with its bootstrap interval (two or more LRs)
    signal: SignalTest | None = None  # the law method's cells only
    records: dict[float | None, dict[int, DevRecord]] = field(default_factory=dict)  # what the bootstrap draws

    @property
    def means(self) -> tuple[list[float], list[float]]:
        """The LRs with a result and the mean dev metric over seeds at each."""
        lrs = [lr for lr in self.dev if lr is not None]
        return lrs, [sum(self.dev[lr]) / len(self.dev[lr]) for lr in lrs]


@dataclass
class Row:
    """One row of the results table: a model, a method, (for masking) a ratio, and a budget (``steps``; named in
    the label when the report holds several, ``shown_steps``)."""

    model: str
    method: str
    ratio: float | None
    trainable_fraction: float | None
    trainable_params: int | None
    cells: dict[str, Curve]  # by task
    steps: int | None = None
    shown_steps: int | None = None

    @property
    def label(self) -> str:
        return row_label(self.method, self.ratio, self.shown_steps)

    def average(self, tasks: list[str]) -> tuple[float | None, int]:
        """Mean over tasks of the per-task mean test metric, and how many tasks it covers."""
        means = [sum(c.test) / len(c.test) for t in tasks if (c := self.cells.get(t)) and c.test]
        return (sum(means) / len(means) if means else None), len(means)


@dataclass
class Summary:
    experiment: str
    tracking_uri: str
    trials: list[Trial]
    models: list[str]
    tasks: list[str]
    curves: dict[tuple, Curve]  # by ``cell_key``
    rows: list[Row]
    law: Law
    compute: Compute
    notes: list[str]


def _dedupe(trials: list[Trial]) -> tuple[list[Trial], int]:
    """One trial per configuration: the newest that reached a result, else the newest."""
    chosen: dict[tuple, Trial] = {}
    for t in sorted(trials, key=lambda t: (t.status in TERMINAL, t.start_time), reverse=True):
        chosen.setdefault((t.configuration, t.steps), t)
    return list(chosen.values()), len(trials) - len(chosen)


def cell_key(trial: Trial, several_budgets: bool) -> tuple:
    """A cell's key in ``Summary.curves``: (model, task, method, ratio), and the budget (steps) after them in a
    report of several budgets."""
    return (trial.model, trial.task, trial.method, trial.ratio) + ((trial.steps,) if several_budgets else ())


def _curve(key: tuple, trials: list[Trial]) -> Curve:
    """Pick the best-dev LR; a diverged trial without a dev metric counts as the curve's worst."""
    model, task, method, ratio = key[:4]
    steps = trials[0].steps
    by_lr: dict[float | None, list[Trial]] = defaultdict(list)
    for t in sorted(trials, key=lambda t: t.lr or 0.0):  # lr None: a method that trains nothing
        by_lr[t.lr].append(t)
    known = [t.dev for t in trials if t.dev is not None and math.isfinite(t.dev)]
    floor = min(known) if known else None
    dev: dict[float | None, list[float]] = {}
    for lr, group in by_lr.items():
        values = [t.dev if t.dev is not None and math.isfinite(t.dev) else floor for t in group
                  if (t.dev is not None and math.isfinite(t.dev)) or t.status == "diverged"]
        if values and None not in values:
            dev[lr] = values
    curve = Curve(model, task, method, ratio, steps, trials[0].metric, dev, dict(by_lr))
    if dev:
        curve.best_lr = max(dev, key=lambda lr: sum(dev[lr]) / len(dev[lr]))
        curve.test = [t.test for t in by_lr[curve.best_lr] if t.test is not None and math.isfinite(t.test)]
        curve.records = {lr: {t.seed: _dev_record(t, floor) for t in by_lr[lr]
                              if (t.dev is not None and math.isfinite(t.dev)) or t.status == "diverged"}
                         for lr in dev}
    return curve


def select_lr(trials: list[Trial]) -> Curve:
    """The report's reading of one cell's trials (its model selection): re-runs of a configuration
    deduplicated, ended trials only, the best-dev LR and the test metrics there."""
    ended = [t for t in _dedupe(trials)[0] if t.status in TERMINAL]
    if not ended:
        raise RmaskError("a cell needs at least one ended trial to select a learning rate")
    first = ended[0]
    return _curve(cell_key(first, False), ended)


# Per-example columns whose mean is the metric: the bootstrap's fast path.
MEAN_COLUMNS = {"accuracy": "correct", "f1": "f1", "em": "em"}


@dataclass
class SplitScores:
    """What the bootstrap draws for one split of one trial, and the split's example ``uids`` (None without
    per-example results: then a binomial around the reported value)."""

    record: DevRecord
    uids: list | None = None


def split_scores(trial: Trial, split: str, value: float) -> SplitScores:
    """``split``'s per-example results over its evaluations (dev: every epoch, the best one chosen on each draw;
    test: its one evaluation) when the trial recorded them, else ``value`` on its ``{split}_examples``."""
    examples = trial.record.examples if trial.record is not None else None
    if examples:
        log = ExampleLog.from_dict(examples)
        evaluations = [e for e in log.evaluations if e.split == split]
        if evaluations and split in log.splits:
            uids = list(log.splits[split]["uid"])
            column = MEAN_COLUMNS.get(trial.metric)
            if column is not None and all(column in e.columns for e in evaluations):
                scores = np.array([e.columns[column] for e in evaluations], dtype=float)
                return SplitScores(DevRecord.from_scores(scores, value), uids)
            return SplitScores(DevRecord(value, evaluations[0].size,
                                         lambda idx: np.array([log.scores(e, idx)[trial.metric] for e in evaluations])),
                               uids)
    size = trial.record.params.get(f"{split}_examples") if trial.record is not None else None
    return SplitScores(DevRecord(value, int(float(size)) if size else 0))


def _dev_record(trial: Trial, floor: float | None) -> DevRecord:
    """What the bootstrap draws for one trial's dev results (a diverged trial without one: the curve's floor,
    constant)."""
    if trial.dev is None or not math.isfinite(trial.dev):
        return DevRecord(floor, 0)
    return split_scores(trial, "dev", trial.dev).record


def _cell_statistics(curves: dict[tuple, Curve], bootstrap: int, seed: int) -> None:
    """Each curve's optimum with its bootstrap interval; the law method's cells also get the signal test
    against the frozen model of their (model, task) when the sweep ran it, else against their smallest LR."""
    for key, curve in curves.items():
        records = {lr: r for lr, r in curve.records.items() if lr is not None and r}
        if len(records) < 2:
            continue
        method = curve.method
        frozen = curves.get(key[:2] + ("none", None) + key[4:])
        reference = frozen.records.get(None) if frozen is not None and method == LAW_METHOD else None
        boot = bootstrap_cell(records, reference or None, samples=bootstrap, seed=seed)
        curve.optimum = optimum_with_interval(boot)
        if method == LAW_METHOD:
            curve.signal = signal_test(boot)


def law_curves(curves: Iterable[Curve]) -> dict[tuple, tuple[list[float], list[float]]]:
    """The law method's measured curves, ``(model, task, ratio, steps) -> (LRs, mean dev metric)``, two LRs or
    more: what held-out predictions are scored on."""
    return {(c.model, c.task, c.ratio, c.steps): c.means for c in curves
            if c.method == LAW_METHOD and c.ratio is not None and len(c.means[0]) >= 2}


def _loss_settings(curve: Curve) -> dict:
    """The settings that shaped the cell's training loss (those of its first trial with stored params), which
    ``analyze calibrate`` probes with."""
    records = [t.record for trials in curve.trials.values() for t in trials if t.record is not None]
    return loss_settings(records[0].params) if records else {}


def _point(c: Curve) -> LawPoint:
    """A cell's optimum as a law point."""
    o = c.optimum
    return LawPoint(
        model=c.model, task=c.task, ratio=c.ratio, steps=c.steps, lr=o.lr, log10_lr=o.log10_lr, se=o.se,
        interval=(10 ** o.interval[0], 10 ** o.interval[1]), estimate=o.kind, best_grid_lr=o.best_grid_lr,
        edge_share=o.edge_fraction, resampled=o.source, seeds=max(len(v) for v in c.dev.values()),
        grid=tuple(sorted(lr for lr in c.dev if lr is not None)), signal=c.signal.to_dict() if c.signal else None,
        loss_settings=_loss_settings(c),
    )


def _law(curves: list[Curve], notes: list[str], bootstrap: int, seed: int) -> Law:
    """The cells that pass the rules of docs/statistics.md, the fits over them, and their validation."""
    typed: list[LawPoint] = []
    excluded: list[ExcludedCell] = []
    for c in curves:
        if c.method != LAW_METHOD or c.ratio is None:
            continue
        if c.optimum is None:
            excluded.append(ExcludedCell(c.model, c.task, c.ratio, "fewer than two learning rates with a result",
                                         steps=c.steps))
            continue
        point = _point(c)
        if c.optimum.at_edge:
            side = "upper" if c.optimum.kind == "edge-high" else "lower"
            excluded.append(ExcludedCell(c.model, c.task, c.ratio, f"best LR at the grid's {side} edge", point))
        elif c.signal is not None and not c.signal.passed:
            reason = (f"signal test failed: best LR beats the {c.signal.reference} by "
                      f"{c.signal.difference * 100:+.1f} points, p = {c.signal.p_value:.3f} >= {c.signal.level}")
            excluded.append(ExcludedCell(c.model, c.task, c.ratio, reason, point))
        else:
            typed.append(point)
    fits: dict[str, Fit] = {}
    for model in sorted({p.model for p in typed} | {e.model for e in excluded}):
        mine = [p for p in typed if p.model == model]
        try:
            fits[model] = fit_law(mine, bootstrap=bootstrap, seed=seed)
        except RmaskError:
            ratios = len({p.ratio for p in mine})
            notes.append(f"no law for {model}: cells that pass the rules at {ratios} ratio(s); two or more are needed")
    by_task: dict[str, Fit] = {}
    for model, task in sorted({(p.model, p.task) for p in typed}):
        mine = [p for p in typed if (p.model, p.task) == (model, task)]
        if len({p.ratio for p in mine}) >= 2:
            by_task[f"{model}/{task}"] = fit_law(mine, bootstrap=bootstrap, seed=seed)
    try:
        pooled = fit_law(typed, bootstrap=bootstrap, seed=seed)
    except RmaskError:
        pooled = None
    try:
        shared = fit_shared(typed)
    except RmaskError:
        shared = None
        notes.append("no law: no (model, task) has cells that pass the rules at two or more ratios")
    measured = law_curves(curves)
    tasks_out, ratios_out = leave_one_task_out(typed, measured), leave_one_ratio_out(typed, measured)
    budgets_out = leave_one_budget_out(typed, measured)
    budget_ignored = leave_one_budget_out(typed, measured, budget_term=False)
    source = LawSource(
        bootstrap={"samples": bootstrap, "seed": seed},
        estimator="quadratic in log10(lr) through the best mean-dev LR and its neighbours (mean over seeds); "
                  "interval: percentile bootstrap over seeds and dev examples, paired across LRs; "
                  "se adds the grid spacing / sqrt(12)",
        signal_test=f"max-type paired bootstrap test that some LR beats the frozen model (else the smallest LR) "
                    f"on dev, one-sided, level {SIGNAL_LEVEL} (docs/statistics.md)",
    )
    budget_summary = {key: summarize_validation(rows) for key, rows in (
        ("leave_one_budget_out", budgets_out), ("leave_one_budget_out_budget_ignored", budget_ignored)) if rows}
    validation = Validation(tasks_out, ratios_out, {"leave_one_task_out": summarize_validation(tasks_out),
                                                    **summarize_by_source(tasks_out),
                                                    "leave_one_ratio_out": summarize_validation(ratios_out),
                                                    **budget_summary},
                            leave_one_budget_out=budgets_out or None,
                            leave_one_budget_out_budget_ignored=budget_ignored or None)
    return Law(pooled=pooled, models=fits, method=LAW_METHOD, points=typed, excluded=excluded,
               validation=validation, tasks=by_task, shared=shared, source=source)


def _rows(curves: list[Curve], trials: list[Trial]) -> list[Row]:
    """The results table's rows, a row per (model, method, ratio, budget); budgets are named when there are several."""
    grouped: dict[tuple, dict[str, Curve]] = defaultdict(dict)
    for c in curves:
        grouped[(c.model, c.method, c.ratio, c.steps)][c.task] = c
    several = len({c.steps for c in curves}) > 1
    rows = []
    for (model, method, ratio, steps), cells in grouped.items():
        mine = [t for t in trials if (t.model, t.method, t.ratio, t.steps) == (model, method, ratio, steps)]
        fractions = [t.trainable_fraction for t in mine if t.trainable_fraction is not None]
        counts = [t.trainable_params for t in mine if t.trainable_params is not None]
        rows.append(Row(model, method, ratio, sum(fractions) / len(fractions) if fractions else ratio,
                        max(counts) if counts else None, cells, steps, steps if several else None))
    order = list(METHOD_NAMES)
    return sorted(rows, key=lambda r: (r.model, r.steps or 0, r.ratio is not None, order.index(r.method)
                                       if r.method in order else len(order), r.method, -(r.ratio or 0)))


@dataclass(frozen=True)
class Effort:
    """What a group of trials cost: trials, trial-epochs and device hours (sum of their wall times)."""

    trials: int
    trial_epochs: int
    device_hours: float
    missing_wall_time: int  # trials without a wall time (still running when read)

    def __add__(self, other: Effort) -> Effort:
        return Effort(self.trials + other.trials, self.trial_epochs + other.trial_epochs,
                      self.device_hours + other.device_hours, self.missing_wall_time + other.missing_wall_time)


NO_EFFORT = Effort(0, 0, 0.0, 0)


def effort(group: list[Trial]) -> Effort:
    walls = [t.wall_time_s for t in group if t.wall_time_s is not None]
    return Effort(len(group), sum(t.epochs for t in group), sum(walls) / 3600, len(group) - len(walls))


@dataclass(frozen=True)
class StoppedEffort:
    """Trials ASHA stopped: how many, the epochs they ran and the epochs stopping them saved."""

    trials: int
    epochs_run: int
    epochs_saved: int


@dataclass(frozen=True)
class MethodEffort:
    model: str
    method: str
    steps: int | None
    effort: Effort


@dataclass(frozen=True)
class Compute:
    """A sweep's compute: its total effort, trials by status, ASHA's savings, and effort per method and budget."""

    effort: Effort
    status: dict[str, int]
    stopped: StoppedEffort
    by_method: list[MethodEffort]


def _compute(trials: list[Trial]) -> Compute:
    status: dict[str, int] = defaultdict(int)
    for t in trials:
        status[t.status] += 1
    stopped = [t for t in trials if t.status == "stopped"]
    by_method: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        by_method[(t.model, t.method, t.steps)].append(t)
    return Compute(
        effort(trials), dict(sorted(status.items())),
        StoppedEffort(len(stopped), sum(t.epochs for t in stopped),
                      sum(max((t.planned_epochs or t.epochs) - t.epochs, 0) for t in stopped)),
        [MethodEffort(m, meth, steps, effort(g))
         for (m, meth, steps), g in sorted(by_method.items(), key=lambda kv: (*kv[0][:2], kv[0][2] or 0))])


def _missing(trials: list[Trial], curves: dict[tuple, Curve], tasks: list[str]) -> list[str]:
    """Tasks without trials (a row's, among those its model ran at its budget), trials the grid implies but
    the store lacks, curves with no usable result, and best LRs at the grid's edge."""
    notes = []
    rows: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        rows[(t.model, t.method, t.ratio, t.steps)].append(t)
    several = len({t.steps for t in trials}) > 1
    for model in sorted({t.model for t in trials}):
        ran = {t.task for t in trials if t.model == model}
        notes += [f"{model} · {task}: no trial" for task in tasks if task not in ran]
    for (model, method, ratio, steps), mine in sorted(rows.items(), key=lambda kv: str(kv[0])):
        label = f"{model} · {row_label(method, ratio, steps if several else None)}"
        lrs, seeds = {t.lr for t in mine}, {t.seed for t in mine}
        have = {(t.task, t.lr, t.seed) for t in mine}
        ran = {t.task for t in mine}
        # a budget may have been swept on fewer tasks than another: only its own tasks count as absent
        model_tasks = {t.task for t in trials if t.model == model and t.steps == steps}
        absent_tasks = [task for task in tasks if task in model_tasks and task not in ran]
        if absent_tasks:
            notes.append(f"{label}: no trial for {', '.join(absent_tasks)}")
        for task in sorted(ran):
            curve = curves.get((model, task, method, ratio) + ((steps,) if several else ()))
            own = sorted({t.lr for t in mine if t.task == task and t.lr is not None})
            # a task may have run a narrower window of the grid on purpose: say so, and count holes inside it
            if own and (min(own) > min(lrs) or max(own) < max(lrs)):
                notes.append(f"{label} · {task}: LRs {fmt_lr(own[0])} – {fmt_lr(own[-1])} only "
                             f"(other tasks: {fmt_lr(min(lrs))} – {fmt_lr(max(lrs))})")
            absent = [(lr, s) for lr in sorted(lrs, key=lambda v: v or 0.0) for s in sorted(seeds)
                      if (task, lr, s) not in have and (lr is None or not own or own[0] <= lr <= own[-1])]
            if absent:
                shown = ", ".join(f"lr {fmt_lr(lr)} seed {s}" for lr, s in absent[:6])
                more = f" and {len(absent) - 6} more" if len(absent) > 6 else ""
                notes.append(f"{label} · {task}: {len(absent)} trial(s) of the grid missing ({shown}{more})")
            if curve is None or not curve.test:
                notes.append(f"{label} · {task}: no finished trial with a test metric at the best dev LR")
            if curve and curve.optimum and curve.optimum.at_edge:
                side = "largest" if curve.optimum.kind == "edge-high" else "smallest"
                notes.append(f"{label} · {task}: best dev LR {fmt_lr(curve.best_lr)} is the {side} in the grid; "
                             f"the optimum may lie beyond it (extend the grid)")
    return notes


def summarize(trials: list[Trial], experiment: str, tracking_uri: str, *, unreadable: int = 0,
              bootstrap: int = 1000, seed: int = 0) -> Summary:
    """Everything a report shows, from the experiment's trials."""
    if bootstrap < 1:
        raise RmaskError(f"bootstrap must be at least 1 resample, got {bootstrap}")
    check_has_trials(len(trials), experiment)
    trials, duplicates = _dedupe(trials)
    check_one_sweep(trials, experiment)
    notes = []
    for status, verb in (("running", "still running (or killed)"), ("interrupted", "interrupted (rerun by --resume)"),
                         ("errored", "errored")):
        some = [t for t in trials if t.status == status]
        if some:
            shown = ", ".join(f"{t.model}/{t.task}/{row_label(t.method, t.ratio)}/lr {fmt_lr(t.lr)}" for t in some[:5])
            more = " …" if len(some) > 5 else ""
            notes.append(f"{len(some)} trial(s) {verb}, not used for the results ({shown}{more})")
    if duplicates:
        notes.append(f"{duplicates} re-run trial(s) of an identical configuration: kept the newest result")
    if unreadable:
        notes.append(f"{unreadable} trial run(s) without model/task params skipped")
    usable: dict[tuple, list[Trial]] = defaultdict(list)
    several = len({t.steps for t in trials}) > 1
    for t in trials:
        if t.status in TERMINAL:
            usable[cell_key(t, several)].append(t)
    curves = {key: _curve(key, group) for key, group in usable.items()}
    _cell_statistics(curves, bootstrap, seed)
    tasks = sorted({t.task for t in trials})
    notes += _missing(trials, curves, tasks)
    law = _law(list(curves.values()), notes, bootstrap, seed)
    return Summary(experiment, tracking_uri, trials, sorted({t.model for t in trials}), tasks, curves,
                   _rows(list(curves.values()), trials), law, _compute(trials), notes)
