"""Do finite-difference HVPs measure local curvature? A check against exact HVPs (double backward), per ratio.

For one mask and the probe's batches: the top eigenvector by exact Lanczos, a few seeded random unit
vectors, and on each the relative error ``||H_fd u - H u|| / ||H u||`` of the finite-difference product
with the settings' step and with the ``relative`` step of the first probe version; then ``lambda_max`` by
Lanczos on fd products against exact Lanczos, from the same start vector. Each check records the steps
taken, the second-order loss change along them and the seconds per product of each method.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from rmask_tune.analysis.hessian import STEP_DESCRIPTIONS, MaskedHessian, lanczos, random_unit
from rmask_tune.analysis.landscape import ProbeSettings, probe_batches, ratio_trial
from rmask_tune.errors import RmaskError


@dataclass
class HvpCheck:
    """fd against exact HVPs for one mask. ``vectors``: one row per vector (``kind``: ``top`` or
    ``random``) with the relative error and step of the local (``fd_*``) and the relative-step
    (``relative_*``) products, their second-order loss change ``h^2 |u'Hu| / 2`` and ``u'Hu`` by each method."""

    model: str
    task: str
    ratio: float
    trainable_params: int
    examples: int
    step_mode: str
    vectors: list[dict]
    lambda_exact: float
    lambda_fd: float
    lambda_iterations: list[int]  # exact, fd
    lambda_converged: list[bool]
    seconds_per_hvp: dict
    tolerance: float

    @property
    def max_error(self) -> float:
        """The largest relative error of the settings' fd products over the vectors."""
        return max(v["fd_error"] for v in self.vectors)

    @property
    def lambda_error(self) -> float:
        """``|lambda_fd - lambda_exact| / |lambda_exact|``."""
        return abs(self.lambda_fd - self.lambda_exact) / abs(self.lambda_exact)

    @property
    def agrees(self) -> bool:
        """Every product and ``lambda_max`` within ``tolerance``."""
        return self.max_error <= self.tolerance and self.lambda_error <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "max_error": self.max_error, "lambda_error": self.lambda_error, "agrees": self.agrees}


class _Timed:
    """A Hessian's ``hvp`` that counts its products and their seconds."""

    def __init__(self, hessian: MaskedHessian):
        self.hessian, self.seconds, self.count = hessian, 0.0, 0

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        result = self.hessian.hvp(vector)
        self.seconds += time.perf_counter() - started
        self.count += 1
        return result


def compare_hvps(model, loss_fn, batches: list, settings: ProbeSettings, vectors: int) -> dict:
    """fd HVPs with ``settings``' step (and with the relative step) against exact ones on the exact top
    eigenvector and ``vectors`` random unit vectors, and ``lambda_max`` by Lanczos on each; the fields of
    :class:`HvpCheck` that concern the Hessian."""
    fd = MaskedHessian(model, loss_fn, batches, **{**settings.hessian_options(), "hvp": "fd"})
    exact = MaskedHessian(model, loss_fn, batches, hvp="exact")
    relative = MaskedHessian(model, loss_fn, batches, fd_step=settings.fd_step, fd_step_mode="relative")
    timed = {"exact": _Timed(exact), "fd": _Timed(fd)}
    solve = {"iters": settings.iters, "tol": settings.tol, "seed": settings.seed, "device": fd.device}
    exact_top = lanczos(timed["exact"], exact.dim, **solve)
    fd_top = lanczos(timed["fd"], fd.dim, **solve)  # also settles the local step on the sharpest directions
    candidates = [("top", exact_top.vector)]
    candidates += [("random", random_unit(fd.dim, settings.seed + 1 + k, fd.device)) for k in range(vectors)]
    rows = []
    for kind, unit in candidates:
        reference = timed["exact"](unit)
        size, curvature = float(reference.norm()), float(unit @ reference)
        row = {"kind": kind, "exact_norm": size, "exact_curvature": curvature}
        for name, hessian, hvp in (("fd", fd, timed["fd"]), ("relative", relative, relative.hvp)):
            approx = hvp(unit)
            step = hessian.steps[-1]
            row.update({
                f"{name}_error": float((approx - reference).norm()) / size,
                f"{name}_step": step,
                f"{name}_curvature": float(unit @ approx),
                f"{name}_loss_change": step**2 * abs(curvature) / 2,
            })  # fmt: skip
        rows.append(row)
    return {
        "trainable_params": fd.dim,
        "vectors": rows,
        "lambda_exact": exact_top.eigenvalue,
        "lambda_fd": fd_top.eigenvalue,
        "lambda_iterations": [exact_top.iterations, fd_top.iterations],
        "lambda_converged": [exact_top.converged, fd_top.converged],
        "seconds_per_hvp": {name: t.seconds / max(t.count, 1) for name, t in timed.items()},
    }


def check_ratio(
    model: str, task: str, ratio: float, settings: ProbeSettings, *, vectors: int = 3, tolerance: float = 0.02
) -> HvpCheck:
    """:func:`compare_hvps` for Random Masking of ``model`` at ``ratio`` on ``task``, at initialization,
    on the probe's batches."""
    if vectors < 0:
        raise RmaskError(f"vectors must be at least 0, got {vectors}")
    if not tolerance > 0:
        raise RmaskError(f"tolerance must be positive, got {tolerance}")
    trial = ratio_trial(model, task, ratio, settings)
    batches = probe_batches(trial, settings)
    network = trial.accelerator.unwrap_model(trial.model)
    return HvpCheck(
        model=model,
        task=trial.task.name,
        ratio=ratio,
        examples=sum(len(b) for b in batches),
        step_mode=settings.fd_step_mode,
        tolerance=tolerance,
        **compare_hvps(network, trial.loss, batches, settings, vectors),
    )


def format_checks(checks: list[HvpCheck]) -> str:
    """A table per ratio: worst fd error (local and relative step), error on the top eigenvector, steps,
    lambda_max by both methods, seconds per product."""
    lines = [
        f"{'ratio':>8} {'values':>8} {'step':>9} {'rel.step':>9} {'err top':>8} {'err rand':>8} {'old top':>8} "
        f"{'old rand':>8} {'dL old':>8} {'lam exact':>10} {'lam fd':>10} {'lam err':>8} {'s/HVP ex':>8} "
        f"{'s/HVP fd':>8}  ok"
    ]
    for c in checks:
        top = next(v for v in c.vectors if v["kind"] == "top")
        rand = [v for v in c.vectors if v["kind"] == "random"]
        worst = max((v["fd_error"] for v in rand), default=float("nan"))
        worst_old = max((v["relative_error"] for v in rand), default=float("nan"))
        lines.append(
            f"{c.ratio:>8.3g} {c.trainable_params:>8} {top['fd_step']:>9.3g} {top['relative_step']:>9.3g} "
            f"{top['fd_error']:>8.2e} {worst:>8.2e} {top['relative_error']:>8.2e} {worst_old:>8.2e} "
            f"{top['relative_loss_change']:>8.3g} {c.lambda_exact:>10.4g} {c.lambda_fd:>10.4g} {c.lambda_error:>8.2e} "
            f"{c.seconds_per_hvp['exact']:>8.2f} {c.seconds_per_hvp['fd']:>8.2f}  {'yes' if c.agrees else 'NO'}"
        )
    modes = sorted({c.step_mode for c in checks})
    lines += [
        "err: ||H_fd u - H u|| / ||H u|| against exact HVPs (double backward), on the exact top eigenvector (top) "
        "and worst over random unit vectors (rand); old: with the relative step (rel.step)",
        *(f"step: {STEP_DESCRIPTIONS[m]}" for m in modes),
        "dL old: second-order loss change h^2 |u'Hu| / 2 (nats) along the relative step on the top eigenvector",
        f"lam: top eigenvalue by Lanczos on exact and on fd products (same start); ok: every error within "
        f"{', '.join(sorted({f'{c.tolerance:g}' for c in checks}))}",
    ]
    return "\n".join(lines)
