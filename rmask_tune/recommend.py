"""What ``rmask-tune recommend`` answers: the learning rate for a trainable ratio from a fitted law (law.json,
or a law fitted from an experiment), calibrated on the user's model by an anchor sweep when asked, or a priori
from the Hessian probe (``lr = c / lambda_max``, c from law.json's calibration); a short LR grid around it;
and, for a (model, task) the law has not fitted, the commands that measure it with the law searcher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rmask_tune.errors import RmaskError
from rmask_tune.law import Law, check_ratio, load_law, log_grid
from rmask_tune.law_record import LawPoint

LAW_SEARCH_TEMPLATE = "search_spaces/law-search.yaml"


@dataclass(frozen=True)
class ProbeAdvice:
    """How the Hessian probe's LR was made: the eigenvalue measured, the constant used and why, the loss probed."""

    lambda_max: float
    c: float
    c_basis: str
    loss_settings: dict
    loss_basis: str
    calibration_points: int | None


@dataclass(frozen=True)
class Budget:
    """The training budget a law with a budget term recommends for: ``steps`` (asked, or the law's own), the budget
    exponent ``g`` with its interval, the budgets the law was fitted on, and whether ``steps`` lies outside them."""

    steps: float
    asked: bool
    g: float
    g_ci: tuple[float, float]
    steps_range: tuple[int, int]
    extrapolated: bool

    def to_json(self) -> dict:
        return {"steps": self.steps, "steps_asked": self.asked, "g": self.g, "g_ci": list(self.g_ci),
                "steps_range": list(self.steps_range), "steps_extrapolated": self.extrapolated}


@dataclass(frozen=True)
class Recommendation:
    """A recommended LR for ``ratio`` on (``model``, ``task``): its 95% interval (``None`` ends: no interval),
    what it rests on, a log-spaced grid around it, warnings, and for a pair the law lacks the law-search
    commands that measure it. ``source`` is "law" or "probe"; a law's answer has ``basis`` and ``detail``
    (and from a shared fit the exponent ``b``); a probe's has ``probe``."""

    ratio: float
    model: str | None
    task: str | None
    source: str
    lr: float
    interval: tuple[float | None, float | None]
    grid: list[float]
    warning: str | None = None
    basis: str | None = None
    detail: str | None = None
    b: float | None = None
    b_ci: tuple[float, float] | None = None
    ratio_range: tuple[float, float] | None = None
    extrapolated: bool = False
    probe: ProbeAdvice | None = None
    law_search: list[str] | None = None
    budget: Budget | None = None  # a law with a budget term: the budget the LR is for

    def to_json(self) -> dict:
        """The ``--json`` object."""
        head = {"ratio": self.ratio, "model": self.model, "task": self.task, "source": self.source,
                "lr": self.lr, "interval": list(self.interval)}
        if self.probe is not None:
            p = self.probe
            body = {"lambda_max": p.lambda_max, "c": p.c, "c_basis": p.c_basis, "warning": self.warning,
                    "loss_settings": p.loss_settings, "loss_basis": p.loss_basis,
                    "calibration_points": p.calibration_points}
        elif self.b is None:  # a v1 law.json: the single line
            body = {"basis": self.basis, "detail": self.detail, "warning": self.warning,
                    "extrapolated": self.extrapolated, "ratio_range": list(self.ratio_range)}
        else:
            body = {"basis": self.basis, "detail": self.detail, "warning": self.warning, "b": self.b,
                    "b_ci": list(self.b_ci), "ratio_range": list(self.ratio_range), "extrapolated": self.extrapolated}
        budget = {} if self.budget is None else {"budget": self.budget.to_json()}
        return {**head, **body, **budget, "grid": self.grid, "law_search": self.law_search}


def recommend(ratio: float, *, law_path: str | None = None, experiment: str | None = None,
              tracking_uri: str | None = None, model: str | None = None, task: str | None = None,
              anchor: str | None = None, probe: bool = False, loss_settings: dict | None = None,
              data_dir: str | None = None, device: str | None = None, points: int = 5,
              decades: float = 1.0, steps: float | None = None) -> Recommendation:
    """The LR for ``ratio`` on (``model``, ``task``) from the law at ``law_path`` (or fitted from ``experiment``):
    the law's (``anchor``: a short sweep of the user's model whose optimum sets its offset), or with ``probe``
    the Hessian probe's; ``points`` LRs spanning ``decades`` decades around it; ``steps``: the training budget
    (optimizer steps) to recommend for (default: the law's own)."""
    ratio = check_ratio(ratio)
    steps = check_steps(steps)
    if probe and not law_path:
        raise RmaskError("--probe needs --law: the calibrated constant c lives in law.json")
    if probe and steps is not None:
        raise RmaskError("--steps sets the law's budget; --probe predicts from the Hessian, which has no budget term")
    law = law_for(law_path, experiment, tracking_uri)
    if probe:
        return from_probe(law, law_path, ratio, model, task, loss_settings=loss_settings, data_dir=data_dir,
                          device=device, points=points, decades=decades)
    measured = anchor_point(anchor, ratio, model, task, tracking_uri) if anchor and law.shared is not None else None
    return from_law(law, ratio, model, task, anchor=measured, law_path=law_path, points=points, decades=decades,
                    steps=steps)


def check_steps(steps: float | None) -> float | None:
    """A training budget must be a positive, finite number of optimizer steps (None: the law's own)."""
    if steps is None:
        return None
    if not (isinstance(steps, (int, float)) and math.isfinite(steps) and steps > 0):
        raise RmaskError(f"--steps must be a positive number of optimizer steps, got {steps:g}")
    return float(steps)


def budget_of(law: Law, steps: float | None) -> tuple[Budget | None, str | None]:
    """The budget a recommendation is for, and a warning for ``steps`` a law without a budget term cannot honour:
    such a law's LR is for the budget it was fitted at, whatever ``steps`` asks (docs/law.md)."""
    fit = law.shared
    if fit is not None and fit.g is not None:
        chosen = law.budget() if steps is None else steps
        return Budget(chosen, steps is not None, fit.g, fit.g_ci, fit.steps_range, not law.steps_in_range(chosen)), None
    own = law.budget() if fit is not None else None
    if steps is None or (own is not None and abs(steps - own) < 1e-9 * own):
        return None, None
    at = f"its own budget of {own} steps" if own is not None else "the budget it was fitted at (law.json does not say which)"
    return None, (f"the law has no budget term (its optima were measured at one budget): the LR is for {at}, "
                  f"not for --steps {steps:g}")


def law_for(law_path: str | None, experiment: str | None, tracking_uri: str | None = None) -> Law:
    """The law to recommend from: law.json at ``law_path``, or one fitted from ``experiment``'s runs."""
    if law_path and experiment:
        raise RmaskError("give either --law or --experiment, not both")
    if law_path:
        return load_law(law_path)
    if experiment:
        from rmask_tune.report import law_of, load_summary

        return law_of(load_summary(experiment, tracking_uri))
    raise RmaskError("recommend needs --law PATH (a report's law.json) or --experiment NAME")


def anchor_point(sweep: str, ratio: float, model: str | None, task: str | None,
                 tracking_uri: str | None = None) -> LawPoint:
    """The optimum a short sweep on the user's model measured (``--anchor``), nearest ``ratio``."""
    from rmask_tune.report import load_summary
    from rmask_tune.report.summary import LAW_METHOD

    summary = load_summary(sweep, tracking_uri)
    cells = [c for c in summary.curves.values() if c.method == LAW_METHOD and c.ratio is not None
             and (model is None or c.model == model) and (task is None or c.task == task)]
    usable = [c for c in cells if c.optimum is not None and not c.optimum.at_edge]
    if not usable:
        why = "its best LR is at the grid's edge" if cells else "it has no Random Masking cell for this model/task"
        raise RmaskError(f"--anchor {sweep}: no interior optimum to calibrate on ({why})")
    cell = min(usable, key=lambda c: abs(math.log10(c.ratio) - math.log10(ratio)))
    return LawPoint(model=cell.model, task=cell.task, ratio=cell.ratio, steps=cell.steps, log10_lr=cell.optimum.log10_lr,
                    se=cell.optimum.se)


def law_search_commands(law: Law, law_path: str | None, model: str | None, task: str | None,
                        ratio: float) -> list[str] | None:
    """The commands that measure a (model, task) the law has not fitted with the law-guided searcher, then
    recommend from the law that sweep gives (None when the law has the pair, or no model and task were given)."""
    if not (model and task) or law.shared is None or f"{model}/{task}" in law.shared.pairs:
        return None
    name = f"{model}-{task}-law".lower()
    prior = law_path or "LAW_JSON"
    return [
        f"sed -e 's/^name: .*/name: {name}/' -e 's/^models: .*/models: [{model}]/' -e 's/^tasks: .*/tasks: [{task}]/' "
        f"-e 's#^storage_path: .*#storage_path: runs/{name}#' {LAW_SEARCH_TEMPLATE} > {name}.yaml",
        f"rmask-tune sweep {name}.yaml --prior {prior}",
        f"rmask-tune report {name}.yaml --out reports/{name}",
        f"rmask-tune recommend --law reports/{name}/law.json --model {model} --task {task} --ratio {ratio:g}",
    ]


def from_law(law: Law, ratio: float, model: str | None = None, task: str | None = None, *,
             anchor: LawPoint | None = None, law_path: str | None = None, points: int = 5,
             decades: float = 1.0, steps: float | None = None) -> Recommendation:
    """The law's LR for ``ratio`` on (``model``, ``task``) at the budget ``steps`` (default: the law's own): the
    shared fit's (with ``anchor``, an optimum measured on the user's model, setting its offset), or a v1 law.json's
    single line, with its prediction band."""
    ratio = check_ratio(ratio)
    search = law_search_commands(law, law_path, model, task, ratio)
    budget, budget_warning = budget_of(law, check_steps(steps))
    if law.shared is None:  # a law.json from before the shared fit (format v1)
        lr, lo, hi = law.predict(ratio, model, prediction=True)
        return Recommendation(
            ratio, model, task, "law", lr, (lo, hi), log_grid(lr, points, decades),
            warning=_joined("this law.json has no shared fit; its interval is the single line's prediction band",
                            budget_warning),
            basis="single-line law (v1 law.json)",
            detail="refit with `rmask-tune report` for per-task offsets and honest intervals",
            ratio_range=law.fit_for(model).ratio_range, extrapolated=not law.in_range(ratio, model), law_search=search)
    estimate = law.recommend(ratio, model, task, anchor=anchor, steps=None if budget is None else budget.steps)
    pair = f"{model}/{task}"
    warning = _joined(estimate.warning, budget_warning)
    if task is not None and pair not in law.shared.pairs and estimate.basis != "anchor":
        known = ", ".join(p for p in law.shared.pairs if p.split("/", 1)[0] == model) or ", ".join(law.shared.pairs)
        unseen = f"{pair} is not in the law (it has {known}); using {estimate.detail}"
        warning = unseen if warning is None else f"{unseen}; {warning}"
    return Recommendation(
        ratio, model, task, "law", estimate.lr, (estimate.lo, estimate.hi), log_grid(estimate.lr, points, decades),
        warning=warning, basis=estimate.basis, detail=estimate.detail, b=law.shared.b, b_ci=law.shared.b_ci,
        ratio_range=law.shared.ratio_range, extrapolated=not law.in_range(ratio), law_search=search, budget=budget)


def _joined(*warnings: str | None) -> str | None:
    """The warnings given, in one line (None when there is none)."""
    return "; ".join(w for w in warnings if w) or None


def from_probe(law: Law, law_path: str, ratio: float, model: str | None, task: str | None, *,
               loss_settings: dict | None = None, data_dir: str | None = None, device: str | None = None,
               points: int = 5, decades: float = 1.0) -> Recommendation:
    """``lr = c / lambda_max``: the top Hessian eigenvalue of ``model`` on ``task`` at initialization, ``c`` from the
    law's calibration; the loss probed is ``loss_settings``, else the one the law's optima were trained with."""
    from rmask_tune.analysis.predict import constant_for, predict_lr
    from rmask_tune.analysis.probes import probe_loss_settings

    ratio = check_ratio(ratio)
    if not (model and task):
        raise RmaskError("--probe needs --model and --task (the probe measures that model's loss on that task)")
    calibration = law.probe_calibration
    if calibration is None:
        raise RmaskError(
            f"{law_path} has no probe_calibration; run `rmask-tune analyze calibrate --law {law_path}` first"
        )
    constant = constant_for(calibration, model)
    if loss_settings is None:
        loss_settings, loss_basis = probe_loss_settings(law.points, model, task)
    else:
        loss_basis = "--loss-settings"
    lr, lam = predict_lr(model, task, ratio, constant.c, loss_settings=loss_settings, **(calibration.probe or {}),
                         data_dir=data_dir, device=device)
    spread = 10 ** (1.96 * constant.log10_sd)
    return Recommendation(
        ratio, model, task, "probe", lr, (lr / spread, lr * spread), log_grid(lr, points, decades),
        warning=constant.warning,
        probe=ProbeAdvice(lam, constant.c, constant.basis, loss_settings, loss_basis, calibration.n),
        law_search=law_search_commands(law, law_path, model, task, ratio))
