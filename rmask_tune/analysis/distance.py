"""How far training moved: the L2 norm of the trained deltas (the adapter values) of finished runs.

Masked values start at zero, so the norm of the saved values is the distance from the pretrained
weights. Runs are ``rmask-tune train`` output folders (metrics.json + the adapter) or a folder
holding such folders, e.g. a sweep's ``<storage_path>/trials`` (the sweep logs only metrics.json to
MLflow, so distances are read from the trial folders on disk).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rmask_tune.analysis.landscape import read_run
from rmask_tune.errors import RmaskError


@dataclass
class RunDistance:
    """One run: its settings, results and the norm of its trained deltas."""

    run: str
    model: str
    task: str
    method: str
    ratio: float | None
    lr: float
    seed: int
    trainable_params: int
    distance: float  # ||delta||_2
    rms: float  # ||delta||_2 / sqrt(trainable values)
    dev_metric: float | None
    test_metric: float | None
    status: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders: each path itself when it holds metrics.json, else its sub-folders that do."""
    runs: dict[Path, None] = {}  # ordered and without repeats
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            runs[path.resolve()] = None
            continue
        found = sorted(p.parent for p in path.glob("*/metrics.json")) if path.is_dir() else []
        if not found:
            raise RmaskError(f"{path} is neither a finished run nor a folder of runs (no metrics.json)")
        runs.update((run.resolve(), None) for run in found)
    return list(runs)


def run_distance(run_dir: str | Path) -> RunDistance:
    """The distance travelled by one finished Random Masking run."""
    from rmask_tune.masking.adapter import find_adapter, saved_values

    run_dir = Path(run_dir)
    metrics = read_run(run_dir)
    adapter = find_adapter(run_dir)
    if adapter is None:
        method = metrics["config"].get("method")
        raise RmaskError(f"run {run_dir} ({method}) has no Random Masking adapter: no masked deltas to measure")
    values = saved_values(adapter)
    count = sum(t.numel() for t in values.values())
    squares = sum(float(t.double().pow(2).sum()) for t in values.values())
    config = metrics["config"]
    return RunDistance(
        run=str(run_dir),
        model=config["model"],
        task=metrics.get("task", config["task"]),
        method=config["method"],
        ratio=config.get("ratio") if config.get("ratio") is not None else metrics.get("ratio"),
        lr=float(config["lr"]),
        seed=int(config.get("seed", 0)),
        trainable_params=count,
        distance=math.sqrt(squares),
        rms=math.sqrt(squares / count) if count else 0.0,
        dev_metric=metrics.get("dev_metric"),
        test_metric=metrics.get("test_metric"),
        status=metrics.get("status"),
    )


def best_per_ratio(rows: list[RunDistance]) -> list[RunDistance]:
    """Per (model, task, method, ratio), the finished run with the best dev metric."""
    best: dict[tuple, RunDistance] = {}
    for row in rows:
        if row.dev_metric is None or row.status == "diverged":
            continue
        key = (row.model, row.task, row.method, row.ratio)
        if key not in best or row.dev_metric > best[key].dev_metric:
            best[key] = row
    return sorted(best.values(), key=lambda r: (r.model, r.task, -(r.ratio or 0)))


def format_distances(rows: list[RunDistance]) -> str:
    """All runs (by ratio, then LR), then the best-dev run per ratio."""
    def line(r: RunDistance) -> str:
        dev = "-" if r.dev_metric is None else f"{r.dev_metric:.4f}"
        return (
            f"{r.ratio if r.ratio is not None else float('nan'):>9.3g} {r.lr:>9.3g} {r.trainable_params:>9} "
            f"{r.distance:>10.4g} {r.rms:>9.3g} {dev:>7} {r.status or '-':>9}  {r.run}"
        )

    header = f"{'ratio':>9} {'lr':>9} {'values':>9} {'||delta||':>10} {'rms':>9} {'dev':>7} {'status':>9}  run"
    ordered = sorted(rows, key=lambda r: (r.model, r.task, -(r.ratio or 0), r.lr))
    lines = [header, *map(line, ordered)]
    best = best_per_ratio(rows)
    if best:
        lines += ["best dev run per ratio:", header, *map(line, best)]
    return "\n".join(lines)


def plot_distances(rows: list[RunDistance], path) -> None:
    """||delta|| vs ratio (log-log): every run coloured by LR, the best-dev run per ratio joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    shown = [r for r in rows if r.ratio is not None and r.distance > 0]
    points = ax.scatter(
        [r.ratio for r in shown], [r.distance for r in shown], c=[math.log10(r.lr) for r in shown], cmap="viridis"
    )
    fig.colorbar(points, ax=ax, label="log10 LR")
    best = sorted((r for r in best_per_ratio(shown)), key=lambda r: r.ratio)
    if best:
        ax.plot([r.ratio for r in best], [r.distance for r in best], "k--", label="best dev LR per ratio")
        ax.legend()
    ax.set(xscale="log", yscale="log", xlabel="mask ratio", ylabel="||delta||_2")
    ax.set_title("distance from the pretrained weights")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
