"""`rmask-tune sweep --dry-run`'s estimate: trials, optimizer steps and GPU-hours from the stated costs."""

from __future__ import annotations


import pytest

from rmask_tune.cli import main
from rmask_tune.sweep import load_space
from rmask_tune.sweep.budget import TRAIN_SPLIT_SIZES
from rmask_tune.sweep.cost import FULL_FT_FACTOR, MODEL_COSTS, STEP_FLOOR_S, sweep_cost
from paths import REPO

SPACES = REPO / "search_spaces"

SMALL = """\
name: small-cost
models: [{model}]
tasks: [SST-2, RTE]
methods:
  random_masking:
    ratios: ["1%"]
    lr: [1e-3, 1e-2]
  full:
    lr: [1e-5]
  none: {{}}
seeds: [0, 1]
training: {{epochs: 2, batch_size: 8, grad_accum: 2, max_length: 64}}
data: {{train_examples: 100, dev_examples: 20, test_examples: 30}}
scheduler: {{type: none}}
"""


def _write(tmp_path, model):
    path = tmp_path / f"{model}.yaml"
    path.write_text(SMALL.format(model=model))
    return path


def test_estimate_is_the_hand_computed_product(tmp_path):
    cost = sweep_cost(load_space(_write(tmp_path, "opt-13b")))
    step, example = MODEL_COSTS["opt-13b"].step_s, MODEL_COSTS["opt-13b"].eval_s
    # 100 examples / batch 8 = 13 micro-batches = 7 steps (accumulating 2) per epoch, 2 epochs
    steps = 7 * 2
    # a step of 8 x 2 sequences is two reference steps (8 sequences) at the task's length / 256 tokens:
    # SST-2 14 tokens, RTE 86 tokens capped at max_length 64; evaluation scores both candidates
    sst2_step, rte_step = step * 14 / 256 * 2, step * 64 / 256 * 2
    sst2_eval, rte_eval = example * 14 / 256 * 2, example * 64 / 256 * 2
    assert sst2_step > STEP_FLOOR_S * 2  # 13B is FLOP-bound, not launch-bound, even at 14 tokens
    evaluated = 20 * 2 + 30  # dev after each of 2 epochs, test once
    masking = 2 * 2 * (steps * (sst2_step + rte_step) + evaluated * (sst2_eval + rte_eval))  # 2 LRs x 2 seeds
    full = 2 * (steps * FULL_FT_FACTOR * (sst2_step + rte_step) + evaluated * (sst2_eval + rte_eval))
    frozen = 2 * (20 + 30) * (sst2_eval + rte_eval)  # no steps, dev once
    assert cost.trials == 2 * (2 * 2 + 2 + 2) == 16
    assert cost.steps == 2 * (2 * 2 + 2) * steps
    assert cost.gpu_hours == pytest.approx((masking + full + frozen) / 3600, rel=1e-9)
    assert cost.unpriced == []


def test_small_models_are_priced_at_the_launch_bound_floor(tmp_path):
    cost = sweep_cost(load_space(_write(tmp_path, "opt-125m")))
    # opt-125m's FLOP time for a step is far below the floor: every step costs the floor per micro-batch
    assert MODEL_COSTS["opt-125m"].step_s * 64 / 256 * 2 < STEP_FLOOR_S
    step_seconds = cost.steps * STEP_FLOOR_S * 2
    assert step_seconds / 3600 < cost.gpu_hours < step_seconds / 3600 * 1.5


def test_dry_run_prints_the_estimate_block(tmp_path, capsys):
    assert main(["sweep", str(_write(tmp_path, "opt-13b")), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cost = sweep_cost(load_space(_write(tmp_path, "opt-13b")))
    block = out[out.index("Estimate for small-cost:"):]
    assert "trials: 16" in block and f"optimizer steps: {cost.steps:,}" in block
    assert f"GPU-hours: ~{cost.gpu_hours:,.1f}" in block and "not measured" in block
    assert "ASHA" not in block  # this file has no ASHA scheduler to cut it


def test_unknown_model_leaves_the_estimate_unavailable_without_failing(tmp_path, capsys):
    assert main(["sweep", str(_write(tmp_path, "tiny-llama")), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours unavailable for tiny-llama" in out and "GPU-hours: ~" not in out
    assert sweep_cost(load_space(_write(tmp_path, "tiny-llama"))).unpriced == ["tiny-llama"]


@pytest.mark.parametrize("name", ["opt125m", "opt1.3b", "opt13b", "opt1.3b-full-data", "opt125m-long-training"])
def test_paper_files_are_priced(name):
    space = load_space(SPACES / f"{name}.yaml")
    cost = sweep_cost(space)
    assert cost.unpriced == [] and cost.trials == space.num_trials() and cost.gpu_hours > 0


def test_full_data_file_trains_on_each_whole_split_but_its_dev_set():
    space = load_space(SPACES / "opt1.3b-full-data.yaml")
    for task in space.file.tasks:
        settings = {**space.settings(), **space.task_settings(task)}
        assert settings["train_examples"] + settings["dev_examples"] == TRAIN_SPLIT_SIZES[task], task
    assert "full" in load_space(SPACES / "opt13b.yaml").file.methods  # the paper's 13B full fine-tuning row


def test_long_training_file_trains_ten_times_longer_without_early_stopping():
    space = load_space(SPACES / "opt125m-long-training.yaml")
    assert space.epochs == 50 and space.file.scheduler.type == "none"
    for ratio in space.file.methods["random_masking"].ratios:  # each grid spans 2.5 decades below its top LR
        lrs = space.lr_grid("opt-125m", "random_masking", ratio)
        assert max(lrs) / min(lrs) == pytest.approx(10**2.5, rel=0.01)
