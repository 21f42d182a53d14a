"""An a-priori learning rate from the Hessian probe: ``lr = c / lambda_max`` at initialization.

``c`` is calibrated once against sweep results: the geometric mean of ``lr* x lambda_max`` over
(lambda_max, best LR) pairs. It is stored in law.json under ``probe_calibration`` together with the
probe settings it was measured with, which a prediction should reuse (``predict_lr(**probe)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from rmask_tune.analysis.landscape import ProbeSettings, probe_ratio
from rmask_tune.errors import RmaskError


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
    model: str,
    task: str,
    ratio: float,
    c: float,
    *,
    batches: int = 4,
    batch_size: int = 8,
    iters: int = 20,
    tol: float = 1e-3,
    hvp: str = "fd",
    solver: str = "lanczos",
    fd_step: float = 1e-2,
    seed: int = 0,
    data_dir: str | None = None,
    device: str | None = None,
) -> tuple[float, float]:
    """``(c / lambda_max, lambda_max)``: the predicted LR for Random Masking of ``model`` at ``ratio``."""
    if not (c > 0 and math.isfinite(c)):
        raise RmaskError(f"the calibration constant must be positive, got {c}")
    settings = ProbeSettings(
        batches=batches, batch_size=batch_size, iters=iters, tol=tol, hvp=hvp, solver=solver,
        fd_step=fd_step, seed=seed, data_dir=data_dir, device=device,
    )  # fmt: skip
    lam = probe_ratio(model, task, ratio, settings).lambda_max
    if not lam > 0:
        raise RmaskError(f"the loss Hessian at ratio {ratio} has no positive eigenvalue ({lam:.3g}); no LR to predict")
    return c / lam, lam


def calibrate_law(
    law_path: str | Path,
    settings: ProbeSettings,
    *,
    model: str | None = None,
    task: str | None = None,
    progress=None,
) -> dict:
    """Probe every optimum in law.json's ``points`` (optionally one model / task), fit ``c``, save it.

    Returns the ``probe_calibration`` entry written into the law file; the rest of the file is kept.
    """
    from rmask_tune.law import load_law

    law = load_law(law_path)
    points = [
        p for p in law.data.get("points", [])
        if (model is None or p["model"] == model) and (task is None or p["task"] == task)
    ]  # fmt: skip
    if not points:
        raise RmaskError(f"{law_path} has no optimal-LR points{_filter_text(model, task)} to calibrate against")
    pairs = []
    for point in points:
        probed = probe_ratio(point["model"], point["task"], point["ratio"], settings)
        pairs.append({**{k: point[k] for k in ("model", "task", "ratio", "lr")}, "lambda_max": probed.lambda_max})
        if progress:
            progress(pairs[-1])
    c = calibrate((p["lambda_max"], p["lr"]) for p in pairs)
    spread = _log10_spread([math.log10(p["lr"] * p["lambda_max"] / c) for p in pairs])
    errors = prediction_errors(pairs, c)
    probe = {k: v for k, v in asdict(settings).items() if k not in ("data_dir", "device")}
    law.probe_calibration = {
        "c": c,
        "n": len(pairs),
        "source": f"law.json optimal-LR points{_filter_text(model, task)}",
        "log10_sd": spread,
        "mean_abs_error_steps": _mean_abs(e["error_steps"] for e in errors),
        "mean_abs_loo_error_steps": _mean_abs(e["loo_error_steps"] for e in errors),
        "probe": probe,
        "points": [{**pair, **error} for pair, error in zip(pairs, errors)],
    }
    law.save(law_path)
    return law.probe_calibration


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


def _log10_spread(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value): how far single points sit from ``c``."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
