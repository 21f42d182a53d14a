"""Nothing silent, nothing lost (issue 31): exit codes a script can trust, one owner for a store's integrity,
write before train, whole-folder report replacement, task names checked in one place, interrupted trials
counted as such. Each test reproduces one of the issue's failures on the code before the change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hostile import cli, real_export, snapshot, sweep_yaml, valid_law
from test_sweep_ray import local_ray, marked_env  # noqa: F401 - fixtures: a local Ray, a marked environment
from paths import DATA

CLI = [sys.executable, "-m", "rmask_tune.cli"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return real_export(tmp_path_factory.mktemp("export") / "sweep.json.gz")


@pytest.fixture
def law(tmp_path) -> Path:
    path = tmp_path / "law.json"
    path.write_text(json.dumps(valid_law()))
    return path


# ---------------------------------------------------------------- failure 6: task names


def test_recommend_normalises_the_task_as_train_and_sweep_do(law):
    base = ["recommend", "--law", law, "--ratio", "1e-3", "--model", "m", "--json"]
    canonical, lower = cli(base + ["--task", "SST-2"]), cli(base + ["--task", "sst-2"])
    assert canonical.code == lower.code == 0, lower.err
    assert json.loads(lower.out) == json.loads(canonical.out)  # the same LR and interval, task SST-2
    assert json.loads(lower.out)["task"] == "SST-2" and lower.err == ""


def test_recommend_refuses_an_unknown_task_and_warns_on_one_the_law_lacks(law):
    base = ["recommend", "--law", law, "--ratio", "1e-3", "--model", "m"]
    unknown = cli(base + ["--task", "sst-3"])
    assert unknown.one_line_error and "unknown task 'sst-3'" in unknown.err
    new = cli(base + ["--task", "cb", "--json"])
    assert new.code == 0
    warning = new.err.strip().splitlines()
    assert warning == [f"rmask-tune: warning: m/CB is not in the law (it has m/RTE, m/SST-2); using mean offset of "
                       "m's 2 tasks, plus their spread"], new.err
    assert json.loads(new.out)["basis"] == "new task"


# ---------------------------------------------------------------- failure 5: NaN in, NaN out


def test_a_nan_law_gives_no_lr_and_no_invalid_json(law):
    data = json.loads(law.read_text())
    data["shared"]["b"] = float("nan")
    law.write_text(json.dumps(data))
    done = cli(["recommend", "--law", law, "--ratio", "1e-3", "--model", "m", "--task", "SST-2", "--json"])
    assert done.one_line_error and "shared.b: input should be a finite number" in done.err
    assert done.out == ""


@pytest.mark.needs_data
def test_lr_from_a_nan_law_leaves_the_sweep_folder_startable(law, tmp_path):
    """Failure 3: the sweep stopped, --resume failed the same way, and a fresh start was refused."""
    data = json.loads(law.read_text())
    data["shared"]["b"] = float("nan")
    law.write_text(json.dumps(data))
    spec = tmp_path / "s.yaml"
    spec.write_text(sweep_yaml("s", tmp_path / "runs").replace("tiny-llama", "m"))
    spec.write_text(spec.read_text().replace("models: [m]", "models: [tiny-llama]"))
    done = cli(["sweep", spec, "--lr-from", law])
    assert done.one_line_error and "shared.b" in done.err, done.err
    assert not (tmp_path / "runs").exists()
    assert cli(["sweep", spec, "--dry-run"]).code == 0


# ---------------------------------------------------------------- failure 1: a mixed store


@pytest.mark.slow
def test_a_report_over_a_store_mixing_two_sweeps_names_the_mix(tmp_path, monkeypatch):
    """Two sweeps with other dev set sizes in one experiment (as rmask-tune wrote them before the store had an
    owner: the check is switched off to write the second) crashed report with IndexError."""
    import noisy_store

    from rmask_tune.sweep.tracking import SweepTracker

    law = noisy_store.NoisyLaw(ratios={1e-2: True, 1e-3: True})
    store = noisy_store.noisy_store(law)
    try:
        monkeypatch.setattr(noisy_store, "DEV", 100)
        monkeypatch.setattr(SweepTracker, "check_joinable", lambda *args: None)
        monkeypatch.setattr(SweepTracker, "__init__", _renamed(SweepTracker.__init__))
        noisy_store._fill(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", law, (1e-2,), True)
        before = snapshot(tmp_path)
        for argv in (["report", store, "--out", tmp_path / "r", "--bootstrap", "20"],
                     ["recommend", "--experiment", store, "--ratio", "1e-3"]):
            done = cli(argv)
            assert done.one_line_error, done.err
            assert ("experiment 'noisy-law' mixes sweeps: its m SST-2 trials ran with dev_examples 100 (20 trial(s)) "
                    "and 200 (18 trial(s))") in done.err
        assert snapshot(tmp_path) == before
    finally:
        import shutil

        shutil.rmtree(store, ignore_errors=True)


def _renamed(init):
    def second_sweep(self, uri, experiment, name, sweep_id, artifacts):
        init(self, uri, experiment, "second", "sweep-2", artifacts)
    return second_sweep


def test_the_store_has_one_owner_join_needs_the_same_settings(tmp_path):
    """SweepTracker.open on a real sqlite store: a second sweep is refused, --join with other settings too."""
    from rmask_tune.errors import RmaskError
    from rmask_tune.sweep.tracking import SweepTracker

    uri, settings = f"sqlite:///{tmp_path / 'mlflow.db'}", {"dev_examples": 200, "epochs": 2}
    first = SweepTracker(uri, "shared", "first", "s1", tmp_path / "art")
    first.open({}, settings)
    empty = SweepTracker(uri, "shared", "empty", "s0", tmp_path / "art")
    empty.open({}, {"dev_examples": 1})  # the first sweep has no trial yet: nothing to mix with
    first.trial_run("t1", "t1", {"model": "m", "task": "SST-2"})

    def second(sweep_id: str, theirs: dict, join: bool):
        return SweepTracker(uri, "shared", "second", sweep_id, tmp_path / "art").open({}, theirs, join=join)

    with pytest.raises(RmaskError, match="already holds the trials of sweep 'first'; pass --join"):
        second("s2", settings, join=False)
    with pytest.raises(RmaskError, match="ran with dev_examples 200, this sweep has 100; only sweeps with the same"):
        second("s3", {**settings, "dev_examples": 100}, join=True)
    assert second("s4", dict(settings), join=True)  # the same settings join


# ---------------------------------------------------------------- failure 4: report --overwrite


@pytest.mark.slow
def test_report_overwrite_replaces_the_folder_as_a_whole(export, tmp_path):
    out = tmp_path / "report"
    assert cli(["report", export, "--out", out, "--bootstrap", "20"]).code == 0
    first = set(os.listdir(out))
    assert "sweep-export.json.gz" in first and "law.json" in first
    (out / "stale-plot.png").write_bytes(b"old")
    (out / "probes.json").write_text('{"format": "rmask-tune probes v1", "probes": []}\n')  # an input: kept
    (out / "FINDINGS.md").write_text("hand-written\n")  # what the report does not write is the user's: kept
    (out / "parts").mkdir()
    (out / "parts" / "sitting-1.json.gz").write_bytes(b"part")
    done = cli(["report", export, "--out", out, "--overwrite", "--no-export", "--bootstrap", "20"])
    assert done.code == 0, done.err
    assert set(os.listdir(out)) == (first - {"sweep-export.json.gz"}) | {"probes.json", "FINDINGS.md", "parts"}
    assert (out / "parts" / "sitting-1.json.gz").read_bytes() == b"part"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".report.")]  # nothing left beside it


# ---------------------------------------------------------------- failures 8, 9: train


@pytest.mark.needs_data
def test_train_refuses_an_unwritable_output_before_training(tmp_path):
    """/proc is read-only even for root: the trial used to train, then fail writing (the work lost)."""
    argv = ["train", "--model", "tiny-llama", "--task", "SST-2", "--ratio", "1e-2", "--data-dir", DATA, "--epochs", "1",
            "--train-examples", "4", "--dev-examples", "4", "--eval-examples", "4"]
    done = cli(argv + ["--output", "/proc/rmask-tune-out"])
    assert done.one_line_error and "output folder /proc/rmask-tune-out is not writable" in done.err, done.err
    (tmp_path / "file").write_text("")
    done = cli(argv + ["--output", tmp_path / "file" / "out"])
    assert done.one_line_error and "is not a folder" in done.err, done.err


@pytest.mark.needs_data
@pytest.mark.slow
def test_ctrl_c_during_train_is_one_line_and_exit_130(tmp_path):
    command = CLI + ["train", "--model", "tiny-llama", "--task", "SST-2", "--ratio", "1e-2", "--data-dir", str(DATA),
                     "--epochs", "200",
                     "--train-examples", "64", "--dev-examples", "4", "--eval-examples", "4", "--batch-size", "2",
                     "--output", str(tmp_path / "out")]
    train = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen, deadline = "", time.monotonic() + 300
    while "epoch 1:" not in seen:  # training has started
        assert train.poll() is None and time.monotonic() < deadline, seen
        seen += train.stderr.read(1)
    train.send_signal(signal.SIGINT)
    stderr = seen + train.communicate(timeout=120)[1]
    assert train.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.replace("\r", "\n").strip().splitlines()[-1] == "rmask-tune: interrupted: train stopped by Ctrl+C"
    assert not (tmp_path / "out").exists()


@pytest.mark.needs_data
@pytest.mark.slow
def test_train_warns_when_a_split_is_smaller_than_asked(tmp_path):
    done = cli(["train", "--model", "tiny-llama", "--task", "CB", "--method", "none", "--data-dir", DATA,
                "--dev-examples", "8", "--eval-examples", "500", "--quiet"])
    assert done.code == 0, done.err
    assert "rmask-tune: warning: val split has 56 examples (< 500 asked): used whole as test" in done.err


# ---------------------------------------------------------------- failures 1 and 2 on real sweeps (local Ray)


def _frozen_sweep(tmp_path: Path, name: str, storage: Path, extra: str = "", data: Path = DATA, dev: int = 8) -> Path:
    """A one-trial sweep (the frozen model on 4 SST-2 dev examples)."""
    spec = tmp_path / f"{name}-{storage.name}.yaml"
    spec.write_text(f"name: {name}\nmodels: [tiny-llama]\ntasks: [SST-2]\nmethods:\n  none: {{}}\n"
                    f"data: {{data_dir: {data}, train_examples: 0, dev_examples: {dev}, test_examples: 4}}\n"
                    f"scheduler: {{type: none}}\nmax_failures: 0\nstorage_path: {storage}\n{extra}")
    return spec


@pytest.mark.needs_data
@pytest.mark.slow
def test_a_sweep_whose_trial_errored_exits_1_and_says_so(local_ray, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    spec = _frozen_sweep(tmp_path, "errs", tmp_path / "errs", data=empty)
    done = cli(["sweep", spec])
    assert done.code == 1, done.err[-2000:]
    assert "sweep incomplete: 1 errored of 1 trial(s)" in done.out
    assert done.err.strip().splitlines()[-1] == \
        "rmask-tune: error: sweep incomplete: 1 errored of 1 trial(s) (--allow-failures exits 0 all the same)"
    assert "Traceback" not in done.err
    again = cli(["sweep", _frozen_sweep(tmp_path, "errs", tmp_path / "errs-2", data=empty), "--allow-failures"])
    assert again.code == 0 and "sweep incomplete: 1 errored of 1 trial(s)" in again.out


@pytest.mark.needs_data
@pytest.mark.slow
def test_a_second_sweep_into_an_experiment_is_refused_unless_it_joins_with_the_same_settings(local_ray, tmp_path):
    first = tmp_path / "first"
    done = cli(["sweep", _frozen_sweep(tmp_path, "shared", first)])
    assert done.code == 0 and "sweep complete: all 1 trial(s) ended" in done.out, done.err[-2000:]
    store = f"mlflow: {{tracking_uri: 'sqlite:///{first / 'mlflow.db'}'}}\n"
    second = tmp_path / "second"
    other = _frozen_sweep(tmp_path, "shared", second, store, dev=4)  # the same name, fewer dev examples
    for argv, words in ((["sweep", other], "already holds the trials of sweep 'shared'; pass --join"),
                        (["sweep", other, "--join"], "ran with dev_examples 8, this sweep has 4")):
        done = cli(argv)
        assert done.one_line_error and words in done.err, done.err
        assert not (second / "sweep.json").exists()  # the folder can start again
    done = cli(["sweep", _frozen_sweep(tmp_path, "shared", second, store), "--join"])
    assert done.code == 0, done.err[-2000:]
    report = cli(["report", first, "--out", tmp_path / "report", "--bootstrap", "20"])
    assert report.code == 0, report.err
    assert "1 re-run trial(s) of an identical configuration" in (tmp_path / "report" / "README.md").read_text()


@pytest.mark.needs_data
@pytest.mark.slow
def test_a_killed_driver_takes_its_ray_processes_down(tmp_path, marked_env):
    """Failure 9: after a SIGKILL of the sweep's driver, Ray processes it started stayed alive."""
    from rmask_tune.sweep.reaper import _processes, descendants

    spec = tmp_path / "k.yaml"
    spec.write_text(sweep_yaml("k", tmp_path / "k", "training: {epochs: 50, batch_size: 2}\nscheduler: {type: none}\n"))
    sweep = subprocess.Popen(CLI + ["sweep", str(spec)], env=marked_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "k" / "trials").glob("*/attempts.jsonl")):  # a trial runs in a Ray worker
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    table = _processes()
    started = descendants(sweep.pid, table)
    assert len(started) >= 3  # Ray's GCS, raylet and the trial's worker at least
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        table = _processes()
        left = {pid for pid, start in started.items() if table.get(pid, (0, None))[1] == start}
        if not left:
            break
        time.sleep(0.5)
    assert not left, [" ".join(psutil.Process(pid).cmdline())[:80] for pid in left]
