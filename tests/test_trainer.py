"""The trainer on tiny models and real data: scoring exactness, one run per task family, divergence, outputs, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rmask_tune.errors import RmaskError
from rmask_tune.masking import load_adapter, masked_layers, resolve_targets
from rmask_tune.models import load_model, load_tokenizer
from rmask_tune.trainer import TrialConfig, prepare_trial, run_trial, train_trial
from rmask_tune.trainer.causal import CausalChoice, CausalGeneration, CausalLM, ChoiceItem, GenerationItem
from rmask_tune.trainer.loop import DivergenceMonitor
from paths import DATA

pytestmark = pytest.mark.needs_data
SMALL = dict(data_dir=str(DATA), epochs=2, batch_size=4, train_examples=8, dev_examples=4, test_examples=4, quiet=True)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def causal_lm(name, tokenizer):
    model = load_model(name)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, CausalLM(tokenizer, model, max_length=64, device=torch.device("cpu"))


def reference_logprob(model, context, continuation):
    """Sum of log p(continuation | context) from one unpadded forward with full logits."""
    ids = torch.tensor([context + continuation])
    logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logprobs[len(context) + i - 1, token].item() for i, token in enumerate(continuation))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
@pytest.mark.slow
def test_scores_in_a_padded_batch_equal_unpadded_full_logit_scores(name, tokenizer):
    model, lm = causal_lm(name, tokenizer)
    contexts = [tuple(range(10, 40)), (7, 8), tuple(range(300, 312))]
    continuations = [(5, 6, 7), (9,), (11, 12)]
    with torch.no_grad():
        batched, lengths = lm.continuation_logprobs(model, contexts, continuations)
        expected = [reference_logprob(model, list(c), list(k)) for c, k in zip(contexts, continuations)]
    assert lengths.tolist() == [3, 1, 2]
    assert batched.tolist() == pytest.approx(expected, abs=1e-4)
    # OPT and GPT-2 learn absolute positions: under left padding the position ids must start at the first real token.
    with torch.no_grad():
        alone = [lm.continuation_logprobs(model, [c], [k])[0].item() for c, k in zip(contexts, continuations)]
    assert batched.tolist() == pytest.approx(alone, abs=1e-4)


def test_single_token_fast_path_equals_the_general_path(tokenizer):
    model, lm = causal_lm("tiny-llama", tokenizer)
    choice = CausalChoice(lm, "lm")
    items = [ChoiceItem(tuple(range(20, 20 + n)), ((101,), (202,), (303,)), 0) for n in (3, 17, 9)]
    with torch.no_grad():
        fast = torch.stack(choice.single_token_scores(model, items))
        general = torch.stack(choice.general_scores(model, items))
        chosen = choice.predict(model, items, batch_size=2)
    assert torch.allclose(fast, general, atol=1e-4)
    assert chosen == fast.argmax(-1).tolist()


def test_candidates_are_tokenized_apart_from_a_left_truncated_context(tokenizer):
    lm = CausalLM(tokenizer, load_model("tiny-llama"), max_length=8, device=torch.device("cpu"))
    from rmask_tune.tasks.base import ChoiceExample

    example = ChoiceExample("u", "one two three four five six seven eight nine ten", (" great", " terrible"), 1)
    item = CausalChoice(lm, "lm").encode(example)
    assert item.candidates == tuple(tuple(tokenizer(c, add_special_tokens=False).input_ids) for c in example.candidates)
    assert len(item.context) == 8 - max(len(c) for c in item.candidates)
    assert item.context == tuple(tokenizer(example.context).input_ids[-len(item.context) :])


def test_batched_greedy_generation_equals_one_at_a_time(tokenizer):
    model, lm = causal_lm("tiny-opt", tokenizer)
    generation = CausalGeneration(lm, max_new_tokens=5)
    items = [GenerationItem(tuple(range(5, 30)), (1,)), GenerationItem((100, 101, 102), (1,))]
    with torch.no_grad():
        together = generation.predict(model, items, batch_size=2)
        alone = [generation.predict(model, [item], batch_size=1)[0] for item in items]
    assert together == alone and all(together)


@pytest.mark.slow
def test_choice_run_trains_only_the_mask_and_keeps_the_best_epoch(tmp_path):
    config = TrialConfig(
        model="tiny-llama", task="SST-2", method="random_masking", ratio=1e-3, lr=5e-2, grad_accum=2, **SMALL
    )
    trial = prepare_trial(config)
    batch = next(trial.train_batches())
    assert len(batch) == 4 and trial.loss(batch).requires_grad
    before = {name: t.clone() for name, t in trial.model.state_dict().items()}
    records = []
    result = train_trial(trial, hooks=[records.append])

    changed = 0
    for name, tensor in trial.model.state_dict().items():
        if ".rmask_values." in name:
            changed += int((tensor != before[name]).sum())
        else:
            assert torch.equal(tensor, before[name]), name  # the base model is never written
    assert 0 < changed <= result["trainable_params"] and len(masked_layers(trial.model)) > 0

    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["final"] and "final" not in records[0]
    assert result["best_epoch"] in (1, 2) and result["dev_metric"] == max(r["dev_metric"] for r in records)
    # The model was put back into the best epoch's state: its dev score is the recorded best.
    assert trial.evaluate("dev")["accuracy"] == result["dev_metric"]
    assert result["test_metric"] == records[-1]["test_metric"] == result["test_metrics"]["accuracy"]
    assert result["status"] == "finished" and not result["diverged"]
    assert result["optimizer_steps"] == 2  # 2 epochs of 2 batches, accumulated in pairs


@pytest.mark.slow
def test_metrics_json_and_adapter_of_a_run(tmp_path):
    out = tmp_path / "run"
    result = run_trial(dict(model="tiny-llama", task="SST-2", ratio=1e-3, lr=5e-2, **SMALL), output_dir=out)
    saved = json.loads((out / "metrics.json").read_text())
    contract = {
        "model", "task", "method", "ratio", "density", "lr", "seed", "trainable_params", "total_params", "epochs",
        "best_epoch", "dev_metric", "test_metric", "test_metrics", "metric", "diverged", "status", "step_time_s",
        "peak_mem_bytes", "data", "config", "wall_time_s",
    }  # fmt: skip
    assert contract <= set(saved)
    assert saved["test_metric"] == result["test_metric"] and saved["metric"] == "accuracy"
    assert saved["data"]["sizes"] == {"train": 8, "dev": 4, "test": 4}
    assert saved["peak_mem_kind"] == "cpu_peak_rss_increase" and saved["step_time_s"] > 0
    assert TrialConfig.from_dict(saved["config"]) == TrialConfig.from_dict(result["config"])
    assert saved["artifacts"] == ["adapter"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    final = saved["epochs"][-1]
    assert final["final"] and {"best_dev_metric", "trainable_params", "total_params", "peak_mem_bytes"} <= set(final)

    # The adapter rebuilds the trained model: the same dev accuracy on a fresh base model.
    trial = prepare_trial(TrialConfig(model="tiny-llama", task="SST-2", method="none", **SMALL))
    load_adapter(trial.model, out / "adapter")
    assert trial.evaluate("dev")["accuracy"] == saved["dev_metric"]


def test_existing_output_is_refused_and_overwrite_keeps_foreign_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = dict(model="tiny-llama", task="SST-2", method="none", **SMALL)
    with pytest.raises(RmaskError, match="exists; pass --overwrite or choose another --output"):
        run_trial(config, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = run_trial(config, output_dir=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["examples.json", "metrics.json", "notes.txt"]
    # Zero-shot: one evaluation, no training, nothing saved but the metrics.
    assert [r["epoch"] for r in result["epochs"]] == [1] and result["epochs"][0]["train_loss"] is None
    assert result["trainable_params"] == 0 and result["test_metric"] is not None
    assert json.loads((out / "metrics.json").read_text())["artifacts_note"] == "zero-shot: nothing was trained"


@pytest.mark.slow
def test_generation_run_on_squad():
    result = run_trial(
        dict(model="tiny-llama", task="SQuAD", ratio=1e-3, lr=1e-2, max_new_tokens=4, **{**SMALL, "epochs": 1})
    )
    assert result["metric"] == "f1" and {"f1", "em"} <= set(result["test_metrics"])
    assert 0 <= result["test_metric"] <= 1 and result["epochs"][0]["train_loss"] > 0


@pytest.mark.slow
def test_encoder_run_trains_the_classification_head_next_to_the_mask(tmp_path):
    result = run_trial(dict(model="tiny-bert", task="RTE", ratio=1e-2, lr=1e-2, **SMALL), output_dir=tmp_path / "o")
    hidden = 256
    assert result["head_params"] == hidden * 2 + 2
    assert result["trainable_params"] == result["method_details"]["trainable_params"] + hidden * 2 + 2
    assert result["artifacts"] == ["adapter", "trainable.safetensors"]
    assert result["test_metric"] is not None


def test_image_run_masks_the_mlp_layers():
    result = run_trial(dict(model="tiny-vit", task="CIFAR-10", ratio=1e-2, lr=1e-2, **SMALL))
    vit = load_model("tiny-vit", head="image-classification")
    assert result["method_details"]["targets"] == resolve_targets(vit, "mlp")
    assert all("attention" not in name for name in result["method_details"]["targets"])
    assert result["metric"] == "accuracy" and result["test_metric"] is not None


@pytest.mark.parametrize("method", ["lora", "adalora"])
@pytest.mark.slow
def test_peft_methods_run_and_save_their_adapter(method, tmp_path):
    result = run_trial(dict(model="tiny-opt", task="SST-2", method=method, lr=1e-3, **SMALL), output_dir=tmp_path)
    assert result["artifacts"] == ["adapter"] and (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert result["status"] == "finished" and result["trainable_params"] > 0


# A classification head's loss is unbounded, so a huge learning rate blows it up (an LM loss saturates near ln V).
DIVERGING = dict(model="tiny-bert", task="RTE", ratio=1e-2, lr=1e6)


def test_divergence_in_the_first_epoch_is_a_result_without_a_test_metric(tmp_path):
    records = []
    result = run_trial({**SMALL, **DIVERGING}, hooks=[records.append], output_dir=tmp_path)
    assert result["diverged"] and result["status"] == "diverged"
    assert len(records) == 1 and records[0]["final"] and records[0]["diverged"]
    assert result["test_metric"] is None and result["best_epoch"] is None and records[0]["dev_metric"] is None
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "diverged" and saved["artifacts"] == []


@pytest.mark.slow
def test_divergence_after_good_epochs_keeps_their_metrics_and_tests_the_best():
    # One step per epoch, and warmup: the learning rate is 0, then 5e5, then 1e6; the loss explodes in epoch 3.
    records = []
    config = {**SMALL, **DIVERGING, "epochs": 3, "batch_size": 8, "warmup_ratio": 0.6}
    result = run_trial(config, hooks=[records.append])
    assert result["status"] == "diverged" and [r["diverged"] for r in records] == [False, False, True]
    assert records[-1]["final"] and records[-1]["dev_metric"] == records[-2]["dev_metric"]
    assert result["best_epoch"] in (1, 2) and result["test_metric"] is not None


def test_divergence_monitor_flags_non_finite_and_exploding_losses():
    monitor = DivergenceMonitor(factor=10)
    assert not any(monitor.diverged(loss) for loss in (2.0, 3.0, 1.0))
    assert monitor.diverged(float("nan"))
    monitor = DivergenceMonitor(factor=10)
    assert not monitor.diverged(2.0) and not monitor.diverged(100.0)  # smoothed: 0.9 * 2 + 0.1 * 100 = 11.8 < 20
    assert monitor.diverged(300.0)


def test_config_rejects_unknown_keys_and_reads_numbers_from_strings():
    with pytest.raises(RmaskError, match="unknown trial setting.*learning_rate"):
        TrialConfig.from_dict({"model": "tiny-llama", "task": "SST-2", "learning_rate": 1e-3})
    config = TrialConfig.from_dict({"model": "tiny-llama", "task": "SST-2", "lr": "1e-3", "epochs": "2"})
    assert config.lr == 1e-3 and config.epochs == 2
    assert TrialConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RmaskError, match="unknown schedule 'step'"):
        TrialConfig(model="tiny-llama", task="SST-2", schedule="step")
    with pytest.raises(RmaskError, match="the train split of SST-2 is empty"):
        prepare_trial(dict(model="tiny-llama", task="SST-2", **{**SMALL, "train_examples": 0}))
    with pytest.raises(RmaskError, match="method 'lora' takes no ratio"):
        prepare_trial(dict(model="tiny-llama", task="SST-2", method="lora", ratio=1e-3, **SMALL))


@pytest.mark.slow
def test_cli_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "rmask_tune.cli", "train", "--model", "tiny-llama", "--task", "SST-2",
        "--ratio", "1e-3", "--lr", "1e-2", "--data-dir", str(DATA), "--epochs", "1", "--batch-size", "4",
        "--train-examples", "4", "--dev-examples", "4", "--eval-examples", "4", "--quiet", "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and f"wrote {out}/metrics.json" in done.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["ratio"] == 1e-3 and saved["config"]["test_examples"] == 4
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("rmask-tune: error: output folder")


@pytest.mark.parametrize("method", ["random_masking", "lora"])
def test_head_lr_trains_the_classification_head_at_its_own_rate(method):
    """With head_lr the swept lr moves the method alone; the head (the trainer's or peft's copy) keeps its rate."""
    from rmask_tune.trainer.loop import make_optimizer, parameter_groups

    options = {"ratio": 1e-2} if method == "random_masking" else {}
    trial = prepare_trial(dict(model="tiny-bert", task="SST-2", method=method, lr=0.3, head_lr=1e-3, **options, **SMALL))
    optimizer, _ = make_optimizer(trial.config, parameter_groups(trial), 10)
    method_group, head_group = optimizer.param_groups
    assert (method_group["lr"], head_group["lr"]) == (0.3, 1e-3)
    names = {id(p): n for n, p in trial.model.named_parameters()}
    assert all("classifier" in names[id(p)] for p in head_group["params"]) and head_group["params"]
    assert not any("classifier" in names[id(p)] for p in method_group["params"])
    trainable = sum(p.numel() for p in trial.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    without = prepare_trial(dict(model="tiny-bert", task="SST-2", method=method, lr=0.3, **options, **SMALL))
    assert [g["lr"] for g in make_optimizer(without.config, parameter_groups(without), 10)[0].param_groups] == [0.3]
    with pytest.raises(RmaskError, match="head_lr must be positive"):
        TrialConfig(model="tiny-bert", task="SST-2", head_lr=0)
