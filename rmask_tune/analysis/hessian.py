"""Hessian of a training loss with respect to the Random Masking values: HVPs and power iteration.

Two ways to multiply the Hessian by a vector:

- ``fd`` (default): a central difference of gradients, ``(g(theta + h u) - g(theta - h u)) / (2 h)`` along
  the unit vector ``u``, through the masked layers' own autograd Function (their sparse value gradient is
  not twice differentiable). Two ways to choose the step ``h`` (``fd_step_mode``):

  - ``curvature`` (default): a local step, chosen per direction. ``h = sqrt(2 * fd_loss_change / kappa)``
    with ``kappa = ||H u||`` (at least ``|u' H u|``), so that the second-order loss change along the step,
    ``h^2 |u' H u| / 2``, is at most ``fd_loss_change`` nats. ``kappa`` is first taken from the previous
    product (the first product of a probe uses the ``relative`` step); when the measured ``||H u||`` asks
    for a step more than twice smaller or larger, the product is measured again with that step. The step
    is at least the fp32 noise floor ``FD_NOISE_FLOOR * ||g|| / kappa`` (below it the rounding of the two
    gradients, a few 1e-6 of ``||g||``, dominates) and at most the ``relative`` step. Measured against
    exact products (``rmask-tune analyze hvp-check``), the relative error along the top eigenvector is
    about ``2 * fd_loss_change`` on tiny-llama and under 0.6% on SmolLM2-135M at every ratio from 1% to
    0.001% (``reports/smollm2-135m-hvp-check``).
  - ``relative``: the step of the first version of the probe, ``h = fd_step * (1 + ||theta||)``, where
    ``theta`` are the effective weights ``W0 + delta`` at the masked entries. It grows with the mask
    (2.3 at 1% of SmolLM2-135M, where the loss changes by hundreds of nats along the top eigenvector
    and the curvature measured there is 5x too low), so it does not measure local curvature at large
    masks; kept to reproduce calibrations measured with it (law.json files whose ``probe`` has no
    ``fd_step_mode``).
- ``exact``: double backward (Pearlmutter's trick). The masked layers differentiate through ordinary
  torch ops (``plain_autograd``: the effective weight is built from the values by an ``index_put``), and
  attention runs on PyTorch's math kernel, the one with a second derivative. On SmolLM2-135M (CPU) a
  product costs about as much as an fd one; fd stays the default because it needs only first-order
  autograd: training's kernels and memory, on any model.

Two ways to find the top (largest algebraic) eigenvalue from HVPs:

- ``lanczos`` (default): Lanczos with full reorthogonalization; the top Ritz value, stopped when its
  residual ``||H x - theta x||`` falls below ``tol`` times its magnitude. It finds
  the top eigenvalue even when negative curvature dominates the spectrum (as at random init).
- ``power``: power iteration; when the dominant eigenvalue is negative, a second run on the shifted
  ``H - lambda I`` finds the top, which converges slowly when the spectrum is wide (it then reports
  ``converged=False`` once the budget is spent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking import masked_layers
from rmask_tune.masking.layer import plain_autograd

HVP_METHODS = ("fd", "exact")
FD_STEP_MODES = ("curvature", "relative")
SOLVERS = ("lanczos", "power")
HVP_DESCRIPTIONS = {
    "fd": "central finite differences of gradients",
    "exact": "exact Hessian-vector products by double backward through a differentiable masked forward",
}
STEP_DESCRIPTIONS = {
    "curvature": "local step per direction u: h^2 ||H u|| / 2 = fd_loss_change nats, between the fp32 noise "
    "floor and the relative step",
    "relative": "relative step fd_step * (1 + ||W0 + delta||) (the first version's; not local at large masks)",
}
FD_NOISE_FLOOR = 1e-3  # h >= this * ||g|| / ||H u||: gradient rounding then costs about 1% of ||H u||
_RESTEPS = 3  # at most this many measurements of one product while its step settles


@dataclass
class Eigenvalue:
    """The top (largest algebraic) eigenvalue an iterative solver found, and how it got there.

    ``iterations`` counts HVPs; ``converged`` says the stopping test passed within the budget;
    ``history`` is the estimate after each HVP; ``bottom`` (Lanczos only) is the lowest Ritz value;
    ``shifted`` (power only): the dominant eigenvalue was negative and the top came from ``H - lambda I``.
    """

    eigenvalue: float
    iterations: int
    converged: bool
    solver: str
    history: list[float] = field(default_factory=list)
    bottom: float | None = None
    shifted: bool = False
    vector: torch.Tensor | None = field(default=None, repr=False)  # the top Ritz vector (Lanczos only), unit norm


class MaskedHessian:
    """The mean loss over fixed ``batches`` as a function of the masked values of ``model``.

    ``loss_fn(batch)`` returns a scalar loss through ``model``. Vectors are flat float64 tensors over
    the values of every masked layer, in ``masked_layers`` order. ``steps`` lists the finite-difference
    step (along a unit vector) of every product, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[object], torch.Tensor],
        batches: Iterable,
        *,
        hvp: str = "fd",
        fd_step: float = 1e-2,
        fd_step_mode: str = "curvature",
        fd_loss_change: float = 1e-3,
    ):
        if hvp not in HVP_METHODS:
            raise RmaskError(f"unknown HVP method '{hvp}'; choose one of {', '.join(HVP_METHODS)}")
        if fd_step_mode not in FD_STEP_MODES:
            raise RmaskError(f"unknown fd step mode '{fd_step_mode}'; choose one of {', '.join(FD_STEP_MODES)}")
        for name, value in (("fd_step", fd_step), ("fd_loss_change", fd_loss_change)):
            if not (value > 0 and math.isfinite(value)):
                raise RmaskError(f"{name} must be positive, got {value}")
        self.layers = list(masked_layers(model).values())
        if not self.layers:
            raise RmaskError("the model carries no Random Masking values to probe (use a masking method)")
        self.loss_fn = loss_fn
        self.batches = list(batches)
        if not self.batches:
            raise RmaskError("the Hessian probe needs at least one batch")
        self.method = hvp
        self.fd_step = fd_step
        self.fd_step_mode = fd_step_mode
        self.fd_loss_change = fd_loss_change
        self.params = [layer.values for layer in self.layers]
        self.dim = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.steps: list[float] = []
        self.curvature: float | None = None  # ||H u|| of the last product: the next step's first guess
        self.gradient_norm: float | None = None  # ||g|| at the values, from the last central difference

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1).to(self.device, torch.float64) for t in tensors])

    def _split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        parts = vector.split([p.numel() for p in self.params])
        return [part.view_as(p).to(p.dtype) for part, p in zip(parts, self.params)]

    def loss(self) -> float:
        """The mean loss over the batches."""
        with torch.no_grad():
            return sum(float(self.loss_fn(batch)) for batch in self.batches) / len(self.batches)

    def gradient(self) -> torch.Tensor:
        """The gradient of the mean loss with respect to the values."""
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for batch in self.batches:
            grads = torch.autograd.grad(self.loss_fn(batch), self.params, allow_unused=True)
            total += self._flat(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params))
        return total / len(self.batches)

    def parameter_norm(self) -> float:
        """``||W0 + delta||`` over the masked entries: the scale of the relative finite-difference step."""
        weights = (layer.weight.detach().reshape(-1)[layer.mask.rmask_flat].float() + layer.values.detach()
                   for layer in self.layers)
        return math.sqrt(sum(float(w.pow(2).sum()) for w in weights))

    def relative_step(self) -> float:
        """The ``relative`` step along a unit vector, ``fd_step * (1 + ||W0 + delta||)``; the ceiling of
        the ``curvature`` step."""
        return self.fd_step * (1.0 + self.parameter_norm())

    def step_size(self, curvature: float | None = None) -> float:
        """The finite-difference step along a unit vector ``u`` with ``||H u|| = curvature`` (default: that
        of the last product; the ``relative`` step while none is known)."""
        ceiling = self.relative_step()
        curvature = self.curvature if curvature is None else curvature
        if self.fd_step_mode == "relative" or not curvature:
            return ceiling
        local = math.sqrt(2 * self.fd_loss_change / curvature)
        floor = FD_NOISE_FLOOR * (self.gradient_norm or 0.0) / curvature
        return min(ceiling, max(local, floor))

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        """The Hessian times ``vector``."""
        return self._fd_hvp(vector) if self.method == "fd" else self._exact_hvp(vector)

    def _fd_hvp(self, vector: torch.Tensor) -> torch.Tensor:
        norm = float(vector.norm())
        if norm == 0:
            return torch.zeros_like(vector)
        unit = vector / norm
        step = self.step_size()
        for attempt in range(_RESTEPS):
            product = self._central_difference(unit, step)
            self.curvature = float(product.norm())
            wanted = self.step_size()
            if step / 2 <= wanted <= 2 * step or attempt == _RESTEPS - 1:
                break
            step = wanted
        self.steps.append(step)
        return product * norm

    def _central_difference(self, unit: torch.Tensor, step: float) -> torch.Tensor:
        """``(g(theta + step u) - g(theta - step u)) / (2 step)``; the values are restored afterwards."""
        saved = [p.detach().clone() for p in self.params]
        try:
            gradients = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, start, part in zip(self.params, saved, self._split(sign * step * unit)):
                        p.copy_(start + part)
                gradients.append(self.gradient())
        finally:
            with torch.no_grad():
                for p, start in zip(self.params, saved):
                    p.copy_(start)
        self.gradient_norm = float((gradients[0] + gradients[1]).norm()) / 2
        return (gradients[0] - gradients[1]) / (2 * step)

    def _exact_hvp(self, vector: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        parts = self._split(vector)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with plain_autograd(), sdpa_kernel(SDPBackend.MATH):
            for batch in self.batches:
                grads = torch.autograd.grad(self.loss_fn(batch), self.params, create_graph=True)
                dot = sum((g * part).sum() for g, part in zip(grads, parts))
                total += self._flat(torch.autograd.grad(dot, self.params, allow_unused=True))
        return total / len(self.batches)

    def dense(self) -> torch.Tensor:
        """The full (symmetrized) Hessian, one HVP per value: only for masks of a few dozen values."""
        basis = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        matrix = torch.stack([self.hvp(basis[i]) for i in range(self.dim)], dim=1)
        return (matrix + matrix.T) / 2

    def top_eigenvalue(
        self, *, solver: str = "lanczos", iters: int = 20, tol: float = 1e-3, seed: int = 0
    ) -> Eigenvalue:
        """The top eigenvalue by :func:`lanczos` or :func:`power_iteration` from a seeded random start."""
        if solver not in SOLVERS:
            raise RmaskError(f"unknown eigenvalue solver '{solver}'; choose one of {', '.join(SOLVERS)}")
        find = lanczos if solver == "lanczos" else power_iteration
        return find(self.hvp, self.dim, iters=iters, tol=tol, seed=seed, device=self.device)


def random_unit(dim: int, seed: int, device="cpu") -> torch.Tensor:
    """A seeded random unit vector (float64)."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
    return vector / vector.norm()


def _check_iters(iters: int) -> None:
    if iters < 1:
        raise RmaskError(f"the eigenvalue solver needs at least one iteration, got {iters}")


def lanczos(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Eigenvalue:
    """The top eigenvalue of the symmetric operator ``hvp`` by Lanczos (at most ``iters`` products).

    Keeps every Lanczos vector (``iters x dim`` float64) for full reorthogonalization. Stops when the top
    Ritz pair's residual is at most ``tol`` times the top Ritz value's magnitude, or the Krylov space is
    exhausted (then the Ritz values are exact). The result carries the top Ritz vector.
    """
    _check_iters(iters)
    basis = [random_unit(dim, seed, device)]
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    limit = min(iters, dim)
    for step in range(1, limit + 1):
        w = hvp(basis[-1])
        alphas.append(float(basis[-1] @ w))
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            stacked = torch.stack(basis)
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        ritz, vectors = torch.linalg.eigh(tridiagonal)
        history.append(float(ritz[-1]))
        exhausted = beta <= 1e-12 * float(ritz.abs().max()) or step == dim
        converged = exhausted or beta * abs(float(vectors[-1, -1])) <= tol * abs(history[-1])
        if converged or step == limit:
            break
        betas.append(beta)
        basis.append(w / beta)
    top = torch.stack(basis).T @ vectors[:, -1].to(basis[0].device)
    return Eigenvalue(history[-1], step, converged, "lanczos", history, float(ritz[0]), vector=top / top.norm())


def power_iteration(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Eigenvalue:
    """The top eigenvalue of the symmetric operator ``hvp`` by power iteration (at most ``iters`` products
    per run).

    Stops when the estimate changes by less than ``tol`` (relative). If the dominant eigenvalue is
    negative, a second run on ``H - lambda I`` (whose dominant eigenvalue is then the top one, shifted)
    finds the top.
    """
    _check_iters(iters)
    first = _power(hvp, dim, iters, tol, seed, device, 0.0)
    if first.eigenvalue >= 0:
        return first
    shift = first.eigenvalue
    second = _power(lambda v: hvp(v) - shift * v, dim, iters, tol, seed, device, shift)
    return Eigenvalue(
        second.eigenvalue, first.iterations + second.iterations, second.converged, "power",
        first.history + second.history, shifted=True,
    )  # fmt: skip


def _power(hvp, dim, iters, tol, seed, device, shift: float) -> Eigenvalue:
    """Power iteration on ``hvp`` (which applies ``H - shift I``); estimates are of ``H``'s eigenvalue."""
    vector = random_unit(dim, seed, device)
    history: list[float] = []
    for step in range(1, iters + 1):
        product = hvp(vector)
        history.append(float(vector @ product) + shift)
        if step > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            return Eigenvalue(history[-1], step, True, "power", history)
        size = product.norm()
        if size == 0:
            return Eigenvalue(history[-1], step, True, "power", history)
        vector = product / size
    return Eigenvalue(history[-1], iters, False, "power", history)
