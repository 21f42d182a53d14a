"""The paper's task protocol: candidate scoring (mean or sum), the classification objective, per-task
settings in sweep files, and the paper files themselves (seeds, context, LR grids, --dry-run)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.models import load_model, load_tokenizer
from rmask_tune.sweep import load_space
from rmask_tune.trainer import TrialConfig, prepare_trial
from rmask_tune.trainer.causal import CausalChoice, CausalLM, ChoiceItem
from paths import DATA, REPO

pytestmark = pytest.mark.needs_data
PAPER_FILES = ["opt125m", "opt1.3b", "opt13b", "llama2-7b"]


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random-init Llama with SmolLM2's tokenizer, and its CausalLM helper."""
    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    model = load_model("tiny-llama")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, CausalLM(tokenizer, model, max_length=64, device=torch.device("cpu"))


def dense_logprobs(model, context, continuation) -> list[float]:
    """log p of each continuation token from one unpadded forward of (context + continuation) with full logits."""
    ids = torch.tensor([list(context) + list(continuation)])
    logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [logprobs[len(context) + i - 1, token].item() for i, token in enumerate(continuation)]


def reference_scores(model, item: ChoiceItem, scoring: str) -> torch.Tensor:
    values = [dense_logprobs(model, item.context, c) for c in item.candidates]
    return torch.tensor([sum(v) / (len(v) if scoring == "mean" else 1) for v in values])


def reference_classification_loss(model, items, scoring: str) -> float:
    losses = [-F.log_softmax(reference_scores(model, item, scoring), 0)[item.label] for item in items]
    return torch.stack(losses).mean().item()


ITEMS = [
    ChoiceItem(tuple(range(20, 32)), ((101, 102, 103, 104), (205,), (306, 307)), 2),
    ChoiceItem((7, 8, 9), ((400, 401), (500, 501, 502, 503, 504)), 0),
]


@pytest.mark.parametrize("scoring", ["mean", "sum"])
@pytest.mark.slow
def test_classification_loss_is_cross_entropy_over_the_candidates_scores(tiny_llama, scoring):
    model, lm = tiny_llama
    choice = CausalChoice(lm, "classification", scoring)
    with torch.no_grad():
        scores = choice.scores(model, ITEMS)
        loss = choice.loss(model, ITEMS).item()
        for item, row in zip(ITEMS, scores):
            assert row.tolist() == pytest.approx(reference_scores(model, item, scoring).tolist(), abs=1e-4)
        assert loss == pytest.approx(reference_classification_loss(model, ITEMS, scoring), abs=1e-4)
    # mean and sum are different losses on candidates of several tokens
    other = "sum" if scoring == "mean" else "mean"
    assert abs(loss - reference_classification_loss(model, ITEMS, other)) > 1e-3


def test_mean_scoring_changes_the_prediction_when_candidate_lengths_differ(tiny_llama):
    """COPA-like: a one-token candidate against a longer one the model finds likelier token by token."""
    model, lm = tiny_llama
    context = tuple(range(50, 60))
    with torch.no_grad():
        next_logprobs = F.log_softmax(model(input_ids=torch.tensor([context])).logits[0, -1].float(), -1)
        unlikely = int(next_logprobs.argmin())
        likely = [int(next_logprobs.argmax())]
        for _ in range(3):  # the model's greedy continuation: each token likelier than `unlikely`
            likely.append(int(model(input_ids=torch.tensor([context + tuple(likely)])).logits[0, -1].argmax()))
    item = ChoiceItem(context, ((unlikely,), tuple(likely)), 1)
    mean, summed = reference_scores(model, item, "mean"), reference_scores(model, item, "sum")
    assert mean.argmax() == 1 and summed.argmax() == 0  # the case really separates the two scorings
    with torch.no_grad():
        assert CausalChoice(lm, "lm", "mean").predict(model, [item, item], batch_size=2) == [1, 1]
        assert CausalChoice(lm, "lm", "sum").predict(model, [item, item], batch_size=2) == [0, 0]


@pytest.mark.slow
def test_a_trial_trains_copa_as_classification_over_mean_scores():
    config = TrialConfig(
        model="tiny-llama", task="COPA", method="random_masking", ratio=1e-2, objective="classification",
        data_dir=str(DATA), epochs=1, batch_size=4, train_examples=4, dev_examples=2, test_examples=2, quiet=True,
    )  # fmt: skip
    assert config.scoring == "mean"  # the paper's scoring is the default
    trial = prepare_trial(config)
    batch = next(trial.train_batches())
    assert all(len(c) > 1 for item in batch for c in item.candidates)  # COPA's answers span several tokens
    loss = trial.loss(batch)
    assert loss.requires_grad
    with torch.no_grad():
        assert loss.item() == pytest.approx(reference_classification_loss(trial.model, batch, "mean"), abs=1e-4)
        assert abs(loss.item() - reference_classification_loss(trial.model, batch, "sum")) > 1e-3


def test_scoring_is_a_validated_trial_setting(capsys):
    with pytest.raises(RmaskError, match="unknown scoring 'median'; choose one of mean, sum"):
        TrialConfig(model="tiny-llama", task="COPA", scoring="median")
    assert TrialConfig.from_dict({"model": "m", "task": "t", "scoring": "sum"}).to_dict()["scoring"] == "sum"
    assert main(["train", "--model", "tiny-llama", "--task", "COPA", "--scoring", "median"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown scoring 'median'" in err


@pytest.mark.parametrize("name", PAPER_FILES)
def test_paper_files_carry_the_papers_protocol(name):
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.file.seeds == [0, 1, 2]
    configs = {}
    for point in space.grid_trials():
        if point["method"] == "random_masking" and point["seed"] == 1:
            configs.setdefault(point["task"], TrialConfig.from_dict(space.trial_config(point)))
    assert set(configs) == set(space.file.tasks)
    for task, config in configs.items():
        assert (config.max_length, config.scoring, config.epochs) == (2048, "mean", 5)
        expected_objective = "lm" if task in ("ReCoRD", "SQuAD", "DROP") else "classification"
        assert config.objective == expected_objective, task
    shape = {task: (c.dev_examples, c.batch_size, c.grad_accum) for task, c in configs.items()}
    assert shape["CB"] == (50, 4, 2) and shape["WSC"] == (50, 8, 1) and shape["MultiRC"] == (500, 2, 4)
    assert shape["ReCoRD"] == shape["DROP"] == (500, 1, 8) and shape["SST-2"] == (500, 8, 1)
    # every cell's best LR is expected inside its grid: half-decade grids reaching past the known optima
    grids = {method: grid.lr for method, grid in space.file.methods.items() if grid.lr}
    for lrs in grids.values():
        assert all(b / a == pytest.approx(10**0.5, rel=0.01) for a, b in zip(lrs, lrs[1:]))
    assert min(grids["random_masking"]) <= 1e-5 and max(grids["random_masking"]) >= 3
    if "full" in grids:
        assert min(grids["full"]) <= 1e-7 and max(grids["full"]) >= 1e-4


@pytest.mark.parametrize("name", PAPER_FILES)
@pytest.mark.slow
def test_every_paper_file_passes_dry_run_through_the_cli(name):
    run = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "sweep", str(REPO / "search_spaces" / f"{name}.yaml"), "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    trials = int(lines[0].split(": ", 1)[1].split()[0])
    assert trials == load_space(REPO / "search_spaces" / f"{name}.yaml").num_trials() > 0
    assert "  CB trials: dev_examples 50, batch_size 4, grad_accum 2" in lines
    assert "  ReCoRD trials: batch_size 1, grad_accum 8, objective lm" in lines


def test_smollm2_files_keep_the_scoring_and_objective_of_the_committed_report():
    for path in sorted((REPO / "search_spaces").glob("smollm2-135m*.yaml")):
        if path.stem.startswith("smollm2-135m-tasks"):
            continue  # the law across tasks (and its check runs) runs under the paper's protocol
        settings = load_space(path).settings()
        assert (settings["scoring"], settings["objective"]) == ("sum", "lm"), path.name


GOOD = f"""\
name: tasks
models: [tiny-llama]
tasks: [SST-2, CB, SQuAD]
methods:
  random_masking:
    ratios: ["1%"]
    lr: [1e-2]
training: {{epochs: 1, batch_size: 4, objective: classification}}
data: {{data_dir: {DATA}, train_examples: 8, dev_examples: 8, test_examples: 8}}
task_settings:
  CB: {{dev_examples: 3, batch_size: 2, grad_accum: 2, scoring: sum}}
  SQuAD: {{objective: lm}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_task_settings_override_the_shared_ones_for_their_task_only(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    configs = {p["task"]: TrialConfig.from_dict(space.trial_config(p)) for p in space.grid_trials()}
    cb, sst2, squad = configs["CB"], configs["SST-2"], configs["SQuAD"]
    assert (cb.dev_examples, cb.batch_size, cb.grad_accum, cb.scoring, cb.objective) == (3, 2, 2, "sum", "classification")
    assert (sst2.dev_examples, sst2.batch_size, sst2.grad_accum, sst2.scoring) == (8, 4, 1, "mean")
    assert squad.objective == "lm" and sst2.objective == "classification"
    # a file without task_settings gives the same trial points as before they existed
    plain = load_space(write(tmp_path, GOOD.split("task_settings:")[0].replace("SST-2, CB, SQuAD", "SST-2, CB")))
    assert {tuple(p) for p in plain.grid_trials()} == {("model", "task", "method", "ratio", "lr", "seed")}
    # changing a task's settings changes the sweep's fingerprint (a resume must not mix them)
    changed = load_space(write(tmp_path, GOOD.replace("dev_examples: 3", "dev_examples: 4")))
    assert changed.changed_section(space.fingerprint()) == "task_settings"


BAD = [
    ("unknown task", GOOD.replace("  CB: {", "  CBX: {"), "task_settings.CBX", 11, "unknown task 'CBX'"),
    ("task not swept", GOOD.replace("  CB: {", "  RTE: {"), "task_settings.RTE", 11, "not in this file's tasks"),
    ("unknown key", GOOD.replace("scoring: sum", "colour: red"), "task_settings.CB.colour", 11, "unknown task setting 'colour'"),
    ("bad value", GOOD.replace("scoring: sum", "scoring: median"), "task_settings.CB.scoring", 11, "unknown scoring 'median'"),
    ("swept key", GOOD.replace("scoring: sum", "lr: 0.1"), "task_settings.CB.lr", 11, "swept"),
    ("sweep-wide key", GOOD.replace("scoring: sum", "epochs: 3"), "task_settings.CB.epochs", 11, "same for every task"),
    ("not a mapping", GOOD.replace("  SQuAD: {objective: lm}", "  SQuAD: lm"), "task_settings.SQuAD", 12, "dictionary"),
    ("generation task as classification", GOOD.replace("  SQuAD: {objective: lm}\n", ""), "training.objective", 8,
     "SQuAD is a generation task"),
    ("generation task set to classification", GOOD.replace("SQuAD: {objective: lm}", "SQuAD: {objective: classification}"),
     "task_settings.SQuAD.objective", 12, "SQuAD is a generation task"),
]


@pytest.mark.parametrize("text,field,line,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_task_settings_are_one_line_errors_naming_file_and_line(tmp_path, capsys, text, field, line, words):
    path = write(tmp_path, text)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"rmask-tune: error: {path}:{line}: {field}: "), err
    assert words in err, err


@pytest.mark.slow
def test_task_settings_reach_the_trials_and_their_mlflow_runs(tmp_path):
    """A real sweep (local Ray, MLflow sqlite): CB trains with its own batch, accumulation, dev size and scoring."""
    from rmask_tune.sweep.runner import set_environment

    set_environment()
    import ray
    from mlflow import MlflowClient

    text = GOOD.replace("SST-2, CB, SQuAD", "SST-2, CB").replace("  SQuAD: {objective: lm}\n", "")
    path = write(tmp_path, text + f"storage_path: {tmp_path / 'store'}\n")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    try:
        assert main(["sweep", str(path)]) == 0
    finally:
        ray.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tasks").experiment_id], "tags.`rmask.role` = 'trial'")
    params = {run.data.params["task"]: run.data.params for run in runs}
    assert {k: params["CB"][k] for k in ("dev_examples", "batch_size", "grad_accum", "scoring", "objective")} == \
           {"dev_examples": "3", "batch_size": "2", "grad_accum": "2", "scoring": "sum", "objective": "classification"}
    assert (params["SST-2"]["dev_examples"], params["SST-2"]["batch_size"], params["SST-2"]["scoring"]) == ("8", "4", "mean")
    saved_files = sorted((tmp_path / "store" / "trials").glob("*/metrics.json"))
    assert len(saved_files) == 2
    for metrics_json in saved_files:
        saved = json.loads(metrics_json.read_text())
        steps = math.ceil(math.ceil(8 / saved["config"]["batch_size"]) / saved["config"]["grad_accum"])
        assert saved["optimizer_steps"] == steps
        if saved["task"] == "CB":
            assert saved["data"]["sizes"]["dev"] == 3 and saved["config"]["scoring"] == "sum"


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_passes_dry_run_with_a_priced_estimate(path, capsys, monkeypatch):
    """Every file in search_spaces/ (the paper's tables and figures, the offline sweeps) validates and is priced."""
    from rmask_tune.cli import main

    monkeypatch.chdir(REPO)  # data_dir paths in the files are relative to the repository root
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    space = load_space(path)
    assert f"trials: {space.num_trials()}" in out
    if all(model.startswith("tiny-") for model in space.file.models):  # test models have no stated cost
        assert "GPU-hours unavailable for tiny-" in out
    else:
        assert "GPU-hours: ~" in out and "unavailable" not in out
