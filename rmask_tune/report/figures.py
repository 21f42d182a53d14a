"""The report's figures as PNG bytes (matplotlib's Agg canvas; no pyplot, no display)."""

from __future__ import annotations

import io
import math

import numpy as np

from rmask_tune.report.summary import LAW_METHOD, Summary, row_label, slug

SCALE = 100  # metrics are shown x100, as in the paper


def _figure(panels: int, width: float = 4.6, height: float = 3.4, cols: int = 3):
    from matplotlib.figure import Figure

    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=90, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ratio_colours(ratios):
    from matplotlib import colormaps

    ratios = sorted(ratios)
    cmap = colormaps["viridis"]
    span = len(ratios) - 1 or 1
    return {r: cmap(0.85 * i / span) for i, r in enumerate(ratios)}


def lr_sensitivity(summary: Summary, model: str) -> bytes:
    """Dev metric vs LR per task (per task and budget when the report holds several budgets): a line per ratio,
    baselines dashed, diverged trials as red crosses, ASHA-stopped trials as hollow circles, the estimated optimum
    as a triangle with its bootstrap interval."""
    curves = [c for c in summary.curves.values() if c.model == model and c.dev]
    several = len({c.steps for c in curves}) > 1
    panels = sorted({(c.task, c.steps if several else None) for c in curves}, key=lambda k: (k[0], k[1] or 0))
    fig, axes = _figure(max(len(panels), 1))
    colours = _ratio_colours({c.ratio for c in curves if c.ratio is not None})
    baseline_styles = iter(["tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"] * 4)
    baseline_colour = {}
    for ax, (task, steps) in zip(axes, panels):
        mine = sorted((c for c in curves if c.task == task and (steps is None or c.steps == steps)),
                      key=lambda c: (c.ratio is not None, c.method, -(c.ratio or 0)))
        for c in mine:
            if None in c.dev:  # a method without a learning rate: its level across the axis
                ax.axhline(np.mean(c.dev[None]) * SCALE, color="0.5", linestyle=":", label=row_label(c.method, c.ratio))
                continue
            lrs = list(c.dev)
            mean = np.array([np.mean(c.dev[lr]) for lr in lrs]) * SCALE
            std = np.array([np.std(c.dev[lr]) for lr in lrs]) * SCALE
            if c.ratio is None:
                colour = baseline_colour.setdefault(c.method, next(baseline_styles))
                style = "--"
            else:
                colour, style = colours[c.ratio], "-"
            ax.errorbar(lrs, mean, yerr=std, color=colour, linestyle=style, marker="o", markersize=3,
                        capsize=2, label=row_label(c.method, c.ratio))
            for lr in lrs:
                for t in c.trials[lr]:
                    y = (t.dev if t.dev is not None else min(min(v) for v in c.dev.values())) * SCALE
                    if t.status == "diverged":
                        ax.plot(lr, y, "x", color="red", markersize=8, markeredgewidth=2)
                    elif t.status == "stopped":
                        ax.plot(lr, y, "o", markerfacecolor="none", color="0.45", markersize=7)
            if c.method == LAW_METHOD and c.optimum is not None and not c.optimum.at_edge:
                o = c.optimum
                xerr = [[o.lr - 10 ** o.interval[0]], [10 ** o.interval[1] - o.lr]]
                ax.errorbar(o.lr, mean.max(), xerr=xerr, fmt="v", color=colour, markersize=8, capsize=3)
        ax.set_xscale("log")
        ax.set_title(f"{model} · {task}" + ("" if steps is None else f" · {steps} steps"), fontsize=10)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"dev {mine[0].metric} (x{SCALE})")
        ax.grid(alpha=0.3, which="both")
    legend = {}
    for ax in axes:  # every line once, whichever panel drew it
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], marker="x", color="red", linestyle="none", markeredgewidth=2),
                Line2D([], [], marker="o", markerfacecolor="none", color="0.45", linestyle="none"),
                Line2D([], [], marker="v", color="0.3", linestyle="none")]
    labels += ["diverged", "stopped early (ASHA)", "estimated optimum (95% bootstrap interval)"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _png(fig)


def law(summary: Summary) -> bytes:
    """Optimal LR vs trainable ratio (log-log): a panel per model with the optima (95% bootstrap intervals)
    and each pair's line of the shared fit, and a pooled panel with the single-line fit and its band when
    there are several models; excluded optima are drawn hollow. With a budget term, each budget has its own
    marker and line style, and each pair a line per budget."""
    law_ = summary.law
    estimated = [e.point for e in law_.excluded if e.point is not None and e.point.lr is not None]
    drawn = law_.points + estimated
    models = sorted({p.model for p in drawn})
    panels = [(m, [m]) for m in models]
    if len(models) > 1 or not panels:
        panels.append(("pooled (all models and tasks)", models))
    fig, axes = _figure(len(panels), width=5.0, height=3.8)
    tasks = sorted({p.task for p in drawn})
    task_colour = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    shared = law_.shared
    budgets = sorted({p.steps for p in drawn}) if shared is not None and shared.g is not None else [None]
    marker = {steps: "osD^v"[i % 5] for i, steps in enumerate(budgets)}
    style = {steps: ("-", "--", ":", "-.")[i % 4] for i, steps in enumerate(budgets)}
    for ax, (title, members) in zip(axes, panels):
        for p in (p for p in law_.points if p.model in members):
            low, high = p.interval or (10 ** (p.log10_lr - p.se), 10 ** (p.log10_lr + p.se))
            ax.errorbar(p.ratio, p.lr, yerr=[[p.lr - low], [high - p.lr]], fmt=marker.get(p.steps, "o"),
                        color=task_colour[p.task], capsize=2)
        for e in (e for e in estimated if e.model in members):
            ax.plot(e.ratio, e.lr, marker.get(e.steps, "o"), markerfacecolor="none", color=task_colour[e.task],
                    markersize=8)
        if len(members) == 1 and shared is not None and any(p.startswith(members[0] + "/") for p in shared.pairs):
            mine = [p for p in shared.pairs if p.startswith(members[0] + "/")]
            xs = np.logspace(math.log10(shared.ratio_range[0]) - 0.3, math.log10(shared.ratio_range[1]) + 0.3, 60)
            for pair in mine:
                offset = shared.offsets[shared.pairs.index(pair)]
                for steps in budgets:
                    ax.plot(xs, [10 ** shared.centre(offset, x, steps) for x in xs], linestyle=style[steps],
                            color=task_colour.get(pair.rsplit("/", 1)[1], "black"))
            title = f"{title}\nshared b = {shared.b:.3f} [{shared.b_ci[0]:.3f}, {shared.b_ci[1]:.3f}], n = {len(shared.points)}"
            if shared.g is not None:
                title += f"\nbudget g = {shared.g:.3f} [{shared.g_ci[0]:.3f}, {shared.g_ci[1]:.3f}]"
        elif len(members) > 1 and law_.pooled is not None:
            fit = law_.pooled
            xs = np.logspace(math.log10(fit.ratio_range[0]) - 0.3, math.log10(fit.ratio_range[1]) + 0.3, 60)
            band_lo, band_hi = fit.band(xs)
            ax.fill_between(xs, 10**band_lo, 10**band_hi, color="0.6", alpha=0.35, linewidth=0)
            ax.plot(xs, 10 ** (fit.a + fit.b * np.log10(xs)), color="black")
            title = f"{title}\nsingle line b = {fit.b:.3f} [{fit.b_ci[0]:.3f}, {fit.b_ci[1]:.3f}], n = {len(fit.points)}"
        else:
            ax.text(0.5, 0.5, "no fit (fewer than two ratios)", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("trainable ratio")
        ax.set_ylabel("optimal learning rate")
        ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", color=task_colour[t], linestyle="none") for t in tasks]
    handles += [Line2D([], [], marker="o", markerfacecolor="none", color="0.3", linestyle="none")]
    shown = [steps for steps in budgets if steps is not None]
    handles += [Line2D([], [], marker=marker[steps], linestyle=style[steps], color="0.3") for steps in shown]
    labels = tasks + ["excluded (see the table)"] + [f"{steps} steps" for steps in shown]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _png(fig)


def params_vs_performance(summary: Summary) -> bytes:
    """Average test metric (over the tasks each row has) vs trainable parameters, every method;
    rows missing some tasks are drawn hollow. Methods training nothing are a horizontal line."""
    fig, axes = _figure(len(summary.models), width=5.2, height=3.8)
    for ax, model in zip(axes, summary.models):
        rows = [r for r in summary.rows if r.model == model]
        series: dict[tuple, list] = {}  # by (method, budget named when the report has several)
        for r in rows:
            avg, covered = r.average(summary.tasks)
            if avg is None:
                continue
            if not r.trainable_params:
                ax.axhline(avg * SCALE, color="0.5", linestyle=":", label=r.label)
                continue
            series.setdefault((r.method, r.shown_steps or 0), []).append(
                (r.trainable_params, avg * SCALE, covered == len(summary.tasks)))
        for i, ((method, steps), pts) in enumerate(sorted(series.items())):
            pts.sort()
            xs, ys, full = zip(*pts)
            colour = f"C{i % 10}"
            ax.plot(xs, ys, "-" if len(pts) > 1 else "none", color=colour, label=row_label(method, None, steps or None))
            ax.scatter(xs, ys, color=[colour if f else "none" for f in full], edgecolors=colour, zorder=3)
        ax.set_xscale("log")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"average test metric (x{SCALE})")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def figures(summary: Summary) -> dict[str, bytes]:
    """Every figure by file name."""
    out = {f"lr_sensitivity_{slug(m)}.png": lr_sensitivity(summary, m) for m in summary.models
           if any(c.model == m and c.dev for c in summary.curves.values())}
    if summary.law.points or summary.law.excluded:
        out["law.png"] = law(summary)
    if any(r.average(summary.tasks)[0] is not None for r in summary.rows):
        out["params_vs_performance.png"] = params_vs_performance(summary)
    return out
