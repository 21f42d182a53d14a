"""A numerical check of the paper's overparameterized linear-regression analysis of Random Masking.

Setting: ``n`` samples ``x_i`` in ``R^d`` (``d > n``) with entries uniform on ``[-1, 1]`` (bounded by
``B = 1``), targets ``y = X beta`` with ``beta ~ N(0, I/d)``, and the squared loss
``L(w) = ||X_m w - y||^2 / (2n)`` where ``X_m = X diag(m)`` keeps each feature (column) with probability
``p`` (an independent Bernoulli mask per ratio). Training the masked parameters is regression on
``X_m``; its Hessian ``X_m^T X_m / n`` has the same non-zero eigenvalues as the n x n masked Gram matrix
``G_p = X_m X_m^T / n``, while the unmasked one is ``G = X X^T / n`` and ``E[G_p] = p G``.

1. Eigenvalue concentration (Theorem 5.1): ``max_i |lambda_i(G_p) - p lambda_i(G)| <= ||G_p - p G||``
   (Weyl), which relative to ``p lambda_max(G)`` shrinks like ``sqrt(n / (p d))`` (matrix Bernstein, up
   to a log factor): the eigenvalues concentrate around ``p`` times the unmasked ones once ``p d >> n``.
2. Gradient descent from zero converges exactly when ``lr < 2 / lambda_max(G_p)`` (Proposition 5.2), so
   the largest stable learning rate grows like ``1/p``; checked by running GD at ``(1 -+ margin)`` times it.
3. The point GD converges to is the min-norm solution ``X_m^+ y``; while it interpolates (``p d >= n``)
   its norm is ``sqrt(y^T (n G_p)^{-1} y)``, about ``||w_1|| / sqrt(p)``: sparser masks move further
   (Proposition 5.3). Near ``p d = n`` the smallest eigenvalue nears zero: GD converges very slowly and
   the norm peaks; below it the masked problem is underparameterized and no longer interpolates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from rmask_tune.errors import RmaskError

DEFAULT_RATIOS = (1.0, 0.5, 0.2, 0.1, 0.05)
ENTRY_BOUND = 1.0


@dataclass
class GDRun:
    """One gradient-descent run: ``outcome`` is ``converged``, ``diverged`` or ``slow`` (neither in budget)."""

    lr: float
    outcome: str
    steps: int
    w: np.ndarray = field(repr=False)


@dataclass
class RatioResult:
    """Everything measured at one mask ratio ``p`` (see the module docstring for the definitions)."""

    p: float
    kept: int
    lambda_max: float
    lambda_ratio: float  # lambda_max(G_p) / (p lambda_max(G))
    deviation: float  # max_i |lambda_i(G_p) - p lambda_i(G)| / (p lambda_max(G))
    max_stable_lr: float  # 2 / lambda_max(G_p)
    below: str  # outcome of GD at (1 - margin) * max_stable_lr
    above: str  # outcome of GD at (1 + margin) * max_stable_lr
    gd_steps: int  # steps the run below the threshold took
    solution_norm: float  # ||X_m^+ y||, the limit of GD from zero
    min_norm_gap: float  # ||w_GD - X_m^+ y|| / ||X_m^+ y|| for the run below the threshold
    norm_ratio: float  # solution_norm * sqrt(p) / ||w_1||, about 1 under concentration
    interpolates: bool  # the solution fits the training data exactly
    spectrum: list[float] = field(repr=False)  # eigenvalues of G_p, descending


@dataclass
class TheoryResult:
    """A simulation: the setting, the unmasked spectrum and one ``RatioResult`` per ratio."""

    n: int
    d: int
    seed: int
    margin: float
    full_spectrum: list[float]
    full_solution_norm: float
    rows: list[RatioResult]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def make_problem(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Data ``X`` (n x d, entries uniform on [-1, 1]) and targets ``y = X beta``, ``beta ~ N(0, I/d)``."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-ENTRY_BOUND, ENTRY_BOUND, size=(n, d))
    beta = rng.normal(0.0, 1.0 / math.sqrt(d), size=d)
    return X, X @ beta


def random_mask(d: int, p: float, seed: int) -> np.ndarray:
    """A Bernoulli(p) feature mask; the same ``(d, p, seed)`` always gives the same mask."""
    rng = np.random.default_rng((seed, int(round(p * 1e12))))
    return rng.random(d) < p


def gram(X: np.ndarray) -> np.ndarray:
    """The n x n Gram matrix ``X X^T / n``: its eigenvalues are the non-zero Hessian eigenvalues."""
    return X @ X.T / X.shape[0]


def gradient_descent(
    X: np.ndarray, y: np.ndarray, lr: float, *, tol: float = 1e-9, max_steps: int = 200_000
) -> GDRun:
    """Full-batch GD on ``||X w - y||^2 / (2n)`` from ``w = 0``.

    Converged: the gradient norm fell below ``tol`` times its initial value. Diverged: the residual
    became non-finite or grew past ``1e6`` times its initial norm.
    """
    n = X.shape[0]
    w = np.zeros(X.shape[1])
    residual = -y
    start_residual = np.linalg.norm(y)
    start_grad = np.linalg.norm(X.T @ y) / n
    for step in range(max_steps):
        grad = X.T @ residual / n
        if np.linalg.norm(grad) <= tol * start_grad:
            return GDRun(lr, "converged", step, w)
        w -= lr * grad
        residual = X @ w - y
        size = np.linalg.norm(residual)
        if not np.isfinite(size) or size > 1e6 * start_residual:
            return GDRun(lr, "diverged", step + 1, w)
    return GDRun(lr, "slow", max_steps, w)


def simulate(
    n: int = 50,
    d: int = 400,
    ratios: tuple[float, ...] | list[float] = DEFAULT_RATIOS,
    seed: int = 0,
    *,
    margin: float = 0.02,
) -> TheoryResult:
    """Run the three checks at each ratio (see the module docstring); ``ratio`` 1 is the unmasked model."""
    if n < 1 or d <= n:
        raise RmaskError(f"the analysis needs an overparameterized problem: d ({d}) must exceed n ({n}) >= 1")
    if not ratios:
        raise RmaskError("give at least one ratio")
    for p in ratios:
        if not 0 < p <= 1:
            raise RmaskError(f"ratio {p} is not in (0, 1]")
    if not 0 < margin < 1:
        raise RmaskError(f"margin {margin} is not in (0, 1)")
    X, y = make_problem(n, d, seed)
    full_spectrum = np.linalg.eigvalsh(gram(X))[::-1]
    full_norm = float(np.linalg.norm(np.linalg.pinv(X) @ y))
    rows = []
    for p in ratios:
        mask = np.ones(d, dtype=bool) if p == 1 else random_mask(d, p, seed)
        if not mask.any():
            raise RmaskError(f"ratio {p} keeps no feature out of d={d}; raise --d or the ratio")
        rows.append(_measure(X[:, mask], y, p, full_spectrum, full_norm, margin))
    return TheoryResult(n, d, seed, margin, full_spectrum.tolist(), full_norm, rows)


def _measure(Xm, y, p, full_spectrum, full_norm, margin) -> RatioResult:
    spectrum = np.linalg.eigvalsh(gram(Xm))[::-1]
    lambda_max, lambda_full = float(spectrum[0]), float(full_spectrum[0])
    scale = p * lambda_full
    threshold = 2.0 / lambda_max
    below = gradient_descent(Xm, y, (1 - margin) * threshold)
    above = gradient_descent(Xm, y, (1 + margin) * threshold)
    w_star = np.linalg.pinv(Xm) @ y
    star_norm = float(np.linalg.norm(w_star))
    residual = np.linalg.norm(Xm @ w_star - y) / np.linalg.norm(y)
    return RatioResult(
        p=p,
        kept=Xm.shape[1],
        lambda_max=lambda_max,
        lambda_ratio=lambda_max / scale,
        deviation=float(np.max(np.abs(spectrum - p * full_spectrum))) / scale,
        max_stable_lr=threshold,
        below=below.outcome,
        above=above.outcome,
        gd_steps=below.steps,
        solution_norm=star_norm,
        min_norm_gap=float(np.linalg.norm(below.w - w_star)) / star_norm,
        norm_ratio=star_norm * math.sqrt(p) / full_norm,
        interpolates=bool(residual < 1e-6),
        spectrum=spectrum.tolist(),
    )


def format_table(result: TheoryResult) -> str:
    """The per-ratio table printed by ``rmask-tune theory``."""
    lines = [
        f"n={result.n} d={result.d} seed={result.seed}; G_p = X_m X_m^T / n (n x n; X_m = X with the unmasked "
        f"columns zeroed), G = G_1; lambda_max(G) = {result.full_spectrum[0]:.4g}",
        f"{'p':>7} {'kept':>5} {'lambda_max':>10} {'/p*l(G)':>8} {'dev':>6} {'max_lr':>9} "
        f"{'GD<lr*':>9} {'GD>lr*':>9} {'||w||':>8} {'*sqrt(p)':>8} {'interp':>6}",
    ]
    for r in result.rows:
        lines.append(
            f"{r.p:>7.4g} {r.kept:>5} {r.lambda_max:>10.4g} {r.lambda_ratio:>8.3f} {r.deviation:>6.3f} "
            f"{r.max_stable_lr:>9.4g} {r.below:>9} {r.above:>9} {r.solution_norm:>8.4g} {r.norm_ratio:>8.3f} "
            f"{'yes' if r.interpolates else 'no':>6}"
        )
    lines += [
        "/p*l(G) = lambda_max(G_p) / (p lambda_max(G)); dev = max_i |lambda_i(G_p) - p lambda_i(G)| / "
        "(p lambda_max(G)), small once kept >> n (Thm 5.1)",
        f"max_lr = 2 / lambda_max(G_p); GD from zero at (1 - {result.margin:g}) and (1 + {result.margin:g}) "
        "max_lr (Prop 5.2); slow = neither converged nor diverged in the step budget",
        "||w|| = norm of the min-norm solution X_m^+ y, the limit of GD from zero; *sqrt(p) = ||w|| sqrt(p) / "
        "||w_full||; interp = the solution fits the data exactly (needs kept >= n) (Prop 5.3)",
    ]
    return "\n".join(lines)


def plot(result: TheoryResult, path) -> None:
    """Write a three-panel PNG: spectra vs ``p`` times the unmasked one, max stable LR and ``||w||`` vs p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = np.array(result.full_spectrum)
    ps = np.array([r.p for r in result.rows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for r in result.rows:
        rank = min(r.kept, result.n)  # the remaining eigenvalues are zero
        (line,) = axes[0].plot(r.spectrum[:rank], label=f"p={r.p:g}")
        axes[0].plot(r.p * full, linestyle="--", color=line.get_color(), alpha=0.6)
    axes[0].set(yscale="log", xlabel="index i", ylabel="eigenvalue", title="lambda_i(G_p) (solid) vs p lambda_i(G)")
    axes[0].legend(fontsize=8)
    order = np.argsort(ps)
    lrs = np.array([r.max_stable_lr for r in result.rows])
    axes[1].plot(ps[order], lrs[order], "o-", label="2 / lambda_max(G_p)")
    axes[1].plot(ps[order], 2 / full[0] / ps[order], "k--", label="2 / (p lambda_max(G))")
    axes[1].set(xscale="log", yscale="log", xlabel="mask ratio p", ylabel="max stable LR", title="Prop. 5.2")
    axes[1].legend(fontsize=8)
    norms = np.array([r.solution_norm for r in result.rows])
    axes[2].plot(ps[order], norms[order], "o-", label="||w|| of the GD limit (min-norm solution)")
    under = np.array([r.kept < result.n for r in result.rows])
    if under.any():
        axes[2].plot(ps[under], norms[under], "rx", markersize=10, label="kept < n: no interpolation")
    axes[2].plot(ps[order], result.full_solution_norm / np.sqrt(ps[order]), "k--", label="||w_full|| / sqrt(p)")
    axes[2].set(xscale="log", yscale="log", xlabel="mask ratio p", ylabel="solution norm", title="Prop. 5.3")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Random Masking in overparameterized linear regression (n={result.n}, d={result.d})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
