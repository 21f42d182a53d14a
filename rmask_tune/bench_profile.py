"""Where a Random Masking step goes: its stages under torch.profiler, and the cost of one layer on each path.

The masked layer labels its stages (``rmask.forward``, ``rmask.delta``, ``rmask.input_grad``,
``rmask.value_grad``; ``rmask_tune.masking.layer``) and torch labels the optimizer step, so a profile
of a few steps splits the step into them; the rest is the frozen model's own forward and backward.
``rmask.delta`` (the weight assembly on the dense path, the index writes on the inplace path, the sparse
products on the sparse one) runs
inside the forward and the input gradient, and is counted in them too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from rmask_tune.masking.backends import resolve_backend
from rmask_tune.masking.layer import SPARSE_CROSSOVER, RandomMask, compute_dtype, masked_linear

STAGES = {"forward": "rmask.forward", "delta": "rmask.delta", "input_grad": "rmask.input_grad",
          "value_grad": "rmask.value_grad"}  # fmt: skip


@dataclass
class StageProfile:
    """Milliseconds per step of one Random Masking case, by stage (CPU time of the labelled ranges)."""

    ratio: float
    path: str
    step_ms: float
    forward_ms: float
    delta_ms: float
    input_grad_ms: float
    value_grad_ms: float
    optimizer_ms: float
    sparse_layers: int
    layers: int

    @property
    def rest_ms(self) -> float:
        """The frozen model's own work: the step less the masked layers' stages and the optimizer."""
        return self.step_ms - self.forward_ms - self.input_grad_ms - self.value_grad_ms - self.optimizer_ms


def profile_case(case, steps: int) -> StageProfile:
    """Profile ``steps`` training steps of a Random Masking bench case (``rmask_tune.bench._Case``)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device_type == "cuda" else [])
    from rmask_tune.masking import masked_layers  # peft: imported when a profile is asked for

    layers = masked_layers(case.model)
    took_sparse = {}

    def record_path(layer, inputs):
        x = inputs[0]
        took_sparse[layer] = layer.uses_sparse_path(x.numel() // x.shape[-1], compute_dtype(x, layer.weight))

    hooks = [layer.register_forward_pre_hook(record_path) for layer in layers.values()]
    case.times.clear()
    try:
        with profile(activities=activities) as prof:
            for _ in range(steps):
                case.step()
    finally:
        for hook in hooks:
            hook.remove()
    totals = {event.key: event.cpu_time_total / 1e3 / steps for event in prof.key_averages()}
    per_stage = {stage: totals.get(label, 0.0) for stage, label in STAGES.items()}
    optimizer = sum(ms for key, ms in totals.items() if key.startswith("Optimizer.step#"))
    return StageProfile(
        ratio=case.options["ratio"],
        path=case.options.get("path", "auto"),
        step_ms=statistics.median(case.times) * 1e3,
        **{f"{stage}_ms": ms for stage, ms in per_stage.items()},
        optimizer_ms=optimizer,
        sparse_layers=sum(took_sparse.values()),
        layers=len(layers),
    )


def format_profiles(profiles: list[StageProfile]) -> str:
    """One line per profiled case: ms per step by stage."""
    lines = ["Random Masking step by stage, ms per step (delta: weight assembly or sparse products, also counted "
             "in forward and input grad; rest: the frozen model)",
             f"{'ratio':>7}{'path':>8}{'sparse':>9}{'step':>9}{'forward':>9}{'delta':>8}{'in grad':>9}"
             f"{'val grad':>9}{'optim':>8}{'rest':>9}"]  # fmt: skip
    for p in profiles:
        lines.append(
            f"{p.ratio:>7.0e}{p.path:>8}{f'{p.sparse_layers}/{p.layers}':>9}{p.step_ms:>9.1f}{p.forward_ms:>9.2f}"
            f"{p.delta_ms:>8.2f}{p.input_grad_ms:>9.2f}{p.value_grad_ms:>9.2f}{p.optimizer_ms:>8.2f}{p.rest_ms:>9.1f}"
        )
    return "\n".join(lines)


@dataclass
class CrossoverPoint:
    """One layer's forward + backward on each path at one ``rows x density``: median ms over the rounds."""

    rows_x_density: float
    entries: int
    dense_ms: float
    sparse_ms: float
    inplace_ms: float


CROSSOVER_PATHS = ("dense", "sparse", "inplace")


def layer_crossover(
    shape: tuple[int, int], rows: int, grid: tuple[float, ...], rounds: int = 20, dtype=torch.float32, device="cpu"
) -> list[CrossoverPoint]:
    """Time one masked ``nn.Linear`` of ``shape`` (out, in) on ``rows`` input rows (the masked product a
    ``RandomMaskingLinear`` runs, fp32 values, the ``auto`` backend) on each path, at each ``rows x density``
    of ``grid``, interleaved over ``rounds``: the measurement behind ``SPARSE_CROSSOVER``."""
    out_f, in_f = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_f, generator=gen).to(device, dtype).requires_grad_(True)
    backend = resolve_backend("auto", x.device)
    points = []
    for product in grid:
        k = max(1, round(product / rows * out_f * in_f))
        flat = torch.randperm(out_f * in_f, generator=gen)[:k].sort().values
        masks = {}
        for path in CROSSOVER_PATHS:
            base = torch.nn.Linear(in_f, out_f, bias=False).to(device, dtype).requires_grad_(False)
            masks[path] = RandomMask(base, flat, k / (out_f * in_f), backend=backend, path=path)
        values = torch.zeros(k, device=device, requires_grad=True)
        times = {path: [] for path in masks}
        for _ in range(rounds + 1):  # the first round warms up
            for path, mask in masks.items():
                start = time.perf_counter()
                masked_linear(x, mask, values).sum().backward()
                if device != "cpu":
                    torch.cuda.synchronize()
                times[path].append(time.perf_counter() - start)
        medians = {f"{p}_ms": statistics.median(times[p][1:]) * 1e3 for p in CROSSOVER_PATHS}
        points.append(CrossoverPoint(product, k, **medians))
    return points


def format_crossover(shape: tuple[int, int], rows: int, points: list[CrossoverPoint]) -> str:
    lines = [f"the paths of one {shape[0]}x{shape[1]} layer on {rows} rows (forward + backward, median ms); "
             f"auto takes inplace (on a shared weight: sparse below rows x density = {SPARSE_CROSSOVER}, dense above)",
             f"{'rows x density':>15}{'entries':>9}{'dense':>9}{'sparse':>9}{'inplace':>9}"
             f"{'sparse/inplace':>16}"]  # fmt: skip
    for p in points:
        lines.append(f"{p.rows_x_density:>15.3g}{p.entries:>9}{p.dense_ms:>9.3f}{p.sparse_ms:>9.3f}"
                     f"{p.inplace_ms:>9.3f}{p.sparse_ms / p.inplace_ms:>16.2f}")  # fmt: skip
    return "\n".join(lines)
