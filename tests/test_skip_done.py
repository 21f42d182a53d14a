"""``rmask-tune sweep FILE --skip-done SOURCE``: a sweep in two sittings on a real Ray with real MLflow sqlite
stores, a tiny Llama and real SST-2; the second sitting sees only the first one's export."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_sweep_ray import local_ray, mlflow_runs, run_cli, sweep_file  # noqa: F401 (local_ray: a fixture)

from rmask_tune.cli import main
from rmask_tune.report import load_summary
from rmask_tune.runstore.export import EXPORT_FILE, read_export
from rmask_tune.runstore.reader import TERMINAL, configuration_key, trial_of
from rmask_tune.sweep import load_space

NAME = "sittings"
FULL_LRS = "[1e-3, 3e-2, 1e-1]"


def grid_file(folder: Path, lrs: str, training: str = "epochs: 1", scheduler: str = "{type: none}") -> Path:
    """The sweep: Random Masking at 1% over ``lrs`` and the frozen model, one epoch each (unless ``training``
    says otherwise), every trial to the end (unless ``scheduler`` says otherwise), stored in ``folder``."""
    folder.mkdir(exist_ok=True)
    body = f"""\
        methods:
          random_masking: {{ratios: ["1%"], lr: {lrs}}}
          none: {{}}
        training: {{{training}, batch_size: 4}}
        scheduler: {scheduler}
        """
    return sweep_file(folder, NAME, body)


def add_trial_run(storage: Path, lr: str, status: str, unlogged: tuple[str, ...] = ()) -> None:
    """A trial run as another sitting logged it: the settings of the store's 1e-3 run at ``lr`` (as
    written) less the params ``unlogged`` (a sweep from before they were logged), ending ``status``."""
    from mlflow.entities import Metric, Param

    client, trials, parent = mlflow_runs(storage, NAME)
    model = next(r for r in trials if r.data.params["lr"] == "0.001")
    run = client.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": parent.info.run_id, "rmask.role": "trial", "rmask.trial_id": f"other-{lr}",
        "rmask.status": status})
    now = int(time.time() * 1000)
    metrics = [] if status == "errored" else [
        Metric(key, value, now, 1) for key, value in
        (("dev_metric", 0.5), ("best_dev_metric", 0.5), ("test_metric", 0.5), ("epochs_completed", 1))]
    params = {key: value for key, value in {**model.data.params, "lr": lr}.items() if key not in unlogged}
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FAILED" if status == "errored" else "FINISHED")


@pytest.fixture(scope="module")
def first_sitting(local_ray, tmp_path_factory) -> Path:
    """The first sitting's export: Random Masking at 1e-3 and the frozen model ran; another sitting's runs in
    the same store ended 0.1 (its LR written as float arithmetic left it, by a sweep that did not yet log
    the schedule, optimizer or method options), errored at 0.03 and was stopped by ASHA at 0.3."""
    tmp = tmp_path_factory.mktemp("first")
    run_cli(["sweep", str(grid_file(tmp, "[1e-3]"))])
    storage = tmp / NAME
    add_trial_run(storage, "0.10000000000000002", "finished", unlogged=("schedule", "optimizer", "method_options"))
    add_trial_run(storage, "0.03", "errored")
    add_trial_run(storage, "0.3", "stopped")
    export = tmp / "first.json.gz"
    run_cli(["export", str(storage), "--out", str(export)])
    (storage / "mlflow.db").rename(storage / "gone.db")  # a fresh machine: only the export travels
    return export


@pytest.mark.slow
def test_second_sitting_runs_only_the_trials_the_first_did_not_end(first_sitting, tmp_path):
    full = grid_file(tmp_path, FULL_LRS)
    out = run_cli(["sweep", str(full), "--skip-done", str(first_sitting)])
    assert f"skipping 3 of 4 trials already done in {first_sitting}\n" in out
    storage = tmp_path / NAME
    _, trials, parent = mlflow_runs(storage, NAME)
    assert [(r.data.params["lr"], r.data.tags["rmask.status"]) for r in trials] == [("0.03", "finished")]
    assert parent.data.params["num_trials"] == "1" and parent.data.params["skipped_done"] == "3"
    # continuing this sitting leaves the same trials out: nothing was left unstarted
    assert "not started" not in run_cli(["sweep", str(full), "--resume"])

    report = tmp_path / "report"
    run_cli(["report", str(first_sitting), "--also", str(storage), "--out", str(report), "--bootstrap", "50"])
    combined = [trial_of(r) for r in read_export(report / EXPORT_FILE).records]
    ended = {t.configuration for t in combined if t.status in TERMINAL}
    grid = {configuration_key(*(p[k] for k in ("model", "task", "method", "ratio", "lr", "seed")))
            for p in load_space(full).grid_trials()}
    assert ended == grid | {configuration_key("tiny-llama", "SST-2", "random_masking", 0.01, 0.3, 0)}  # + off-grid
    curves = load_summary(str(report / EXPORT_FILE), bootstrap=50).curves
    lrs = sorted(curves[("tiny-llama", "SST-2", "random_masking", 0.01)].dev)
    assert lrs == pytest.approx([1e-3, 3e-2, 1e-1, 3e-1])  # the errored 0.03 gave way to the new run

    third = grid_file(tmp_path / "third", FULL_LRS)
    out = run_cli(["sweep", str(third), "--skip-done", str(first_sitting), "--skip-done", str(storage)])
    assert out == (f"skipping 4 of 4 trials already done in {first_sitting}, {storage}\n"
                   f"nothing left to run: every trial of {third} is done in {first_sitting}, {storage}\n")
    assert not (tmp_path / "third" / NAME).exists()  # no sweep started


def test_dry_run_lists_what_is_left(first_sitting, tmp_path):
    out = run_cli(["sweep", str(grid_file(tmp_path, FULL_LRS)), "--skip-done", str(first_sitting), "--dry-run"])
    assert out.startswith(f"skipping 3 of 4 trials already done in {first_sitting}\n{NAME}: 1 trials (grid search")
    assert "  tiny-llama SST-2 random_masking 1%: 0.03\n" in out
    assert "  tiny-llama SST-2 none: all done in the --skip-done source(s)\n" in out
    assert "  trials: 1\n" in out


def test_a_trial_stopped_by_asha_is_done_only_for_a_sweep_that_stops_trials_early(first_sitting, tmp_path):
    """The first sitting's 0.3 run was stopped by ASHA: a sweep with ASHA takes it as done, one without a scheduler
    (every trial to the end, as a seeds sweep at the best LRs wants) trains it again."""
    lrs = "[1e-3, 3e-2, 1e-1, 3e-1]"
    to_the_end = run_cli(["sweep", str(grid_file(tmp_path, lrs)), "--skip-done", str(first_sitting), "--dry-run"])
    assert to_the_end.startswith(f"skipping 3 of 5 trials already done in {first_sitting}\n")
    assert "  tiny-llama SST-2 random_masking 1%: 0.03, 0.3\n" in to_the_end
    asha = grid_file(tmp_path / "asha", lrs, scheduler="{type: asha, grace_period: 1, max_epochs: 1}")
    early = run_cli(["sweep", str(asha), "--skip-done", str(first_sitting), "--dry-run"])
    assert early.startswith(f"skipping 4 of 5 trials already done in {first_sitting}\n")
    assert "  tiny-llama SST-2 random_masking 1%: 0.03\n" in early


def test_asha_ranks_a_later_sitting_against_the_trials_it_skips(first_sitting, tmp_path):
    """The trials --skip-done leaves out stand in their cell's ASHA rungs with the dev metric each run logged per
    epoch, so the sitting's first trial of the cell is ranked against them rather than passing unopposed."""
    from rmask_tune.sweep import SweepOptions, resolve_space
    from rmask_tune.sweep.search import tune_scheduler

    asha = grid_file(tmp_path, "[1e-3, 3e-2, 1e-1, 3e-1]", scheduler="{type: asha, grace_period: 1, max_epochs: 1}")
    space = resolve_space(load_space(asha), SweepOptions(skip_done=(str(first_sitting),)))
    first = next(t for t in map(trial_of, read_export(first_sitting).records) if t.lr == 1e-3)
    masked = {t.point["lr"]: t.dev_by_epoch for t in space.ended if t.point["method"] == "random_masking"}
    assert masked == {1e-3: ((1, first.dev),), 0.1: ((1, 0.5),), 0.3: ((1, 0.5),)}  # 0.03 errored: not done
    scheduler = tune_scheduler(space)
    ((milestone, recorded),) = scheduler._bracket(("tiny-llama", "SST-2", "random_masking", 0.01))._rungs
    assert milestone == 1 and sorted(recorded.values()) == sorted([first.dev, 0.5, 0.5])


@pytest.mark.parametrize("training", ["epochs: 2", "epochs: 1, schedule: linear", "epochs: 1, optimizer: sgd",
                                      "epochs: 1, precision: bf16"])
def test_trials_with_other_settings_are_not_done(first_sitting, tmp_path, training):
    """A changed setting makes every trial new, the 0.1 run's too: a setting its sweep did not log counts as
    the default (constant schedule, AdamW), which these sweeps changed; the first sitting trained in fp32 (auto
    on CPU), which a bf16 sweep does not take as done."""
    other = grid_file(tmp_path, FULL_LRS, training)
    out = run_cli(["sweep", str(other), "--skip-done", str(first_sitting), "--dry-run"])
    assert out.startswith(f"skipping 0 of 4 trials already done in {first_sitting}\n{NAME}: 4 trials")
    assert "  tiny-llama SST-2 random_masking 1%: 0.001, 0.03, 0.1\n" in out


def test_refused_with_optuna_with_resume_and_for_a_missing_source(first_sitting, tmp_path, capsys):
    optuna = sweep_file(tmp_path, "tpe", """\
        methods:
          random_masking: {ratios: ["1%"], lr: {min: 1e-3, max: 1e-1}}
        search: {type: optuna, num_samples: 2}
        """)
    cases = [
        (["sweep", str(optuna), "--skip-done", str(first_sitting)], "--skip-done needs a grid search: "),
        (["sweep", str(grid_file(tmp_path, FULL_LRS)), "--resume", "--skip-done", str(first_sitting)],
         "--skip-done applies when a sweep starts; --resume continues it without the trials it left out"),
        (["sweep", str(grid_file(tmp_path, FULL_LRS)), "--skip-done", str(tmp_path / "nowhere.json.gz")],
         "is not a sweep folder or YAML file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rmask-tune: error: ") and message in err and err.count("\n") == 1


def test_method_options_log_only_what_differs_from_the_defaults():
    """LoRA's r=8, alpha=16 are its defaults, so a run that gave them and one that did not (or an older sweep
    that logged no options) are the same configuration; r=16 is another."""
    from rmask_tune.sweep.callbacks import trial_params

    point = {"model": "tiny-llama", "task": "SST-2", "method": "lora", "ratio": None, "lr": 1e-3, "seed": 0}
    logged = [trial_params({**point, "method_options": options}, {"epochs": 1})["method_options"]
              for options in ({"r": 8, "alpha": 16}, {}, {"r": 16, "alpha": 16, "dropout": 0.1})]
    assert logged == ["{}", "{}", '{"dropout": 0.1, "r": 16}']


def test_auto_precision_expects_the_trials_device():
    from rmask_tune.sweep.done import expected_precisions

    assert expected_precisions({}, gpus=0) == {"fp32", "unlogged"}
    assert expected_precisions({"precision": "auto"}, gpus=1) == {"bf16", "fp16", "unlogged"}
    assert expected_precisions({"device": "cpu"}, gpus=1) == {"fp32", "unlogged"}
    assert expected_precisions({"precision": "fp16"}, gpus=0) == {"fp16", "unlogged"}
