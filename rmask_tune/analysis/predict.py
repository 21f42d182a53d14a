"""An a-priori learning rate from the Hessian probe: ``lr = c / lambda_max`` at initialization.

``c`` is calibrated once against sweep results: the geometric mean of ``lr* x lambda_max`` over
(lambda_max, best LR) pairs. It is stored in law.json under ``probe_calibration`` together with the
probe settings it was measured with, which a prediction should reuse (``predict_lr(**probe)``), and the
spread of ``lambda_max`` and ``c`` over repeated probes (other batches, other start vectors). The probes
themselves go to probes.json beside law.json (``rmask_tune.analysis.probes``), from which a re-run report
recalibrates against its own optima. Probing needs torch; the calibration arithmetic here does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from rmask_tune.analysis.probes import PROBES_FILE, add_probes, probe_entry
from rmask_tune.errors import RmaskError
from rmask_tune.law_record import CalibrationPoint, LawPoint, ProbeCalibration

if TYPE_CHECKING:
    from rmask_tune.analysis.landscape import ProbeSettings


def calibrate(points: Iterable[tuple[float, float]]) -> float:
    """``c`` from ``(lambda_max, best_lr)`` pairs: the geometric mean of ``best_lr * lambda_max``."""
    products = []
    for lam, lr in points:
        if not (lam > 0 and lr > 0 and math.isfinite(lam) and math.isfinite(lr)):
            raise RmaskError(f"a calibration point needs a positive eigenvalue and LR, got ({lam}, {lr})")
        products.append(math.log(lam * lr))
    if not products:
        raise RmaskError("calibration needs at least one (lambda_max, best LR) pair")
    return math.exp(sum(products) / len(products))


def predict_lr(
    model: str, task: str, ratio: float, c: float, *, loss_settings: dict | None = None,
    data_dir: str | None = None, device: str | None = None, **probe
) -> tuple[float, float]:
    """``(c / lambda_max, lambda_max)``: the predicted LR for Random Masking of ``model`` at ``ratio``.

    ``probe`` are the settings ``c`` was calibrated with (law.json's ``probe_calibration["probe"]``), read
    by ``ProbeSettings.from_record``: a record without ``fd_step_mode`` is probed with the relative step.
    ``loss_settings`` (``probes.LOSS_SETTINGS``) choose the training loss whose Hessian is probed.
    """
    from rmask_tune.analysis.landscape import ProbeSettings, probe_ratio

    if not (c > 0 and math.isfinite(c)):
        raise RmaskError(f"the calibration constant must be positive, got {c}")
    settings = ProbeSettings.from_record(probe, data_dir=data_dir, device=device)
    lam = probe_ratio(model, task, ratio, settings, loss_settings).lambda_max
    if not lam > 0:
        raise RmaskError(f"the loss Hessian at ratio {ratio} has no positive eigenvalue ({lam:.3g}); no LR to predict")
    return c / lam, lam


@dataclass(frozen=True)
class ProbeConstant:
    """The ``c`` a prediction for one model uses, the 95% spread of ``log10 c`` around it, and why."""

    c: float
    log10_sd: float
    basis: str
    warning: str | None = None


def constant_for(calibration: ProbeCalibration, model: str) -> ProbeConstant:
    """``c`` for ``model`` from law.json's ``probe_calibration``.

    A model the calibration has probed gets its own ``c_by_model`` and the scatter of its own points around it.
    Another model gets the pooled ``c``; the scatter of the models' own constants is added to the interval
    (with one model calibrated there is none to measure, which the warning says).
    """
    by_model = calibration.c_by_model or {}
    points = calibration.points or []
    scatter = calibration.log10_sd or 0.0
    if model in by_model:
        c = by_model[model]
        own = [math.log10(p.lr * p.lambda_max / c) for p in points if p.model == model]
        sd = _sample_sd(own) if len(own) >= 2 else scatter
        return ProbeConstant(c, sd, f"c of {model}'s own optima ({len(own)})")
    c, sd = calibration.c, scatter
    if len(by_model) >= 2:
        logs = [math.log10(v) for v in by_model.values()]
        between = _sample_sd(logs)
        fold = 10 ** (max(logs) - min(logs))
        return ProbeConstant(
            c, math.hypot(sd, between), f"pooled c of {len(by_model)} other models (between-model sd {between:.2f} "
            "decades, in the interval)",
            f"{model} is not in the calibration; c differs {fold:.3g}x between its models "
            f"({', '.join(sorted(by_model))}), so the probe's LR for a new model is that uncertain; "
            "a short sweep (--anchor) calibrates it")  # fmt: skip
    seen = ", ".join(sorted(by_model)) or "other models"
    return ProbeConstant(c, sd, f"c of {seen}",
                         f"{model} is not in the calibration and c was calibrated on {seen} only; whether it carries "
                         "to another model is not measured (the interval omits that); a short sweep (--anchor) "
                         "calibrates it")


def calibrate_law(
    law_path: str | Path,
    settings: ProbeSettings,
    *,
    model: str | None = None,
    task: str | None = None,
    repeats: int = 1,
    excluded: bool = False,
    progress=None,
) -> ProbeCalibration | None:
    """Probe every optimum in law.json's ``points`` (optionally one model / task), fit ``c``, save it.

    Each point is probed ``repeats`` times (repeat r: other batches and another start vector, see
    ``ProbeSettings.repeat``). A point's ``lambda_max`` is the geometric mean over repeats and ``c`` is fitted
    on those; ``c`` fitted on each repeat alone gives ``c_repeats``, whose spread (and that of each point's
    ``lambda_max``) says how much the probe's own sampling moves the calibration.
    ``excluded`` also probes the cells the law excluded: they do not enter ``c`` (their best LR is not an
    optimum the law trusts), but the report scores the predictor on them as its leave-one-task-out scores the law.
    Returns the ``probe_calibration`` entry written into the law file (None when only excluded cells were
    probed: the law file is then left as it was); the rest of the file is kept. The probes are merged into
    probes.json beside it.
    """
    from rmask_tune.law import load_law

    if repeats < 1:
        raise RmaskError(f"repeats must be at least 1, got {repeats}")
    law = load_law(law_path)

    def chosen(cells: list[LawPoint]) -> list[LawPoint]:
        return [cell for cell in cells if (model is None or cell.model == model) and (task is None or cell.task == task)]

    points = chosen(law.points)
    others = chosen([cell.point for cell in law.excluded if cell.point is not None]) if excluded else []
    if not points and not others:
        what = "optimal-LR points or excluded cells" if excluded else "optimal-LR points"
        raise RmaskError(f"{law_path} has no {what}{_filter_text(model, task)} to calibrate against")
    pairs = [_probed_pair(point, settings, repeats, progress) for point in points + others]
    if points:
        law.probe_calibration = calibration_entry(
            pairs[: len(points)], settings.record(), f"law.json optimal-LR points{_filter_text(model, task)}"
        )
        law.save(law_path)
    add_probes(Path(law_path).parent / PROBES_FILE,
               [probe_entry(pair, settings.record(), point.loss_settings)
                for pair, point in zip(pairs, points + others)])
    return law.probe_calibration if points else None


def _probed_pair(point: LawPoint, settings: ProbeSettings, repeats: int, progress) -> dict:
    """``point``'s calibration pair, probed ``repeats`` times on the loss it was trained with."""
    from rmask_tune.analysis.landscape import probe_ratio

    probes = [probe_ratio(point.model, point.task, point.ratio, replace(settings, repeat=r), point.loss_settings)
              for r in range(repeats)]
    pair = calibration_pair(point, [probe.lambda_max for probe in probes], _step_range(probes))
    if progress:
        progress(pair)
    return pair


def calibration_pair(point: LawPoint, lambda_repeats: list[float], step_range: list[float] | None) -> dict:
    """An optimum (``model``, ``task``, ``ratio``, ``lr``) with the ``lambda_max`` its probe repeats measured:
    their geometric mean, each repeat, their spread, and the finite-difference steps taken."""
    return {
        "model": point.model, "task": point.task, "ratio": point.ratio, "lr": point.lr,
        "lambda_max": _geometric_mean(lambda_repeats, point),
        "lambda_max_repeats": list(lambda_repeats),
        **_spread("lambda_max", lambda_repeats),
        "step_range": step_range,
    }  # fmt: skip


def calibration_entry(pairs: list[dict], probe: dict, source: str, **extra) -> ProbeCalibration:
    """law.json's ``probe_calibration`` from calibration pairs probed with the settings record ``probe``: ``c``,
    its spread over points and over probe repeats (the repeats every pair has), and each pair's errors."""
    repeats = min(len(p["lambda_max_repeats"]) for p in pairs)
    c = calibrate((p["lambda_max"], p["lr"]) for p in pairs)
    c_repeats = [calibrate((p["lambda_max_repeats"][r], p["lr"]) for p in pairs) for r in range(repeats)]
    spread = _sample_sd([math.log10(p["lr"] * p["lambda_max"] / c) for p in pairs])  # how far points sit from c
    errors = prediction_errors(pairs, c)
    return ProbeCalibration(
        c=c,
        n=len(pairs),
        c_by_model={m: calibrate((p["lambda_max"], p["lr"]) for p in pairs if p["model"] == m)
                    for m in sorted({p["model"] for p in pairs})},
        source=source,
        **extra,
        log10_sd=spread,
        mean_abs_error_steps=_mean_abs(e["error_steps"] for e in errors),
        mean_abs_loo_error_steps=_mean_abs(e["loo_error_steps"] for e in errors),
        repeats=repeats,
        c_repeats=c_repeats,
        **_spread("c", c_repeats),
        probe=probe,
        points=[CalibrationPoint.from_json({**pair, **error}) for pair, error in zip(pairs, errors)],
    )


def _geometric_mean(values: list[float], point: LawPoint) -> float:
    if not all(v > 0 for v in values):
        raise RmaskError(
            f"{point.model} {point.task} ratio {point.ratio:g}: a probe found no positive eigenvalue "
            f"({', '.join(f'{v:.3g}' for v in values)}); no calibration point"
        )
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _spread(name: str, values: list[float]) -> dict:
    """``<name>_sd`` (sample standard deviation, 0 for one value) and ``<name>_range`` ([min, max])."""
    return {f"{name}_sd": _sample_sd(values), f"{name}_range": [min(values), max(values)]}


def _step_range(probes) -> list[float] | None:
    """The smallest and largest finite-difference step over ``probes`` (None for exact HVPs)."""
    ranges = [probe.step_range for probe in probes if probe.step_range is not None]
    return [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None


def prediction_errors(pairs: list[dict], c: float, step_decades: float = 0.5) -> list[dict]:
    """Per pair: ``c / lambda_max`` and its distance from the swept optimum in grid steps (half-decades).

    ``error_steps`` uses ``c`` fitted on all pairs; ``loo_error_steps`` refits ``c`` without the pair
    itself (leave-one-out), the honest error for a ratio or task the calibration has not seen. Positive
    means the prediction is above the optimum.
    """
    errors = []
    for index, pair in enumerate(pairs):
        others = [(p["lambda_max"], p["lr"]) for j, p in enumerate(pairs) if j != index]
        loo_c = calibrate(others) if others else None
        errors.append({
            "predicted_lr": c / pair["lambda_max"],
            "error_steps": math.log10(c / pair["lambda_max"] / pair["lr"]) / step_decades,
            "loo_error_steps": None if loo_c is None else math.log10(loo_c / pair["lambda_max"] / pair["lr"]) / step_decades,
        })  # fmt: skip
    return errors


def _mean_abs(values: Iterable[float | None]) -> float | None:
    known = [abs(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _filter_text(model: str | None, task: str | None) -> str:
    parts = [f"model {model}" if model else "", f"task {task}" if task else ""]
    chosen = " and ".join(p for p in parts if p)
    return f" for {chosen}" if chosen else ""


def _sample_sd(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
