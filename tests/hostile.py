"""Helpers for the tests that try the CLI as a hostile user would: run it in this process and see what it did,
valid files to break (a law.json, a sweep export, a sweep file), and a folder's snapshot to tell whether
anything in it changed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import traceback
from dataclasses import dataclass
from pathlib import Path

from rmask_tune.cli import main
from rmask_tune.law_record import LawPoint, ProbeCalibration
from rmask_tune.law import Law, fit_law, fit_shared
from paths import DATA



@dataclass
class Outcome:
    """What one CLI call did: its exit code (None when an exception escaped main), stdout, stderr."""

    code: int | None
    out: str
    err: str

    @property
    def one_line_error(self) -> bool:
        """Exit 2 with exactly one line on stderr, an rmask-tune error, and no traceback."""
        lines = self.err.strip().splitlines()
        return (self.code == 2 and len(lines) == 1 and lines[0].startswith("rmask-tune: error: ")
                and "Traceback" not in self.err)


def cli(argv: list[str]) -> Outcome:
    """Run ``rmask-tune ARGV`` in this process; an exception that escapes is recorded as a traceback on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as done:  # argparse
            code = done.code
        except Exception:  # noqa: BLE001 - the behaviour under test: a traceback instead of one line
            traceback.print_exc()
            code = None
    return Outcome(code, out.getvalue(), err.getvalue())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (and its mode): equal snapshots, nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def law_points() -> list[LawPoint]:
    """Optima of two tasks of model ``m`` at three ratios on a known law (``log10 lr* = -3.5 - 0.8 log10 r``)."""
    return [LawPoint(model="m", task=task, ratio=r, log10_lr=-3.5 + off - 0.8 * math.log10(r) + noise, se=0.1)
            for task, off in (("SST-2", 0.0), ("RTE", 0.3))
            for r, noise in ((1e-2, 0.02), (1e-3, -0.03), (1e-4, 0.01))]


PROBE_CALIBRATION = {"c": 0.5, "n": 2, "c_by_model": {"m": 0.5}, "log10_sd": 0.1,
                     "points": [{"model": "m", "lr": 1e-3, "lambda_max": 500.0},
                                {"model": "m", "lr": 2e-3, "lambda_max": 240.0}],
                     "probe": {"batches": 1, "batch_size": 2, "iters": 3}}


def valid_law() -> dict:
    """A law.json (format v2, shared fit over two pairs, a pooled line, a probe calibration) as a dict."""
    points = law_points()
    law = Law(pooled=fit_law(points, bootstrap=50), models={}, points=points,
              probe_calibration=ProbeCalibration.from_json(PROBE_CALIBRATION), shared=fit_shared(points))
    return json.loads(json.dumps(law.to_dict()))


def sweep_yaml(name: str, storage: Path, body: str = "") -> str:
    """A small valid sweep file's text (tiny-llama on SST-2), plus ``body``."""
    return (f"name: {name}\nmodels: [tiny-llama]\ntasks: [SST-2]\n"
            f"data: {{data_dir: {DATA}, train_examples: 8, dev_examples: 8, test_examples: 8}}\n"
            f"storage_path: {storage}\n"
            "methods:\n  random_masking:\n    ratios: ['1%']\n    lr: [1e-3, 1e-2]\n" + body)


def real_export(path: Path) -> Path:
    """A real export at ``path``: a noisy sqlite store written by the sweep's own tracker (2 ratios, 9 LRs,
    2 seeds and the frozen model; tests/noisy_store.py), exported by the CLI."""
    import shutil

    from noisy_store import NoisyLaw, noisy_store

    store = noisy_store(NoisyLaw(ratios={1e-2: True, 1e-3: True}))
    try:
        done = cli(["export", store, "--out", path])
        assert done.code == 0, done.err
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return path
