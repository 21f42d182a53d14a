"""The report as a list of blocks (headings, paragraphs, lists, tables, figures), written out as a
self-contained HTML page (figures inlined as base64 PNG) and as Markdown (figures beside it)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from rmask_tune.analysis.probes import PROBES_FILE
from rmask_tune.law_record import ExcludedCell, HeldOutRow, HeldOutStats, LawPoint, Validation, ValidationSummary
from rmask_tune.report.figures import SCALE
from rmask_tune.report.gaps import MethodGap
from rmask_tune.report.paper_table import SeedStats, paper_tables, seed_stats
from rmask_tune.report.summary import LAW_METHOD, Summary, fmt_lr, fmt_pct, row_label, slug
from rmask_tune.validation import summarize_validation


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    caption: str


def _mean_std(values: list[float]) -> str:
    return _stats_cell(seed_stats(values))


def _stats_cell(stats: SeedStats | None) -> str:
    """x SCALE, one decimal: ``mean ± std`` over seeds, the bare mean for one seed, — for none."""
    if stats is None:
        return "—"
    return f"{stats.mean * SCALE:.1f}" + ("" if stats.std is None else f" ± {stats.std * SCALE:.1f}")


def _count(n: int | None) -> str:
    """A parameter count as the paper writes it: 1.2M, 350K."""
    if n is None:
        return "—"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _paper_layout(summary: Summary) -> list:
    """The paper's table layout, one table per model (rmask_tune/report/paper_table.py)."""
    out: list = [("h2", "1b. In the paper's layout (its Tables 1, 4 and 5)"),
                 ("p", f"Per model: methods x tasks in the paper's order plus the average over tasks; each cell "
                       f"the test metric (x{SCALE}) at the best-dev learning rate, mean ± sample std over seeds (no ± "
                       "for one seed); Params: trainable parameters and their share of the model. † as above.")]
    for table in paper_tables(summary):
        header = ["Method", "Params"] + table.tasks + ["Avg"]
        rows = [[row.label, f"{_count(row.trainable_params)} ({fmt_pct(row.trainable_fraction)})"]
                + [_stats_cell(row.cells.get(t)) for t in table.tasks]
                + ["—" if row.average is None else
                   f"{row.average * SCALE:.1f}{'' if row.covered == len(table.tasks) else '†'}"]
                for row in table.rows]
        out += [("p", f"{table.model}:"), ("table", Table(header, rows))]
    return out


def _gaps(gaps: list[MethodGap]) -> list:
    """Random Masking minus LoRA on test, paired by seed and test example (rmask_tune/report/gaps.py)."""
    if not gaps:
        return []
    rows = [[g.model, g.task, _budget(g.steps), row_label(LAW_METHOD, g.ratio),
             f"{g.gap * SCALE:+.1f} [{g.interval[0] * SCALE:+.1f}, {g.interval[1] * SCALE:+.1f}]", str(g.seeds),
             "below LoRA" if g.interval[1] < 0 else "above LoRA" if g.interval[0] > 0 else "level (interval holds 0)"]
            for g in gaps]
    unpaired = "" if all(g.paired for g in gaps) else " Some seeds lacked per-example test results: drawn unpaired."
    return [("h2", "1c. Random Masking against LoRA"),
            ("p", f"Test metric (x{SCALE}) of Random Masking minus LoRA's, each at its best-dev LR, mean over the seeds "
                  "both ran, with a 95% bootstrap interval (seeds, dev and test examples resampled, the two sides on "
                  "the same draw: a paired difference; each side's best-dev LR is picked anew on every draw, so the "
                  f"interval carries the LR selection's noise and need not be centred on the gap).{unpaired}"),
            ("table", Table(["Model", "Task", "Budget", "Method", "Gap to LoRA [95% CI]", "Seeds", "Reading"], rows))]


def _results(summary: Summary) -> list:
    metrics = {t.task: t.metric for t in summary.trials}
    header = ["Model", "Method", "Trainable %"] + [f"{t} ({metrics.get(t, '?')})" for t in summary.tasks] + ["Avg"]
    results, lrs = [], []
    for r in summary.rows:
        avg, covered = r.average(summary.tasks)
        mark = "" if covered == len(summary.tasks) else "†"
        lead = [r.model, r.label, fmt_pct(r.trainable_fraction)]
        results.append(lead + [_mean_std(c.test) if (c := r.cells.get(t)) else "—" for t in summary.tasks]
                       + ["—" if avg is None else f"{avg * SCALE:.1f}{mark}"])
        lrs.append(lead + [_lr_cell(r.cells.get(t)) for t in summary.tasks])
    seeds = sorted({len(c.test) for c in summary.curves.values() if c.test})
    return [
        ("h2", "1. Results"),
        ("p", f"Test metric (x{SCALE}) at the learning rate with the best mean dev metric, mean ± std over seeds "
              f"({'/'.join(map(str, seeds)) or '0'} per cell). Avg is the mean over tasks; † marks an average over "
              "the tasks that have a result only."),
        ("table", Table(header, results)),
        ("p", "Best dev learning rate on the grid and, in brackets, the estimated optimum lr* "
              "(quadratic in log LR through the best point and its neighbours) with its 95% bootstrap interval; "
              "'edge' = best LR at the grid's edge."),
        ("table", Table(header[:-1], lrs)),
    ]


def _lr_cell(curve) -> str:
    if curve is None or curve.best_lr is None:
        return "—"
    if curve.optimum is None:
        return fmt_lr(curve.best_lr)
    o = curve.optimum
    extra = "edge" if o.at_edge else f"lr* {fmt_lr(o.lr)}, {fmt_lr(10 ** o.interval[0])} – {fmt_lr(10 ** o.interval[1])}"
    return f"{fmt_lr(curve.best_lr)} ({extra})"


def _sensitivity(summary: Summary, names: set[str]) -> list:
    blocks: list = [("h2", "2. Learning-rate sensitivity"),
                    ("p", "Dev metric vs learning rate, one line per ratio (baselines dashed); mean ± std over seeds. "
                          "Red crosses: diverged trials; hollow circles: stopped early by ASHA; triangles: lr*.")]
    for model in summary.models:
        name = f"lr_sensitivity_{slug(model)}.png"
        if name in names:
            blocks.append(("figure", Figure(name, f"LR sensitivity, {model}")))
    return blocks


def _fit_row(name: str, fit) -> list[str]:
    if fit is None:
        return [name, "—", "—", "—", "0", "—"]
    return [name, f"{fit.a:.3f} [{fit.a_ci[0]:.3f}, {fit.a_ci[1]:.3f}]",
            f"{fit.b:.3f} [{fit.b_ci[0]:.3f}, {fit.b_ci[1]:.3f}]",
            f"{fit.r2:.3f}", str(len(fit.points)), f"{fit.ratio_range[0]:.3g} – {fit.ratio_range[1]:.3g}"]


def _shared_rows(shared) -> list[list[str]]:
    cov = shared.cov
    return [[pair, f"{offset:.3f} ± {cov[i][i] ** 0.5:.3f}", f"{10 ** (offset + shared.b * (-3 - shared.x0)):.3g}"]
            for i, (pair, offset) in enumerate(zip(shared.pairs, shared.offsets))] + [
        ["all pairs (new task)", f"{shared.mean_offset:.3f} ± {shared.mean_offset_se:.3f}",
         f"{10 ** (shared.mean_offset + shared.b * (-3 - shared.x0)):.3g}"]]


def _law(summary: Summary, names: set[str]) -> list:
    law = summary.law
    shared = law.shared
    blocks: list = [("h2", "3. Optimal learning rate vs sparsity")]
    signal = law.source.signal_test or ""
    blocks.append(("p", f"Which cells enter (fixed in advance, docs/statistics.md): an optimum interior to the LR grid, "
                        f"and a passed signal test ({signal}). Each cell's optimum is the vertex of a quadratic in "
                        f"log10 LR through the best mean-dev LR and its neighbours; its 95% interval comes from "
                        f"{law.source.bootstrap['samples']} bootstrap resamples of seeds and dev examples."))
    if shared is None:
        blocks.append(("p", "No law: no (model, task) has cells that pass the rules at two or more ratios."))
    else:
        lo, hi = shared.b_ci
        blocks += [
            ("p", f"The law `recommend` uses: log10 lr* = offset[model/task] + b · (log10 ratio - {shared.x0:.2f}), "
                  f"one exponent b shared by every (model, task) pair, weights 1/(se² + τ²). b = {shared.b:.3f} "
                  f"[95% CI {lo:.3f}, {hi:.3f}] over {len(shared.points)} optima of {len(shared.pairs)} pair(s); "
                  f"τ (scatter around a pair's line beyond the optima's errors) = {shared.tau:.3f} decades; "
                  "spread of the offsets between pairs = "
                  + ("unknown (one pair)" if shared.between_sd is None else f"{shared.between_sd:.3f} decades")
                  + ". b < 0: the sparser the mask, the larger the optimal LR. law.json beside this report holds it; "
                    "`rmask-tune recommend --law law.json --ratio R --model M --task T` uses it."),
            ("table", Table(["Pair", "Offset (log10, ± se)", "lr* at ratio 1e-3"], _shared_rows(shared))),
        ]
        blocks += _budget_term(shared)
    blocks += _optima_by_budget(law)
    several = len({name.rsplit("/", 1)[1] for name in law.tasks}) > 1  # keys are model/task; a hub model has a '/'
    per_task = [_fit_row(" · ".join(name.rsplit("/", 1)), f) for name, f in sorted(law.tasks.items())] if several else []
    blocks += [
        ("p", "For comparison, single lines log10 lr* = a + b · log10(ratio) fitted per model, per task and pooled "
              "(weights 1/se², bootstrap intervals): whether the pairs agree."),
        ("table", Table(["Fit", "a [95% CI]", "b [95% CI]", "R²", "Points", "Ratio range"],
                        [_fit_row(m, f) for m, f in sorted(law.models.items())] + per_task
                        + [_fit_row("pooled", law.pooled)])),
    ]
    if "law.png" in names:
        caption = "Optimal LR vs trainable ratio: optima with their 95% bootstrap intervals and each pair's line"
        blocks.append(("figure", Figure("law.png", caption)))
    rows = [_point_row(p, "yes") for p in law.points]
    rows += [_point_row(e.point, f"no: {e.reason}") if e.point else _cell_row(e) for e in law.excluded]
    if rows:
        header = ["Model", "Task", "Ratio", "lr*", "95% interval", "Estimate", "Best grid LR", "Signal p",
                  "Resampled", "Fitted"]
        blocks.append(("table", Table(header, rows)))
    return blocks + _validation(law) + _hessian_predictor(law)


def _budget_term(shared) -> list:
    """The budget term's paragraph (a law fitted at two or more budgets)."""
    if shared.g is None:
        return []
    lo, hi = shared.g_ci
    change = ("cannot be estimated here (it needs two or more ratios at two or more budgets, and a degree of "
              "freedom left)" if shared.b_change is None else
              f"{shared.b_change:+.3f} [95% CI {shared.b_change_ci[0]:.3f}, {shared.b_change_ci[1]:.3f}] per decade "
              "of steps: " + ("the interval excludes 0, b changes with the budget"
                              if not shared.b_change_ci[0] <= 0 <= shared.b_change_ci[1] else
                              "the interval holds 0, no evidence that b changes with the budget"))
    return [("p", f"Budget term: + g · (log10 steps - {shared.s0:.2f}), one exponent g shared by every pair, fitted "
                  f"on optima at {shared.steps_range[0]} – {shared.steps_range[1]} optimizer steps. g = {shared.g:.3f} "
                  f"[95% CI {lo:.3f}, {hi:.3f}]: lr* ∝ steps^g. Whether b depends on the budget (the law refitted "
                  f"with an interaction term (log10 ratio - x0)(log10 steps - s0), docs/statistics.md): b changes by "
                  f"{change}. `rmask-tune recommend --steps N` uses the budget term.")]


def _optima_by_budget(law) -> list:
    """The optima against ratio, a column per budget (a law with cells at two or more budgets)."""
    cells = [(p, "") for p in law.points] + [(e.point, " (excluded)") for e in law.excluded if e.point is not None]
    budgets = sorted({p.steps for p, _ in cells if p.steps is not None})
    if len(budgets) < 2:
        return []
    found = {(p.model, p.task, p.ratio, p.steps): f"{fmt_lr(p.lr)} [{fmt_lr(p.interval[0])} – "
             f"{fmt_lr(p.interval[1])}]{mark}" if p.interval else fmt_lr(p.lr) + mark for p, mark in cells}
    rows = [[model, task, f"{ratio:.3g}"] + [found.get((model, task, ratio, steps), "—") for steps in budgets]
            for model, task, ratio in sorted({(p.model, p.task, p.ratio) for p, _ in cells})]
    return [("p", "The optima against ratio at each training budget (lr* with its 95% interval; excluded: the cell "
                  "failed the rules above and is not in the fit)."),
            ("table", Table(["Model", "Task", "Ratio"] + [f"{steps} steps" for steps in budgets], rows))]


def _point_row(p: LawPoint, fitted: str) -> list[str]:
    interval, signal = p.interval, p.signal
    return [p.model, p.task, f"{p.ratio:.3g}", fmt_lr(p.lr),
            f"{fmt_lr(interval[0])} – {fmt_lr(interval[1])}" if interval else "—", p.estimate or "—",
            fmt_lr(p.best_grid_lr), f"{signal['p_value']:.3f}" if signal else "—", p.resampled or "—", fitted]


def _cell_row(e: ExcludedCell) -> list[str]:
    """An excluded cell without an estimate."""
    return [e.model, e.task, f"{e.ratio:.3g}", "—", "—", "—", "—", "—", "—", f"no: {e.reason}"]


def _validation(law) -> list:
    validation = law.validation or Validation([], [], {})
    blocks: list = [("h2", "3b. Validation: how far the law's LR lands on cells it did not see"),
                    ("p", "Leave-one-task-out: each (model, task) is hidden, the law refitted, and its cells predicted as "
                          "a new task: the mean offset of the model's other tasks, or, for a model with no other task in "
                          "the law, of the other models' tasks (a prediction across model families; column From). "
                          "Leave-one-ratio-out: every pair's cell at "
                          "one ratio is hidden and predicted from the pair's own offset. Error: distance from the best "
                          "grid LR in half-decade grid steps. Regret: the measured mean dev curve's best value minus its "
                          f"value at the predicted LR (x{SCALE}; linear in log LR between grid points, beyond the grid "
                          "the nearest end, marked *). Every held-out cell with a measured curve is scored; In law: "
                          "whether the cell passed the rules of section 3 (on a cell without signal the best grid LR, "
                          "and so the error, is noise), and each summary also gives the mean over those cells.")]
    splits = [("leave_one_task_out", "Leave-one-task-out"), ("leave_one_ratio_out", "Leave-one-ratio-out")]
    if validation.leave_one_budget_out is not None:
        blocks.append(("p", "Leave-one-budget-out: every optimum at one training budget is hidden, the law refitted on "
                            "the other budgets (the held-out budget's optima are out of the fit), and the hidden "
                            "budget's cells predicted from each pair's own offset, the shared exponent and the budget "
                            "term fitted on the other budgets; with one other budget no budget term can be fitted, "
                            "and the prediction is that budget's law as it is (column From)."))
        splits.append(("leave_one_budget_out", "Leave-one-budget-out"))
    for key, title in splits:
        rows = getattr(validation, key)
        overall = validation.summary.get(key)
        if not rows:
            blocks.append(("p", f"{title}: not possible here (it needs the law refitted without the held-out cells)."))
            continue
        blocks.append(("p", f"{title}: {_held_out_summary(overall)}."))
        summary = validation.summary
        for split, name in _LOTO_SPLITS if key == "leave_one_task_out" else ():
            if summary.get(split):
                blocks.append(("p", f"{title}, {name}: {_held_out_summary(summary[split])}."))
        source = key in ("leave_one_task_out", "leave_one_budget_out")
        budget = key == "leave_one_budget_out" or len({r.steps for r in rows}) > 1
        blocks.append(("table", Table(["Model", "Task", "Ratio"] + (["Steps"] if budget else []) + _HELD_OUT_HEADER
                                      + (["From"] if source else []),
                                      [[r.model, r.task, f"{r.ratio:.3g}"]
                                       + (["—" if r.steps is None else str(r.steps)] if budget else [])
                                       + _held_out_cells(r) + ([r.source] if source else []) for r in rows])))
    return blocks + _budget_ignored(validation)


def _budget_ignored(validation: Validation) -> list:
    """Leave-one-budget-out against its baseline, the other budgets' optima in one law with the budget ignored."""
    ignored = validation.leave_one_budget_out_budget_ignored
    if not ignored:
        return []
    with_term = validation.leave_one_budget_out or []

    def score(rows: list[HeldOutRow]) -> str:
        stats = summarize_validation(rows)
        if stats is None:
            return "—"
        return (f"{stats.mean_error_steps:.2f} / {stats.max_error_steps:.2f} steps, "
                f"{stats.mean_regret:.1f} / {stats.max_regret:.1f} points")

    held = sorted({r.steps for r in ignored})
    return [("p", "Leave-one-budget-out against a law that ignores the budget (the baseline the budget term has to "
                  "beat): the same held-out budgets predicted from each pair's own offset over the other budgets' "
                  "optima in one law, without a budget term: "
                  f"{_held_out_summary(validation.summary['leave_one_budget_out_budget_ignored'])}. "
                  "Per held-out budget, error and regret as mean / worst:"),
            ("table", Table(["Held-out budget", "With the budget term", "Budget ignored"],
                            [[f"{steps} steps", score([r for r in with_term if r.steps == steps]),
                              score([r for r in ignored if r.steps == steps])] for steps in held]))]


_LOTO_SPLITS = (("leave_one_task_out_within_model", "from the same model's other tasks"),
                ("leave_one_task_out_across_models", "from other models (a model with one task in the law)"))
_HELD_OUT_HEADER = ["Predicted LR", "Best grid LR", "Error (steps)", "Regret (points)", "In law"]


def _held_out_cells(row: HeldOutRow) -> list[str]:
    return [fmt_lr(row.predicted_lr) + ("*" if row.beyond_grid else ""), fmt_lr(row.best_grid_lr),
            f"{row.error_steps:.2f}", f"{row.regret:.1f}", "yes" if row.in_law else "no"]


def _held_out_summary(overall: ValidationSummary) -> str:
    law_cells = overall.law_cells
    return (f"{overall.cells} cell(s); {_mean_and_worst(overall)}"
            + (f" (the {law_cells.cells} in the law: {_mean_and_worst(law_cells)})" if law_cells else ""))


def _mean_and_worst(summary: HeldOutStats) -> str:
    return (f"error mean {summary.mean_error_steps:.2f}, worst "
            f"{summary.max_error_steps:.2f} grid steps; regret mean {summary.mean_regret:.1f}, worst "
            f"{summary.max_regret:.1f} points")


def _hessian_predictor(law) -> list:
    """Section 3c: lr = c / lambda_max, calibrated from the report folder's probes.json, on held-out tasks."""
    validation = law.validation or Validation([], [], {})
    predictor = validation.hessian_predictor
    calibration = law.probe_calibration
    blocks: list = [("h2", "3c. The a-priori Hessian predictor")]
    if predictor is None:
        return blocks + [("p", "Not calibrated: `rmask-tune analyze calibrate --law law.json` on this report's "
                               "law.json probes the top Hessian eigenvalue at its optima into probes.json beside it, "
                               "from which a re-run report (same --out) builds this section.")]
    if calibration is None:
        return blocks + [("p", f"None of the {predictor.probes} probe(s) in {PROBES_FILE} is at one of the law's "
                               f"optima: nothing to calibrate c on (`rmask-tune analyze calibrate --law law.json` "
                               "probes them).")]
    left_out = [f"{n} {what}" for n, what in ((calibration.points_without_probe, "optimum(s) without a probe"),
                                              (calibration.probes_with_other_settings, "probe(s) with other settings"))
                if n]
    settings = ", ".join(f"{k} {v}" for k, v in calibration.probe.items())
    blocks += [
        ("p", f"lr = c / lambda_max, lambda_max the top eigenvalue of the training loss's Hessian over the trainable "
              f"values at initialization ({PROBES_FILE} beside this report; probe: {settings}). "
              f"c = {calibration.c:.4g}, the geometric mean of lr* · lambda_max over the {calibration.n} "
              f"optima below (their log10 spread {calibration.log10_sd:.2f} decades"
              + (f"; left out: {', '.join(left_out)}" if left_out else "")
              + "). law.json's probe_calibration holds it for `rmask-tune recommend --probe`."),
        ("table", Table(["Model", "Task", "Ratio", "lr*", "lambda_max", "lr* · lambda_max"],
                        [[p.model, p.task, f"{p.ratio:.3g}", fmt_lr(p.lr), f"{p.lambda_max:.4g}",
                          f"{p.lr * p.lambda_max:.3g}"] for p in calibration.points])),
    ]
    rows, overall = predictor.rows, validation.summary["hessian_predictor"]
    if predictor.held_out:
        how = ("Leave-one-task-out: each (model, task) is hidden, c refitted on the optima of every other (model, "
               "task), of all models (the predictor is meant for models no sweep has seen, so unlike the law's it "
               "also learns from other models), and the pair's probed cells predicted as c / lambda_max; error and "
               "regret as in 3b.")
    else:
        how = ("Leave-one-task-out is not possible: the probes at the law's optima cover one (model, task) only. "
               "In-sample instead (c fitted on these same optima), which flatters the predictor; error and regret "
               "as in 3b.")
    if not rows:
        return blocks + [("p", f"{how} No probed cell has a measured curve of two or more LRs.")]
    law_overall = validation.summary.get("leave_one_task_out")
    versus = (f"the law's leave-one-task-out (3b): {_held_out_summary(law_overall)}" if law_overall
              else "the law has no leave-one-task-out here")
    blocks += [("p", f"{how} Hessian predictor: {_held_out_summary(overall)}; {versus}."), _predictor_table(rows)]
    by_model = calibration.c_by_model or {}
    if len(by_model) < 2:
        return blocks
    within, within_overall = predictor.within_model_rows, validation.summary.get("hessian_predictor_within_model")
    per_model = ", ".join(f"{model} {c:.4g}" for model, c in by_model.items())
    blocks.append(("p", f"c fitted on each model's optima alone: {per_model}. With c from the same model's other "
                        "tasks only (what a model family already swept on other tasks gives; not the a-priori case): "
                        + (f"{_held_out_summary(within_overall)}." if within else "no model has two tasks.")))
    return blocks + ([_predictor_table(within)] if within else [])


def _predictor_table(rows: list[HeldOutRow]):
    return ("table", Table(["Model", "Task", "Ratio", "c used", "lambda_max"] + _HELD_OUT_HEADER,
                           [[r.model, r.task, f"{r.ratio:.3g}", f"{r.c:.4g}", f"{r.lambda_max:.4g}"]
                            + _held_out_cells(r) for r in rows]))


def _compute(summary: Summary) -> list:
    c = summary.compute
    total, stopped = c.effort, c.stopped
    statuses = ", ".join(f"{n} {s}" for s, n in c.status.items())
    budget = ["Budget"] if len({g.steps for g in c.by_method}) > 1 else []
    blocks = [
        ("h2", "5. Compute"),
        ("table", Table(["Trials", "Trial-epochs", "Device hours", "Stopped early (ASHA)",
                         "Epochs run by stopped trials", "Epochs saved by stopping"],
                        [[str(total.trials), str(total.trial_epochs), f"{total.device_hours:.3f}", str(stopped.trials),
                          str(stopped.epochs_run), str(stopped.epochs_saved)]])),
        ("p", f"Trials by status: {statuses}. Device hours = sum of the trials' wall times."
              + (f" {total.missing_wall_time} trial(s) have no wall time yet." if total.missing_wall_time else "")),
        ("table", Table(["Model", "Method", *budget, "Trials", "Trial-epochs", "Device hours"],
                        [[g.model, row_label(g.method, None), *([_budget(g.steps)] if budget else []),
                          str(g.effort.trials), str(g.effort.trial_epochs), f"{g.effort.device_hours:.3f}"]
                         for g in c.by_method])),
    ]
    return blocks


def _budget(steps: int | None) -> str:
    return "—" if steps is None else f"{steps} steps"


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value * SCALE:.1f}"


def _versus(summary: Summary, other: Summary) -> list:
    from rmask_tune.report.compare import compare, totals

    cells = compare(summary, other)
    head = [("h2", f"6. Against \"{other.experiment}\"")]
    if not cells:
        return head + [("p", "The two sweeps share no (model, task, method, ratio) cell: nothing to compare.")]
    rows = [[model, task, row_label(method, ratio), f"{c.ours.cost.trials} / {c.theirs.cost.trials}",
             f"{c.ours.cost.trial_epochs} / {c.theirs.cost.trial_epochs}", f"{fmt_lr(c.ours.best_lr)} / {fmt_lr(c.theirs.best_lr)}",
             f"{_points(c.ours.test)} / {_points(c.theirs.test)}", "—" if c.gap is None else f"{c.gap * SCALE:+.1f}"]
            for c in cells for model, task, method, ratio, *_ in [c.key]]
    t = totals(cells)
    ours, theirs = t.ours, t.theirs
    share = f" ({ours.trials / theirs.trials:.0%} of its trials)" if theirs.trials else ""
    gap = ("no cell has a test result on both sides" if t.mean_gap is None else
           f"test gap over the {t.compared} cell(s) with both results: mean {t.mean_gap * SCALE:+.1f}, "
           f"worst {t.worst_gap * SCALE:+.1f} points")
    return head + [
        ("p", f"On the {t.cells} cell(s) both sweeps ran, this sweep used {ours.trials} trials, "
              f"{ours.trial_epochs} trial-epochs and {ours.device_hours:.3f} device hours against {theirs.trials}, "
              f"{theirs.trial_epochs} and {theirs.device_hours:.3f} for \"{other.experiment}\"{share}; {gap}. "
              f"Each cell: this sweep / the other; test at the best-dev LR (x{SCALE}); gap = this minus the other."),
        ("table", Table(["Model", "Task", "Method", "Trials", "Trial-epochs", "Best dev LR", "Test", "Gap"], rows)),
    ]


def blocks(summary: Summary, names: set[str], gaps: list[MethodGap], versus: Summary | None = None) -> list:
    """The whole report, in order; ``gaps``: Random Masking against LoRA; with ``versus``, a last section comparing
    the two sweeps' shared cells."""
    out: list = [("p", f"Experiment \"{summary.experiment}\" in {summary.tracking_uri}: {len(summary.trials)} trials, "
                       f"{len(summary.models)} model(s), {len(summary.tasks)} task(s).")]
    out += [("h2", "What is missing or partial"),
            ("list", summary.notes) if summary.notes else ("p", "Nothing: every trial of the grid has a result.")]
    out += _results(summary) + _paper_layout(summary) + _gaps(gaps) + _sensitivity(summary, names) + _law(summary, names)
    out.append(("h2", "4. Trainable parameters vs performance"))
    if "params_vs_performance.png" in names:
        out.append(("figure", Figure("params_vs_performance.png", "Average test metric vs trainable parameters")))
    else:
        out.append(("p", "No row has a test result yet."))
    return out + _compute(summary) + (_versus(summary, versus) if versus is not None else [])


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#eef2f7}td:first-child,td:nth-child(2),th{text-align:left}img{max-width:100%;border:1px solid #eee}
li{margin:.2em 0}figcaption{color:#555;font-size:13px}"""


def to_html(title: str, content: list, pngs: dict[str, bytes]) -> str:
    """A standalone HTML page: every figure embedded as a base64 data URI."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for block in content:
        kind, body = block
        if kind in ("h2", "p"):
            parts.append(f"<{kind}>{html.escape(body)}</{kind}>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in body) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in body.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode(pngs[body.name]).decode()
            parts.append(f"<figure><img alt=\"{html.escape(body.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{html.escape(body.caption)}</figcaption></figure>")
    return "".join(parts) + "</body></html>\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(title: str, content: list) -> str:
    """The same report as Markdown, linking the PNG files beside it."""
    lines = [f"# {title}", ""]
    for kind, body in content:
        if kind == "h2":
            lines += [f"## {body}", ""]
        elif kind == "p":
            lines += [body, ""]
        elif kind == "list":
            lines += [f"- {item}" for item in body] + [""]
        elif kind == "table":
            lines.append("| " + " | ".join(map(_md_cell, body.header)) + " |")
            lines.append("|" + "---|" * len(body.header))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in body.rows]
            lines.append("")
        else:
            lines += [f"![{body.caption}]({body.name})", ""]
    return "\n".join(lines)
