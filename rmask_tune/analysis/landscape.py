"""The loss landscape of Random Masking on a real model and task: the top Hessian eigenvalue per ratio.

The Hessian is that of the mean training loss over a fixed set of batches (the first ``batches``
batches of ``batches * batch_size`` training examples, in order), restricted to the masked values,
at initialization (values zero) or at the values a finished ``rmask-tune train`` run saved.
Batches, mask and loss come from the trainer's ``prepare_trial``, so they are exactly what training sees.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from rmask_tune.analysis.hessian import HVP_DESCRIPTIONS, SOLVERS, STEP_DESCRIPTIONS, MaskedHessian
from rmask_tune.analysis.probes import LOSS_SETTINGS
from rmask_tune.errors import RmaskError

MASKING_METHODS = ("random_masking", "structured_masking")
# Settings of a finished run that decide its model, data, mask and loss (the rest concerns training).
RUN_SETTINGS = (
    "model", "task", "method", "ratio", "density", "seed", "data_seed", "mask_seed", "targets", "objective", "scoring",
    "max_length", "head", "tokenizer", "train_head", "method_options", "data_dir",
)  # fmt: skip
_MASK_SETTINGS = ("ratio", "density", "targets", "method_options")
SOLVER_NAMES = {"lanczos": "Lanczos", "power": "power iteration"}


@dataclass
class ProbeSettings:
    """How the probe measures: the data (``batches`` x ``batch_size`` training examples, ``seed`` for data
    and mask unless a run fixes them), the eigenvalue solver (``solver``, at most ``iters`` HVPs per run,
    ``tol``, start vector from ``seed``) and the HVPs (``hvp``; for ``fd`` the step: ``fd_step_mode``,
    ``fd_step``, ``fd_loss_change``); see ``analysis.hessian``. ``repeat`` r > 0 starts the solver from
    another vector and, in ``probe_ratio``, draws other batches (data seed ``seed + r``), on the same model
    and mask."""

    batches: int = 4
    batch_size: int = 8
    iters: int = 20
    tol: float = 1e-3
    hvp: str = "fd"
    solver: str = "lanczos"
    fd_step: float = 1e-2
    fd_step_mode: str = "curvature"
    fd_loss_change: float = 1e-3
    seed: int = 0
    repeat: int = 0
    data_dir: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("batches", "batch_size", "iters"):
            if getattr(self, name) < 1:
                raise RmaskError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.repeat < 0:
            raise RmaskError(f"repeat must be at least 0, got {self.repeat}")
        if self.hvp not in HVP_DESCRIPTIONS:
            raise RmaskError(f"unknown HVP method '{self.hvp}'; choose one of {', '.join(HVP_DESCRIPTIONS)}")
        if self.fd_step_mode not in STEP_DESCRIPTIONS:
            raise RmaskError(
                f"unknown fd step mode '{self.fd_step_mode}'; choose one of {', '.join(STEP_DESCRIPTIONS)}"
            )
        if self.solver not in SOLVERS:
            raise RmaskError(f"unknown eigenvalue solver '{self.solver}'; choose one of {', '.join(SOLVERS)}")

    @classmethod
    def from_record(cls, record: dict, **extra) -> "ProbeSettings":
        """The settings stored in a law.json calibration (``probe``), plus ``extra`` (data_dir, device).

        A record written before the step mode was recorded was measured with the ``relative`` step.
        """
        known = {f.name for f in fields(cls)} - {"repeat", "data_dir", "device"}
        unknown = set(record) - known
        if unknown:
            raise RmaskError(f"unknown probe setting(s) in the calibration record: {', '.join(sorted(unknown))}")
        return cls(**{"fd_step_mode": "relative", **record, **extra})

    def record(self) -> dict:
        """The settings a calibration stores: everything that decides the measurement, for ``from_record``."""
        return {k: v for k, v in asdict(self).items() if k not in ("repeat", "data_dir", "device")}

    def hessian_options(self) -> dict:
        """The keyword arguments of ``MaskedHessian`` these settings choose."""
        return {"hvp": self.hvp, "fd_step": self.fd_step, "fd_step_mode": self.fd_step_mode,
                "fd_loss_change": self.fd_loss_change}  # fmt: skip

    def trial_overrides(self) -> dict:
        """The trial settings that make ``prepare_trial`` load exactly the probe's examples."""
        overrides = {
            "train_examples": self.batches * self.batch_size,
            "dev_examples": 1,  # the trainer wants non-empty dev and test splits; the probe uses neither
            "test_examples": 1,
            "batch_size": self.batch_size,
        }
        if self.data_dir is not None:
            overrides["data_dir"] = self.data_dir
        if self.device is not None:
            overrides["device"] = self.device
        return overrides


@dataclass
class LandscapePoint:
    """One measurement: the top Hessian eigenvalue for one mask, at init or after training."""

    model: str
    task: str
    ratio: float
    state: str  # "init" or "trained"
    trainable_params: int
    lambda_max: float
    iterations: int  # Hessian-vector products spent
    converged: bool
    solver: str
    bottom: float | None  # the lowest Ritz value (Lanczos): how negative the curvature gets
    loss: float
    hvp: str
    step_mode: str | None  # how the finite-difference step was chosen (None for exact HVPs)
    step: float | None  # the last finite-difference step along a unit vector (None for exact HVPs)
    step_range: list[float] | None  # the smallest and largest step the probe took (None for exact HVPs)
    examples: int
    seconds: float
    run: str | None = None
    lr: float | None = None
    repeat: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def probe_trial(trial, state: str, settings: ProbeSettings, run: str | None = None) -> LandscapePoint:
    """Measure the top eigenvalue of the Hessian over ``trial``'s masked values on its first batches."""
    started = time.perf_counter()
    batches = probe_batches(trial, settings)
    examples = sum(len(b) for b in batches)
    model = trial.accelerator.unwrap_model(trial.model)
    hessian = MaskedHessian(model, trial.loss, batches, **settings.hessian_options())
    result = hessian.top_eigenvalue(
        solver=settings.solver, iters=settings.iters, tol=settings.tol, seed=settings.seed + settings.repeat
    )
    fd = settings.hvp == "fd"
    config = trial.config
    return LandscapePoint(
        model=config.model,
        task=trial.task.name,
        ratio=hessian.dim / trial.setup.total_params if config.ratio is None else config.ratio,
        state=state,
        trainable_params=hessian.dim,
        lambda_max=result.eigenvalue,
        iterations=result.iterations,
        converged=result.converged,
        solver=settings.solver,
        bottom=result.bottom,
        loss=hessian.loss(),
        hvp=settings.hvp,
        step_mode=settings.fd_step_mode if fd else None,
        step=hessian.steps[-1] if fd else None,
        step_range=[min(hessian.steps), max(hessian.steps)] if fd else None,
        examples=examples,
        seconds=time.perf_counter() - started,
        run=run,
        lr=config.lr if state == "trained" else None,
        repeat=settings.repeat,
    )


def ratio_trial(model: str, task: str, ratio: float, settings: ProbeSettings, loss_settings: dict | None = None):
    """The prepared trial the probe measures: Random Masking of ``model`` at ``ratio`` on ``task``, at init, with
    the training loss ``loss_settings`` choose (``LOSS_SETTINGS``; the trainer's defaults for those not given)."""
    from rmask_tune.trainer import prepare_trial

    unknown = sorted(set(loss_settings or {}) - set(LOSS_SETTINGS))
    if unknown:
        raise RmaskError(f"not a loss setting the probe takes: {', '.join(unknown)} (it takes {', '.join(LOSS_SETTINGS)})")
    config = {"model": model, "task": task, "method": "random_masking", "ratio": ratio, "seed": settings.seed,
              "data_seed": settings.seed + settings.repeat}  # fmt: skip
    return prepare_trial({**(loss_settings or {}), **config, **settings.trial_overrides()})


def probe_batches(trial, settings: ProbeSettings) -> list:
    """The first ``settings.batches`` training batches of ``trial``, with its model in eval mode (no dropout:
    the Hessian of one fixed function)."""
    batches = [batch for _, batch in zip(range(settings.batches), trial.train_batches())]
    if sum(len(b) for b in batches) == 0:
        raise RmaskError(f"task {trial.config.task} gave no training examples to probe")
    trial.accelerator.unwrap_model(trial.model).eval()
    return batches


def probe_ratio(
    model: str, task: str, ratio: float, settings: ProbeSettings | None = None, loss_settings: dict | None = None
) -> LandscapePoint:
    """The top eigenvalue at initialization for Random Masking of ``model`` at ``ratio`` on ``task`` (training loss
    as ``ratio_trial``)."""
    settings = settings or ProbeSettings()
    return probe_trial(ratio_trial(model, task, ratio, settings, loss_settings), "init", settings)


def read_run(run_dir: str | Path) -> dict:
    """The ``metrics.json`` of a finished ``rmask-tune train`` run (its ``config`` holds the settings)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise RmaskError(f"{run_dir} is not a finished run: it has no metrics.json")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RmaskError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        raise RmaskError(f"{path} has no trial config; was it written by rmask-tune train?")
    return metrics


def probe_run(run_dir: str | Path, settings: ProbeSettings | None = None) -> tuple[LandscapePoint, LandscapePoint]:
    """The top eigenvalue for a finished run's mask, at initialization and at its trained values.

    The model, task, mask and data seed are the run's; the trained values come from its
    adapter (the peft folder ``adapter``, or an older run's ``adapter.safetensors``) through ``load_adapter``
    (which checks the base model and the mask).
    """
    from rmask_tune.masking.adapter import find_adapter, load_adapter
    from rmask_tune.trainer import prepare_trial

    settings = settings or ProbeSettings()
    run_dir = Path(run_dir)
    config = read_run(run_dir)["config"]
    if config.get("method") not in MASKING_METHODS:
        raise RmaskError(f"run {run_dir} used method '{config.get('method')}'; the probe needs a masking method")
    adapter = find_adapter(run_dir)
    if adapter is None:
        raise RmaskError(f"run {run_dir} has no Random Masking adapter (adapter/ or adapter.safetensors)")
    base = {key: config[key] for key in RUN_SETTINGS if key in config}
    base.update(settings.trial_overrides())
    init = probe_trial(prepare_trial(base), "init", settings, run=str(run_dir))
    # The trained state: the base model with no method, then the run's adapter (mask rebuilt and checked).
    unmasked = {k: v for k, v in base.items() if k not in _MASK_SETTINGS}
    trial = prepare_trial({**unmasked, "method": "none", "lr": config.get("lr", 1e-3)})
    model = trial.accelerator.unwrap_model(trial.model)
    load_adapter(model, adapter)
    _load_extra_trainables(model, run_dir / "trainable.safetensors")
    trained = probe_trial(trial, "trained", settings, run=str(run_dir))
    trained.ratio = init.ratio
    return init, trained


def _load_extra_trainables(model: torch.nn.Module, path: Path) -> None:
    """Load tensors trained next to the adapter (a classification head), when the run saved any."""
    if not path.is_file():
        return
    from safetensors.torch import load_file

    missing = set(load_file(str(path))) - set(dict(model.named_parameters()))
    if missing:
        raise RmaskError(f"{path} holds tensors this model lacks: {', '.join(sorted(missing))}")
    model.load_state_dict(load_file(str(path)), strict=False)


def format_points(points: list[LandscapePoint]) -> str:
    """A table of eigenvalue vs ratio, with the HVP method and the finite-difference steps named."""
    lines = [
        f"{'ratio':>9} {'state':>7} {'values':>9} {'lambda_max':>11} {'lowest':>10} {'HVPs':>5} {'conv':>4} "
        f"{'loss':>8} {'fd steps':>17} {'secs':>6}  run"
    ]
    for p in points:
        flag = "yes" if p.converged else "no"
        lowest = "-" if p.bottom is None else f"{p.bottom:.4g}"
        steps = "exact" if p.step_range is None else f"{p.step_range[0]:.3g}-{p.step_range[1]:.3g}"
        lines.append(
            f"{p.ratio:>9.3g} {p.state:>7} {p.trainable_params:>9} {p.lambda_max:>11.4g} {lowest:>10} "
            f"{p.iterations:>5} {flag:>4} {p.loss:>8.4g} {steps:>17} {p.seconds:>6.1f}  {p.run or '-'}"
        )
    methods = sorted({p.hvp for p in points})
    solvers = ", ".join(sorted({SOLVER_NAMES[p.solver] for p in points}))
    lines.append(f"lambda_max: top eigenvalue of the training-loss Hessian over the masked values ({solvers})")
    lines += [f"HVPs: {HVP_DESCRIPTIONS[m]}" for m in methods]
    lines += [f"fd steps: {STEP_DESCRIPTIONS[m]}" for m in sorted({p.step_mode for p in points if p.step_mode})]
    if any(p.bottom is not None for p in points):
        lines.append("lowest: the lowest Ritz value, a bound on how negative the curvature gets")
    return "\n".join(lines)


def plot_points(points: list[LandscapePoint], path) -> None:
    """Eigenvalue vs ratio (log-log where positive): init as a line, trained runs as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for state, style in (("init", "o-"), ("trained", "s")):
        chosen = sorted((p for p in points if p.state == state), key=lambda p: p.ratio)
        if chosen:
            ax.plot([p.ratio for p in chosen], [p.lambda_max for p in chosen], style, label=f"at {state}")
    ax.set_xscale("log")
    if all(p.lambda_max > 0 for p in points):
        ax.set_yscale("log")
    names = sorted({f"{p.model} / {p.task}" for p in points})
    ax.set(xlabel="mask ratio (trainable fraction)", ylabel="top Hessian eigenvalue", title=", ".join(names))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
