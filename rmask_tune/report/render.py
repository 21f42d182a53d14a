"""The report as a list of blocks (headings, paragraphs, lists, tables, figures), written out as a
self-contained HTML page (figures inlined as base64 PNG) and as Markdown (figures beside it)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

from rmask_tune.report.figures import SCALE
from rmask_tune.report.summary import LAW_METHOD, Summary, fmt_lr, fmt_pct, row_label, slug


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    caption: str


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values) * SCALE
    if len(values) == 1:
        return f"{mean:.1f}"
    std = math.sqrt(sum((v * SCALE - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f}"


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
              "(quadratic in log LR through the best point and its neighbours; 'edge' = best LR at the grid's edge)."),
        ("table", Table(header[:-1], lrs)),
    ]


def _lr_cell(curve) -> str:
    if curve is None or curve.best_lr is None:
        return "—"
    if curve.optimum is None:
        return fmt_lr(curve.best_lr)
    extra = "edge" if curve.optimum.at_edge else f"lr* {fmt_lr(curve.optimum.lr)}"
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


def _law(summary: Summary, names: set[str]) -> list:
    law = summary.law
    # one task's own fit repeats its model's; with several tasks they show whether the tasks agree
    several = len({name.rsplit("/", 1)[1] for name in law.tasks}) > 1  # keys are model/task; a hub model has a '/'
    per_task = [_fit_row(" · ".join(name.rsplit("/", 1)), f) for name, f in sorted(law.tasks.items())] if several else []
    blocks: list = [
        ("h2", "3. Optimal learning rate vs sparsity"),
        ("p", f"log10 lr* = a + b · log10(ratio), fitted by weighted least squares (weights 1/se²) over the "
              f"{row_label(LAW_METHOD, None)} optima interior to their grid; 95% intervals from "
              f"{law.data['bootstrap']['samples']} seeded bootstrap resamples. b < 0: the sparser the mask, the "
              "larger the optimal LR. law.json beside this report holds it; "
              "`rmask-tune recommend --law law.json --ratio R` uses it."),
        ("table", Table(["Fit", "a [95% CI]", "b [95% CI]", "R²", "Points", "Ratio range"],
                        [_fit_row(m, f) for m, f in sorted(law.models.items())] + per_task
                        + [_fit_row("pooled", law.pooled)])),
    ]
    if "law.png" in names:
        caption = "Optimal LR vs trainable ratio with the fitted line and its 95% band"
        blocks.append(("figure", Figure("law.png", caption)))
    rows = [[p["model"], p["task"], f"{p['ratio']:.3g}", fmt_lr(p["lr"]), f"×/÷ {10 ** (1.96 * p['se']):.2f}",
             p["estimate"], fmt_lr(p["best_grid_lr"]), "yes"] for p in law.data["points"]]
    rows += [[e["model"], e["task"], f"{e['ratio']:.3g}", fmt_lr(e.get("lr")), "—", e.get("estimate", "—"),
              fmt_lr(e.get("best_grid_lr")), f"no: {e['reason']}"] for e in law.data["excluded"]]
    if rows:
        header = ["Model", "Task", "Ratio", "lr*", "95%", "Estimate", "Best grid LR", "Fitted"]
        blocks.append(("table", Table(header, rows)))
    return blocks


def _compute(summary: Summary) -> list:
    c = summary.compute
    stopped = c["stopped"]
    statuses = ", ".join(f"{n} {s}" for s, n in c["status"].items())
    blocks = [
        ("h2", "5. Compute"),
        ("table", Table(["Trials", "Trial-epochs", "Device hours", "Stopped early (ASHA)",
                         "Epochs run by stopped trials", "Epochs saved by stopping"],
                        [[str(c["trials"]), str(c["trial_epochs"]), f"{c['device_hours']:.3f}", str(stopped["trials"]),
                          str(stopped["epochs_run"]), str(stopped["epochs_saved"])]])),
        ("p", f"Trials by status: {statuses}. Device hours = sum of the trials' wall times."
              + (f" {c['missing_wall_time']} trial(s) have no wall time yet." if c["missing_wall_time"] else "")),
        ("table", Table(["Model", "Method", "Trials", "Trial-epochs", "Device hours"],
                        [[g["model"], row_label(g["method"], None), str(g["trials"]), str(g["trial_epochs"]),
                          f"{g['device_hours']:.3f}"] for g in c["by_method"]])),
    ]
    return blocks


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value * SCALE:.1f}"


def _versus(summary: Summary, other: Summary) -> list:
    from rmask_tune.report.compare import compare, totals

    cells = compare(summary, other)
    head = [("h2", f"6. Against \"{other.experiment}\"")]
    if not cells:
        return head + [("p", "The two sweeps share no (model, task, method, ratio) cell: nothing to compare.")]
    rows = [[model, task, row_label(method, ratio), f"{c.ours.trials} / {c.theirs.trials}",
             f"{c.ours.trial_epochs} / {c.theirs.trial_epochs}", f"{fmt_lr(c.ours.best_lr)} / {fmt_lr(c.theirs.best_lr)}",
             f"{_points(c.ours.test)} / {_points(c.theirs.test)}", "—" if c.gap is None else f"{c.gap * SCALE:+.1f}"]
            for c in cells for model, task, method, ratio in [c.key]]
    t = totals(cells)
    ours, theirs = t["ours"], t["theirs"]
    share = f" ({ours['trials'] / theirs['trials']:.0%} of its trials)" if theirs["trials"] else ""
    gap = ("no cell has a test result on both sides" if t["mean_gap"] is None else
           f"test gap over the {t['compared']} cell(s) with both results: mean {t['mean_gap'] * SCALE:+.1f}, "
           f"worst {t['worst_gap'] * SCALE:+.1f} points")
    return head + [
        ("p", f"On the {t['cells']} cell(s) both sweeps ran, this sweep used {ours['trials']} trials, "
              f"{ours['trial_epochs']} trial-epochs and {ours['hours']:.3f} device hours against {theirs['trials']}, "
              f"{theirs['trial_epochs']} and {theirs['hours']:.3f} for \"{other.experiment}\"{share}; {gap}. "
              f"Each cell: this sweep / the other; test at the best-dev LR (x{SCALE}); gap = this minus the other."),
        ("table", Table(["Model", "Task", "Method", "Trials", "Trial-epochs", "Best dev LR", "Test", "Gap"], rows)),
    ]


def blocks(summary: Summary, names: set[str], versus: Summary | None = None) -> list:
    """The whole report, in order; with ``versus``, a last section comparing the two sweeps' shared cells."""
    out: list = [("p", f"Experiment \"{summary.experiment}\" in {summary.tracking_uri}: {len(summary.trials)} trials, "
                       f"{len(summary.models)} model(s), {len(summary.tasks)} task(s).")]
    out += [("h2", "What is missing or partial"),
            ("list", summary.notes) if summary.notes else ("p", "Nothing: every trial of the grid has a result.")]
    out += _results(summary) + _sensitivity(summary, names) + _law(summary, names)
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
