"""A sweep's outcome: each trial's status and numbers, the epochs ASHA saved, timing, and the summary table."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from rmask_tune.sweep.plan import SweepSpace


def trial_status(result: dict | None, errored: bool) -> str:
    """finished / diverged (it ran to its end), stopped (ASHA ended it early) or errored."""
    if errored:
        return "errored"
    if result and result.get("final"):
        return result.get("status", "finished")
    return "stopped"


def describe(point: dict) -> str:
    """A trial in a few words: ``random_masking 0.1% lr=0.0316 SST-2 opt-125m seed 0``."""
    parts = [point["method"]]
    if point.get("ratio") is not None:
        parts.append(f"{point['ratio'] * 100:g}%")
    if point.get("lr") is not None:
        parts.append(f"lr={point['lr']:.3g}")
    return " ".join(parts + [point["task"], point["model"], f"seed {point['seed']}"])


def summary_rows(results, interrupted: set[str] = frozenset()) -> list[dict]:
    """One row per trial from Tune's results: what it was, how it ended, its numbers and timing.
    ``interrupted`` holds the ids of trials the sweep's interruption cut short (they say so)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        point = result.config["trial"]
        trial_id = metrics.get("trial_id") or Path(result.path).name
        rows.append(
            {
                **point,
                "trial_id": trial_id,
                "status": "interrupted" if trial_id in interrupted else trial_status(metrics, result.error is not None),
                "epochs": int(metrics.get("epoch", 0)),
                "dev": metrics.get("best_dev_metric", math.nan),
                "test": metrics.get("test_metric", math.nan),
                "compute_s": metrics.get("compute_s", math.nan),
                "timestamp": metrics.get("timestamp", 0),
                "pid": metrics.get("pid"),
                "cache_hit": metrics.get("model_cache_hits", 0) > 0,
                "replayed": bool(metrics.get("replayed", False)),
                "error": _last_line(result.error) if result.error else None,
            }
        )
    return sorted(rows, key=_row_order)


def _row_order(row: dict) -> tuple:
    return (row["model"], row["task"], row["method"], -(row["ratio"] or 0), row["lr"] or 0, row["seed"])


def timing(rows: list[dict], slots: int, started: float, ray_ready: float, wall: float) -> dict:
    """Where the sweep's wall time went, over the trials that ran in this session (since ``started``).

    The per-trial overhead is the slot time not spent in trial compute, ``(wall x slots - compute) / trials``:
    Ray and Tune start-up, worker start-up, model loading, scheduling and logging.
    """
    ran = [r for r in rows if r["timestamp"] >= started and not r["replayed"] and math.isfinite(r["compute_s"])]
    compute = sum(r["compute_s"] for r in ran)
    startup_s = ray_ready - started
    return {
        "wall_s": wall,
        "startup_s": startup_s,
        "trials": len(ran),
        "compute_s": compute,
        "slots": slots,
        "overhead_s": (wall * slots - compute) / len(ran) if ran else math.nan,
        "overhead_after_startup_s": ((wall - startup_s) * slots - compute) / len(ran) if ran else math.nan,
        "workers": len({r["pid"] for r in ran if r["pid"] is not None}),
        "cache_hits": sum(r["cache_hit"] for r in ran),
    }


def epoch_savings(rows: list[dict], epochs: int) -> dict:
    """Trial-epochs trained against the full grid (every trial for all its epochs; ``none`` has one)."""
    full = trained = by_asha = by_divergence = 0
    for row in rows:
        if row["status"] == "interrupted":
            continue  # neither trained to its end nor saved: --resume runs it again
        planned = 1 if row["method"] == "none" else epochs
        full += planned
        trained += row["epochs"]
        if row["status"] == "stopped":
            by_asha += planned - row["epochs"]
        elif row["status"] == "diverged":
            by_divergence += planned - row["epochs"]
    return {"full": full, "trained": trained, "saved_by_asha": by_asha, "saved_by_divergence": by_divergence}


@dataclass(frozen=True)
class SweepOutcome:
    """Whether a sweep did all it was asked: every trial ended (finished, diverged or stopped by ASHA)."""

    total: int  # trials the sweep runs
    errored: int
    interrupted: int  # cut short by an interruption; --resume runs them again
    unstarted: int

    @classmethod
    def of(cls, rows: list[dict], space: SweepSpace) -> SweepOutcome:
        """The outcome of ``rows`` against what ``space`` asks: its grid, or for a law search the trials the
        searcher proposed (it stops a cell by itself; a cut one still counts as interrupted)."""
        total = len(rows) if space.file.search.type == "law" else space.num_trials()
        return cls(total, sum(r["status"] == "errored" for r in rows), sum(r["status"] == "interrupted" for r in rows),
                   max(total - len(rows), 0))

    @property
    def complete(self) -> bool:
        return not (self.errored or self.interrupted or self.unstarted)

    def line(self) -> str:
        """One line saying so: ``sweep complete: ...`` or ``sweep incomplete: ...``."""
        if self.complete:
            return f"sweep complete: all {self.total} trial(s) ended"
        parts = [f"{n} {what}" for n, what in ((self.errored, "errored"), (self.interrupted, "cut short"),
                                              (self.unstarted, "not started")) if n]
        return f"sweep incomplete: {', '.join(parts)} of {self.total} trial(s)"


def print_summary(rows: list[dict], space: SweepSpace, tracker, stream, timing: dict) -> None:
    """The table of trials, the best one, the savings and timing, and where everything is."""
    header = ("model", "task", "method", "ratio", "lr", "seed", "status", "epochs", "dev", "test")
    table = [header] + [
        (
            r["model"], r["task"], r["method"],
            "-" if r["ratio"] is None else f"{r['ratio'] * 100:g}%",
            "-" if r["lr"] is None else f"{r['lr']:.3g}",
            str(r["seed"]), r["status"], str(r["epochs"]), _fmt(r["dev"]), _fmt(r["test"]),
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(), file=stream)
    finished = [r for r in rows if r["status"] in ("finished", "diverged") and math.isfinite(r["dev"])]
    if finished:
        best = max(finished, key=lambda r: r["dev"])
        print(f"\nbest dev {_fmt(best['dev'])} (test {_fmt(best['test'])}): {describe(best)}", file=stream)
    savings = epoch_savings(rows, space.epochs)
    saved = savings["full"] - savings["trained"]
    print(
        f"trial-epochs trained: {savings['trained']} of {savings['full']} in the full grid "
        f"(saved {saved}: {savings['saved_by_asha']} by ASHA, {savings['saved_by_divergence']} by divergence)",
        file=stream,
    )
    overhead = (
        f"per-trial overhead {timing['overhead_s']:.1f} s ({timing['overhead_after_startup_s']:.1f} s after start-up)"
        if timing["trials"] else "no trial ended here, so no per-trial overhead"
    )
    print(
        f"wall time {timing['wall_s']:.1f} s (Ray and Tune start-up {timing['startup_s']:.1f} s); "
        f"{timing['trials']} trials ran here with {timing['compute_s']:.1f} s of trial compute on {timing['slots']} slot(s) "
        f"in {timing['workers']} worker process(es), {timing['cache_hits']} from the model cache; {overhead}",
        file=stream,
    )
    for row in rows:
        if row["error"]:
            print(f"errored: {describe(row)}: {row['error']}", file=stream)
    outcome = SweepOutcome.of(rows, space)
    if space.file.search.type == "law":  # the searcher ran what it needed, not the grid
        print(f"law search: {len(rows)} of the grid's {space.num_trials()} trials ran (a cell stops once its optimum "
              "is bracketed or it shows no signal; docs/searcher.md)", file=stream)
    if outcome.interrupted or outcome.unstarted:
        print(f"interrupted: {outcome.interrupted} trial(s) cut short and {outcome.unstarted} not started; continue "
              f"with `rmask-tune sweep {space.source} --resume`", file=stream)
    print(outcome.line(), file=stream)
    print(f"Tune folder: {space.storage / 'tune'}", file=stream)
    print(f"trial outputs: {space.storage / 'trials'}", file=stream)
    print(f"MLflow store: {tracker.tracking_uri} (experiment '{tracker.experiment}')", file=stream)
    source = shlex.quote(str(space.source))
    print(f"next: rmask-tune report {source}   (tables, the LR law and its plots in reports/{tracker.experiment}/)", file=stream)
    print(f"      rmask-tune ui {source}       (browse the runs in the MLflow UI)", file=stream)


def _last_line(error: BaseException) -> str:
    """The exception at the bottom of a (Ray-wrapped) trial error: what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
