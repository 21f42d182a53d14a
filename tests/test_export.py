"""Per-example results of every trial (examples.json, in the trial folder and as an MLflow artifact) and a
sweep's compact export: a tiny sweep on a real Ray with a real MLflow sqlite store, a tiny Llama and real
SST-2; the report regenerated from the export alone equals the report from the store."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.report import build_report
from rmask_tune.runstore.export import EXPORT_FILE, NOT_RECORDED, RECORDED, encode_export, read_export
from rmask_tune.runstore.record import RunRecord
from rmask_tune.sweep.runner import set_environment
from rmask_tune.tasks import get_task
from rmask_tune.tasks.results import EXAMPLES_FILE, ExampleLog
from rmask_tune.trainer import run_trial
from paths import DATA

pytestmark = pytest.mark.needs_data
SMALL = dict(data_dir=str(DATA), epochs=2, batch_size=4, train_examples=8, dev_examples=6, test_examples=11, quiet=True)


def run_cli(argv: list[str]) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


# --- per-example results of one trial ---------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(task="SST-2", ratio=1e-3, lr=5e-2),  # accuracy
        dict(task="CB", ratio=1e-3, lr=5e-2, epochs=1),  # accuracy and macro-F1 (not a per-example mean)
        dict(task="SQuAD", ratio=1e-3, lr=1e-2, epochs=1, max_new_tokens=4),  # F1 / EM of generated answers
        dict(task="MultiRC", method="none"),  # per-question EM and F1a; zero-shot: one dev and one test evaluation
    ],
    ids=lambda s: s["task"],
)
@pytest.mark.slow
def test_recorded_per_example_results_recompute_the_reported_metrics(settings, tmp_path):
    result = run_trial({"model": "tiny-llama", **SMALL, **settings}, output_dir=tmp_path)
    log = ExampleLog.from_dict(json.loads((tmp_path / EXAMPLES_FILE).read_text()))
    task = get_task(settings["task"])
    assert (log.task, log.metric, log.scorer) == (task.name, task.metric, task.scorer.name)
    splits = task.load_splits(DATA, train_examples=8, dev_examples=6, test_examples=11, seed=0)
    assert log.splits["dev"]["uid"] == [ex.uid for ex in splits.dev]
    assert log.splits["test"]["uid"] == [ex.uid for ex in splits.test]
    # one dev evaluation per epoch, then the test of the best epoch's state; each recomputes what was reported
    assert [(e.split, e.epoch) for e in log.evaluations] == [
        *[("dev", r["epoch"]) for r in result["epochs"]], ("test", result["best_epoch"])]
    for record in result["epochs"]:
        assert log.scores(log.find("dev", record["epoch"])) == record["dev_metrics"]
    assert log.scores(log.find("test")) == result["test_metrics"]
    assert set(result["test_metrics"]) == {
        "SST-2": {"accuracy"}, "CB": {"accuracy", "macro_f1"}, "SQuAD": {"f1", "em"},
        "MultiRC": {"accuracy", "em", "f1a"}}[task.name]


def multirc_log() -> ExampleLog:
    """A MultiRC log of 13 options in 4 questions, one evaluation."""
    rng = np.random.default_rng(1)
    groups = [f"q{i}" for i in (0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)]
    labels = rng.integers(0, 2, len(groups)).tolist()
    predictions = rng.integers(0, 2, len(groups)).tolist()
    log = ExampleLog("MultiRC", "accuracy", "multirc")
    columns = {"correct": [int(p == y) for p, y in zip(predictions, labels)], "prediction": predictions,
               "label": labels, "group": groups}
    log.add("dev", 1, [f"{g}-a{i}" for i, g in enumerate(groups)], columns)
    return log


def test_a_resample_of_examples_is_scored_as_those_examples_would_be():
    from rmask_tune.tasks.base import ChoiceExample

    log = multirc_log()
    evaluation = log.find("dev", 1)
    columns = log.columns(evaluation)
    indices = [3, 3, 0, 12, 7, 7, 7, 1]  # a bootstrap draw: repeats allowed
    examples = [ChoiceExample(columns["group"][i] + f"-{k}", "", ("No", "Yes"), columns["label"][i],
                              group=columns["group"][i]) for k, i in enumerate(indices)]
    predictions = [columns["prediction"][i] for i in indices]
    assert log.scores(evaluation, indices) == get_task("MultiRC").evaluate(examples, predictions)


def test_examples_json_packs_bits_and_refuses_damaged_data():
    log = multirc_log()
    data = json.loads(json.dumps(log.to_dict()))
    assert isinstance(data["evaluations"][0]["correct"], str)  # 13 bits in 2 bytes, base64
    assert ExampleLog.from_dict(data) == log
    data["evaluations"][0]["n"] = 12
    with pytest.raises(RmaskError, match="12 dev examples, but dev has 13"):
        ExampleLog.from_dict(data)
    with pytest.raises(RmaskError, match="format 2"):
        ExampleLog.from_dict({**log.to_dict(), "format": 2})
    with pytest.raises(RmaskError, match="unknown scorer 'bleu'"):
        ExampleLog.from_dict({**log.to_dict(), "scorer": "bleu"})
    with pytest.raises(RmaskError, match="values other than 0 and 1"):
        ExampleLog("SST-2", "accuracy", "accuracy", {"dev": {"uid": ["a"]}},
                   [log.evaluations[0].__class__("dev", 1, {"correct": [2]})]).to_dict()


def test_a_part_sent_later_merges_into_the_whole():
    log = multirc_log()
    log.add("dev", 2, log.splits["dev"]["uid"], {**log.columns(log.find("dev", 1)), "correct": [1] * 13})
    first = log.since(0, set())
    first.evaluations = first.evaluations[:1]
    second = ExampleLog.from_dict(log.since(1, {"dev"}).to_dict())
    assert second.splits == {} and not second.complete  # the dev examples were sent with the first part
    first.merge(second)
    assert first == log and first.complete


@pytest.mark.slow
def test_a_trial_stopped_after_its_first_epoch_keeps_that_epochs_results_in_mlflow(tmp_path):
    """What a sweep's driver does with the epochs' reports of a trial ASHA stops before it finishes."""
    from mlflow import MlflowClient

    from rmask_tune.sweep.tracking import SweepTracker
    from rmask_tune.sweep.trainable import EpochReporter

    reports = []
    reporter = EpochReporter(reports.append, lambda: {"load_s": 0.0})
    result = run_trial({"model": "tiny-llama", "task": "CB", "ratio": 1e-3, "lr": 5e-2, **SMALL, "epochs": 3},
                       hooks=[reporter])
    assert len(reports) == 2  # epochs 1 and 2; the final one is the trainable's to send
    assert "splits" in reports[0]["examples_part"] and '"splits":{}' in reports[1]["examples_part"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "stopped", "stopped", "s1", tmp_path / "artifacts")
    tracker.open({})
    run_id = tracker.trial_run("t1", "trial", {"model": "tiny-llama"})
    tracker.log_epoch("t1", reports[0])  # ASHA stops it here
    folder = tmp_path / "download"
    text = Path(MlflowClient(uri).download_artifacts(run_id, EXAMPLES_FILE, str(folder))).read_text()
    log = ExampleLog.from_dict(json.loads(text))
    assert [(e.split, e.epoch) for e in log.evaluations] == [("dev", 1)]
    assert log.scores(log.evaluations[0]) == result["epochs"][0]["dev_metrics"]
    tracker.log_epoch("t1", reports[1])  # ... or one epoch later
    log = ExampleLog.from_dict(json.loads(Path(MlflowClient(uri).download_artifacts(run_id, EXAMPLES_FILE, str(folder))).read_text()))
    assert [log.scores(e) for e in log.evaluations] == [r["dev_metrics"] for r in result["epochs"][:2]]


# --- a sweep on Ray with MLflow, its export, and the report from the export alone ------------------


SWEEP = """\
    name: exported
    models: [tiny-llama]
    tasks: [SST-2]
    data: {{data_dir: {data}, train_examples: 8, dev_examples: 8, test_examples: 12}}
    storage_path: {storage}
    methods:
      random_masking:
        ratios: ["1%"]
        lr: [1e-3, 3e-2, 3e-1, 1.0]
    training: {{epochs: 2, batch_size: 4}}
    scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
    max_concurrent_trials: 2
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep's storage folder, with one more trial run written as sweeps did before per-example
    results were recorded (metrics, no examples.json)."""
    set_environment()
    import ray

    tmp = tmp_path_factory.mktemp("export")
    spec = tmp / "exported.yaml"
    spec.write_text(textwrap.dedent(SWEEP.format(data=DATA, storage=tmp / "exported")))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        run_cli(["sweep", str(spec)])
    finally:
        ray.shutdown()
    storage = tmp / "exported"
    add_legacy_trial(storage)
    return storage


def add_legacy_trial(storage: Path) -> None:
    """A finished trial (seed 1) logged in the sweep's schema of before: no per-example artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exported").experiment_id
    parent = client.search_runs([experiment], "tags.`rmask.role` = 'sweep'")[0].info.run_id
    run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "rmask.role": "trial",
                                              "rmask.trial_id": "legacy", "rmask.status": "finished"})
    params = {"model": "tiny-llama", "task": "SST-2", "method": "random_masking", "ratio": "0.01", "lr": "0.03",
              "seed": "1", "density": "none", "epochs": "2", "train_examples": "8", "dev_examples": "8",
              "test_examples": "12", "metric": "accuracy", "trainable_params": "100", "total_params": "10000"}
    now = int(time.time() * 1000)
    metrics = [Metric("dev_metric", v, now, e) for e, v in ((1, 0.5), (2, 0.625))]
    metrics += [Metric(k, v, now, 2) for k, v in (("best_dev_metric", 0.625), ("test_metric", 0.5),
                                                  ("epochs_completed", 2), ("wall_time_s", 3.0))]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.log_text(run.info.run_id, "{}", "metrics.json")
    client.set_terminated(run.info.run_id, "FINISHED")


def sweep_runs(storage: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("exported").experiment_id
    runs = client.search_runs([experiment], "tags.`rmask.role` = 'trial'")
    return client, [r for r in runs if r.data.tags["rmask.trial_id"] != "legacy"]


def artifact_log(client, run_id: str, folder: Path) -> ExampleLog:
    return ExampleLog.from_dict(json.loads(Path(client.download_artifacts(run_id, EXAMPLES_FILE, folder)).read_text()))


@pytest.mark.slow
def test_every_trial_run_holds_its_per_example_results(sweep, tmp_path):
    client, runs = sweep_runs(sweep)
    assert len(runs) == 4
    statuses = set()
    for run in runs:
        run_id, status = run.info.run_id, run.data.tags["rmask.status"]
        statuses.add(status)
        log = artifact_log(client, run_id, tmp_path / run_id)
        assert log.complete and len(log.splits["dev"]["uid"]) == 8
        # each dev epoch MLflow holds is recomputed exactly from that epoch's per-example results
        history = {m.step: m.value for m in client.get_metric_history(run_id, "dev_metric")}
        dev = {e.epoch: log.scores(e)["accuracy"] for e in log.evaluations if e.split == "dev"}
        assert dev == pytest.approx(history, abs=0) and dev
        if status == "stopped":  # ASHA ended it: dev results of the epochs it ran, no test
            assert [e.split for e in log.evaluations] == ["dev"] * len(history)
        if "test_metric" in run.data.metrics:
            assert log.scores(log.find("test"))["accuracy"] == run.data.metrics["test_metric"]
            folder = sweep / "trials" / run.data.tags["rmask.trial_id"]
            assert ExampleLog.from_dict(json.loads((folder / EXAMPLES_FILE).read_text())) == log
    assert "finished" in statuses


def test_report_regenerates_from_its_export_alone(sweep, tmp_path):
    first = build_report(str(sweep), out=tmp_path / "from-store", bootstrap=50).folder
    export = first / EXPORT_FILE
    data = json.loads(gzip.decompress(export.read_bytes()))
    by_trial = {t["tags"]["rmask.trial_id"]: t for t in data["trials"]}
    assert len(by_trial) == 5
    legacy = by_trial.pop("legacy")
    assert legacy["per_example"] == NOT_RECORDED and legacy["examples"] is None
    assert all(t["per_example"] == RECORDED for t in by_trial.values())
    assert len(data["example_sets"]) == 2  # every trial drew the same dev and test examples: stored once
    # the store is out of reach: the report comes from the export alone
    db = sweep / "mlflow.db"
    db.rename(sweep / "elsewhere.db")
    try:
        out = run_cli(["report", str(export), "--out", str(tmp_path / "from-export"), "--bootstrap", "50"])
    finally:
        (sweep / "elsewhere.db").rename(db)
    second = tmp_path / "from-export"
    assert f"report written to {second / 'index.html'}" in out
    laws = [json.loads((folder / "law.json").read_text()) for folder in (first, second)]
    for law in laws:
        law.pop("created")  # when the law was fitted
    assert laws[0] == laws[1]
    tables = [[line for line in (folder / "README.md").read_text().splitlines() if line.startswith("|")]
              for folder in (first, second)]
    assert tables[0] == tables[1] and len(tables[0]) > 5
    assert (first / "README.md").read_text() == (second / "README.md").read_text()
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
    # the regenerated report carries the export again, with the same trials
    again = read_export(second / EXPORT_FILE)
    assert again.records == read_export(export).records


def test_export_command_and_its_errors(sweep, tmp_path, capsys):
    out = tmp_path / "sweep.json.gz"
    assert f"to {out}" in run_cli(["export", str(sweep), "--out", str(out)])
    records = read_export(out).records
    assert len(records) == 5 and sum(r.examples is not None for r in records) == 4
    assert main(["export", str(sweep), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"rmask-tune: error: {out} exists; pass --overwrite or choose another --out"
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"kind": "something else"}')
    assert main(["report", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "is not a sweep export" in capsys.readouterr().err


def test_an_export_stays_small():
    """200 trials, 500 dev examples over 5 epochs and 1000 test examples each: well under a byte per
    evaluated example, and a few MB at most."""
    rng = np.random.default_rng(0)
    dev_uids, test_uids = [f"sst2-train-{i}" for i in range(500)], [f"sst2-dev-{i}" for i in range(1000)]
    records, evaluated = [], 0
    for index in range(200):
        log = ExampleLog("SST-2", "accuracy", "accuracy")
        for epoch in range(1, 6):
            log.add("dev", epoch, dev_uids, {"correct": rng.integers(0, 2, 500).tolist()})
        log.add("test", 3, test_uids, {"correct": rng.integers(0, 2, 1000).tolist()})
        evaluated += 5 * 500 + 1000
        records.append(RunRecord(
            f"run{index}", "FINISHED", index, index + 1,
            {"model": "tiny-llama", "task": "SST-2", "lr": repr(10 ** rng.uniform(-4, 0))},
            {"test_metric": rng.random(), "best_dev_metric": rng.random()}, {"rmask.status": "finished"},
            {"dev_metric": [(e, rng.random()) for e in range(1, 6)]}, log.to_dict()))
    size = len(encode_export("big", "sqlite:///x.db", records, 0))
    assert size / evaluated < 0.2 and size < 3 * 2**20
