"""How good the law's recommendations are on data it did not see: leave-one-task-out, leave-one-ratio-out and
(optima at two or more training budgets) leave-one-budget-out.

For each held-out cell the law is refitted without it, and its predicted LR is compared with the cell's
measured curve (mean dev metric over seeds at each grid LR):

- error: ``|log10 predicted - log10 best grid LR|`` in half-decade grid steps;
- regret: the curve's best value minus its value at the predicted LR (linear in log10 LR between grid
  points; a prediction beyond the grid takes the nearest end's value and is flagged). In metric points x 100.

Every held-out cell with a measured curve is scored, since a user cannot tell in advance which cells of a new
task will carry no signal; each row says whether its cell is one of the law's points (``in_law``: it passed the
rules of docs/statistics.md), and the summary gives both means, because on a cell without signal the "best
grid LR" is noise and so is the error in steps.

Leave-one-task-out hides a whole (model, task) pair and predicts it as a new task (the mean offset of the
model's other pairs, or of all pairs when the model has no other); a pair none of whose cells entered the law
is scored the same way, from the whole law. Leave-one-ratio-out hides every pair's
point at one ratio and predicts each pair from its own offset. Leave-one-budget-out hides every optimum at one
budget (optimizer steps) and predicts that budget's cells from each pair's own offset, the shared exponent and, when
the other budgets are two or more, the budget exponent g fitted on them; with one other budget g cannot be fitted,
and the prediction is that budget's law as it is (what a law fitted at one budget tells a run of another). With three
or more budgets a baseline ignores the budget: the other budgets' optima in one law without a budget term. The
held-out budget's optima never enter the fit they are scored against. Curves are keyed
``(model, task, ratio, steps)`` (or ``(model, task, ratio)``: no budget); the points carry their ``steps``. The a-priori Hessian predictor
``lr = c / lambda_max`` is held out the same way: each pair hidden, ``c`` refitted on every other pair's optima.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from rmask_tune.analysis.predict import calibrate
from rmask_tune.errors import RmaskError
from rmask_tune.law import fit_shared, offset_spread, point_budgets
from rmask_tune.law_record import HeldOutRow, HeldOutStats, LawPoint, ValidationSummary

GRID_STEP = 0.5  # decades
Curves = dict[tuple, tuple[list[float], list[float]]]  # (model, task, ratio[, steps]) -> (LRs, mean dev metric)


def _cells(points: list[LawPoint]) -> set[tuple]:
    return {(p.model, p.task, p.ratio, p.steps) for p in points}


def _probe_pair(entry: dict) -> str:
    """A calibration pair's or a probe's (model, task), as ``"model/task"``."""
    return f"{entry['model']}/{entry['task']}"


def _score(predicted_log10: float, lrs: list[float], means: list[float]) -> dict:
    """Error in grid steps and regret (points) of training at 10**predicted_log10 on a measured curve (a
    ``HeldOutRow``'s score fields)."""
    x = np.log10(lrs)
    y = np.asarray(means, dtype=float)
    best = int(np.argmax(y))
    outside = not x[0] <= predicted_log10 <= x[-1]
    at = float(np.interp(predicted_log10, x, y))
    return {"predicted_lr": 10.0**predicted_log10, "best_grid_lr": float(lrs[best]),
            "error_steps": abs(predicted_log10 - x[best]) / GRID_STEP, "regret": 100 * (float(y[best]) - at),
            "beyond_grid": outside}


# Where leave-one-task-out takes a held-out pair's offset from: the mean of its model's other pairs, or, for a
# model with no other task in the law, the mean of every other pair (a prediction across model families).
WITHIN_MODEL = "mean offset of the model's other tasks"
ACROSS_MODELS = "mean offset of the other models' tasks"


def leave_one_task_out(points: list[LawPoint], curves: Curves) -> list[HeldOutRow]:
    """One row per held-out cell: ``curves[(model, task, ratio, steps)] = (lrs, mean dev metric)``. A pair with curves
    but no point in the law (every cell failed its rules) is held out too, predicted from the whole law."""
    rows, in_law = [], _cells(points)
    for held in sorted({p.pair for p in points} | {f"{m}/{task}" for (m, task, _, _), _ in _measured(curves)}):
        rest = [p for p in points if p.pair != held]
        try:
            fit = fit_shared(rest)
        except RmaskError:
            continue
        model = held.split("/", 1)[0]
        own = [i for i, pair in enumerate(fit.pairs) if pair.split("/", 1)[0] == model]
        mine, source = (own, WITHIN_MODEL) if own else (range(len(fit.pairs)), ACROSS_MODELS)
        cov = np.asarray(fit.cov)
        offset, _, _ = offset_spread(np.asarray(fit.offsets)[mine], cov.diagonal()[mine])
        for (m, task, ratio, steps), (lrs, means) in _measured(curves):
            if f"{m}/{task}" != held or len(lrs) < 2:
                continue
            rows.append(HeldOutRow(m, task, ratio, steps=steps, source=source, in_law=(m, task, ratio, steps) in in_law,
                                   **_score(fit.centre(offset, ratio, steps), lrs, means)))
    return rows


def leave_one_ratio_out(points: list[LawPoint], curves: Curves) -> list[HeldOutRow]:
    """One row per held-out cell: every pair's point at one ratio hidden at a time, predicted from its own offset."""
    rows, in_law = [], _cells(points)
    for ratio in sorted({p.ratio for p in points}):
        rest = [p for p in points if p.ratio != ratio]
        try:
            fit = fit_shared(rest)
        except RmaskError:
            continue
        for (m, task, r, steps), (lrs, means) in _measured(curves):
            pair = f"{m}/{task}"
            if r != ratio or pair not in fit.pairs or len(lrs) < 2:
                continue
            predicted = fit.centre(fit.offsets[fit.pairs.index(pair)], ratio, steps)
            rows.append(HeldOutRow(m, task, ratio, steps=steps, source="own offset, other ratios",
                                   in_law=(m, task, r, steps) in in_law, **_score(predicted, lrs, means)))
    return rows


# Where leave-one-budget-out's prediction comes from: with a budget term fitted on the other budgets, or, with one
# other budget, that budget's law unchanged; the baseline ignores the budget (the other budgets' optima in one law).
BUDGET_TERM = "own offset, budget term fitted on the other budgets"
NO_BUDGET_TERM = "own offset at the other budget (one budget left: no budget term)"
BUDGET_IGNORED = "own offset over the other budgets' optima, the budget ignored"


def leave_one_budget_out(points: list[LawPoint], curves: Curves, *, budget_term: bool = True) -> list[HeldOutRow]:
    """One row per held-out cell: every optimum at one budget hidden at a time, that budget's cells predicted from
    the law refitted on the other budgets only (empty unless every point has a budget and there are two or more).
    ``budget_term=False`` is the baseline the budget term has to beat: the other budgets' optima fitted as if they
    were one budget (empty with fewer than three budgets, where it is the budget term's own prediction)."""
    budgets = point_budgets(points)
    if budgets is None or len(budgets) < (2 if budget_term else 3):
        return []
    rows, in_law = [], _cells(points)
    for held in budgets:
        rest = [p if budget_term else replace(p, steps=None) for p in points if p.steps != held]
        try:
            fit = fit_shared(rest)
        except RmaskError:
            continue
        source = BUDGET_IGNORED if not budget_term else NO_BUDGET_TERM if fit.g is None else BUDGET_TERM
        for (m, task, ratio, steps), (lrs, means) in _measured(curves):
            pair = f"{m}/{task}"
            if steps != held or pair not in fit.pairs or len(lrs) < 2:
                continue
            predicted = fit.centre(fit.offsets[fit.pairs.index(pair)], ratio, steps)
            rows.append(HeldOutRow(m, task, ratio, steps=steps, source=source, in_law=(m, task, ratio, steps) in in_law,
                                   **_score(predicted, lrs, means)))
    return rows


def _measured(curves: dict[tuple, tuple]) -> list[tuple[tuple, tuple]]:
    """The curves as ``((model, task, ratio, steps), (lrs, means))`` in that order (a key without steps: None)."""
    keyed = [((*key, None)[:4], curve) for key, curve in curves.items()]
    return sorted(keyed, key=lambda item: (*item[0][:3], item[0][3] or 0))


def _curve_of(curves: dict, model: str, task: str, ratio: float) -> tuple[list[float], list[float]]:
    """The curve of (model, task, ratio) at its one budget (none: empty; several: the one at the most steps)."""
    found = [key for key in curves if key[:3] == (model, task, ratio)]
    return curves[max(found, key=lambda key: key[3] or 0)] if found else ([], [])


def probe_leave_one_task_out(
    calibration: list[dict], probed: list[dict], curves: Curves,
    within_model: bool = False,
) -> tuple[list[HeldOutRow], bool]:
    """Rows for ``lr = c / lambda_max`` on the ``probed`` cells (``model``, ``task``, ``ratio``, ``lambda_max``)
    with a curve, and whether they are held out. Held out: ``c`` refitted on the ``calibration`` pairs
    (``lambda_max``, ``lr``) of every other (model, task), of all models (the predictor is meant for models
    no sweep has seen). With calibration pairs of one (model, task) only that is impossible, and the rows are
    in-sample (``c`` from all of them). ``within_model``: ``c`` from the same model's other tasks only (what a
    model family already swept on other tasks gives); cells whose model has no other task are left out."""
    held_out = len({_probe_pair(p) for p in calibration}) > 1
    rows, in_law = [], {(p["model"], p["task"], p["ratio"]) for p in calibration}
    if within_model and not held_out:
        return rows, held_out
    for probe in sorted(probed, key=lambda p: (p["model"], p["task"], p["ratio"])):
        lrs, means = _curve_of(curves, probe["model"], probe["task"], probe["ratio"])
        if len(lrs) < 2:
            continue
        fit_on = [p for p in calibration if not held_out or _probe_pair(p) != _probe_pair(probe)]
        if within_model:
            fit_on = [p for p in fit_on if p["model"] == probe["model"]]
            if not fit_on:
                continue
        c = calibrate((p["lambda_max"], p["lr"]) for p in fit_on)
        source = "c of the same model's other tasks" if within_model else "c of the other tasks' optima"
        rows.append(HeldOutRow(probe["model"], probe["task"], probe["ratio"], source=source if held_out else "c in-sample",
                               c=c, lambda_max=probe["lambda_max"],
                               in_law=(probe["model"], probe["task"], probe["ratio"]) in in_law,
                               **_score(math.log10(c / probe["lambda_max"]), lrs, means)))
    return rows, held_out


def summarize_validation(rows: list[HeldOutRow]) -> ValidationSummary | None:
    """Mean and worst error (grid steps) and regret (points) over the rows, and (``law_cells``) over the rows
    whose cell is one of the law's points."""
    summary = _summary(rows)
    if summary is None:
        return None
    law_cells = _summary([r for r in rows if r.in_law])
    return ValidationSummary(**summary, law_cells=None if law_cells is None else HeldOutStats(**law_cells))


def summarize_by_source(rows: list[HeldOutRow]) -> dict[str, ValidationSummary | None]:
    """Leave-one-task-out summaries within a model and across models, when the rows hold both kinds."""
    within = [r for r in rows if r.source == WITHIN_MODEL]
    across = [r for r in rows if r.source == ACROSS_MODELS]
    if not (within and across):
        return {}
    return {"leave_one_task_out_within_model": summarize_validation(within),
            "leave_one_task_out_across_models": summarize_validation(across)}


def _summary(rows: list[HeldOutRow]) -> dict | None:
    if not rows:
        return None
    errors = [r.error_steps for r in rows]
    regrets = [r.regret for r in rows]
    return {"cells": len(rows), "mean_error_steps": float(np.mean(errors)), "max_error_steps": float(max(errors)),
            "mean_regret": float(np.mean(regrets)), "max_regret": float(max(regrets)),
            "beyond_grid": sum(r.beyond_grid for r in rows)}
