"""Small things of the command line: --version, the sweep summary's next commands, --quiet progress."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib.metadata import version
from io import StringIO

import pytest

from rmask_tune.cli import build_parser, main
from paths import DATA, REPO

DEMO = REPO / "search_spaces" / "demo.yaml"


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"rmask-tune {version('rmask-tune')}"


def test_sweep_summary_prints_the_report_and_ui_commands_of_that_sweep(tmp_path):
    from rmask_tune.report import resolve_source
    from rmask_tune.sweep import load_space
    from rmask_tune.sweep.results import print_summary, timing
    from rmask_tune.sweep.tracking import SweepTracker

    source = tmp_path / "my sweep.yaml"  # a path that needs quoting in a shell
    source.write_text(DEMO.read_text())
    space = load_space(source)
    tracker = SweepTracker(space.tracking_uri, space.experiment_name, space.name, "s1", space.storage / "mlartifacts")
    out = StringIO()
    print_summary([], space, tracker, out, timing([], 1, 0.0, 0.0, 0.0))
    lines = out.getvalue().splitlines()
    report = next(line for line in lines if "rmask-tune report" in line).split("rmask-tune ", 1)[1].split("  ")[0]
    ui = next(line for line in lines if "rmask-tune ui" in line).split("rmask-tune ", 1)[1].split("  ")[0]
    args = build_parser().parse_args(shlex.split(report))
    assert args.command == "report"
    assert resolve_source(args.source).experiment == space.experiment_name  # the sweep that just ran
    assert build_parser().parse_args(shlex.split(ui)).target == str(source)


@pytest.mark.needs_data
@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.slow
def test_train_shows_its_epochs_progress_unless_quiet(quiet):
    command = [
        sys.executable, "-m", "rmask_tune.cli", "train", "--model", "tiny-llama", "--task", "SST-2", "--ratio", "1e-3",
        "--lr", "1e-2", "--data-dir", str(DATA), "--epochs", "2", "--batch-size", "4", "--train-examples", "4",
        "--dev-examples", "4", "--eval-examples", "4", *(["--quiet"] if quiet else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    bars = [line for line in done.stderr.replace("\r", "\n").splitlines() if "%|" in line]
    if quiet:
        assert bars == []
    else:
        assert any(line.startswith("epochs:") and "2/2" in line for line in bars)
        assert any(line.startswith("epoch 1:") for line in bars)
