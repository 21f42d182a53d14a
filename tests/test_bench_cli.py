"""The step benchmark and the CLI on real tiny models (behaviour, not timings)."""

import json
import subprocess
import sys

import pytest

from rmask_tune.bench import _Case, bench_batch, format_table, run_bench
from rmask_tune.masking.targets import count_parameters
from rmask_tune.models import load_model, tiny_model


def test_bench_measures_every_method_with_exact_counts():
    model = tiny_model("tiny-opt")
    rows = run_bench(model, batch_size=2, seq_len=16, rounds=1)
    by_method = {(r["method"], r["ratio"]): r for r in rows}
    assert by_method[("floor", None)]["vs_floor"] == 1.0
    assert by_method[("full", None)]["trainable_params"] == count_parameters(model)
    total = count_parameters(model)
    for ratio in (1e-2, 1e-3, 1e-4, 1e-5):
        row = by_method[("random_masking", ratio)]
        assert abs(row["trainable_params"] - ratio * total) <= max(0.01 * ratio * total, 16)
        # trainable state (values, grads, AdamW moments) is 16 bytes per trainable value
        assert row["trainable_state_bytes"] == 16 * row["trainable_params"]
    dense = by_method[("dense_mask", 1e-3)]
    assert dense["trainable_state_bytes"] > 100 * by_method[("random_masking", 1e-3)]["trainable_state_bytes"]
    assert all(r["step_time_s"] > 0 for r in rows)
    floor_mem = by_method[("floor", None)]["peak_mem_bytes"]
    assert by_method[("full", None)]["peak_mem_bytes"] > floor_mem + 3 * 4 * total  # grads + 2 moments
    assert by_method[("random_masking", 1e-5)]["peak_mem_bytes"] < by_method[("full", None)]["peak_mem_bytes"]


@pytest.mark.parametrize(
    "name, head, input_key, label_shape",
    [
        ("tiny-opt", "causal-lm", "inputs_embeds", (2, 8)),
        ("tiny-bert", "sequence-classification", "inputs_embeds", (2,)),
        ("tiny-vit", "image-classification", "pixel_values", (2,)),
    ],
)
def test_inputs_follow_the_head_and_the_floor_backpropagates_to_them_only(name, head, input_key, label_shape):
    model = load_model(name, head=head)
    batch = bench_batch(model, batch_size=2, seq_len=8)
    assert set(batch) == {input_key, "labels"} and tuple(batch["labels"].shape) == label_shape
    if label_shape == (2,):
        assert 0 <= batch["labels"].min() and batch["labels"].max() < model.config.num_labels
    floor, masked = _Case("floor", {}, model, batch), _Case("random_masking", {"ratio": 1e-3}, model, batch)
    floor.step()
    masked.step()
    assert not any(p.requires_grad for p in floor.model.parameters())
    assert floor.inputs[input_key].grad is not None and floor.inputs[input_key].grad.abs().sum() > 0
    assert not masked.inputs[input_key].requires_grad
    assert all(p.grad is None for p in masked.model.parameters())  # AdamW stepped, grads cleared


def test_methods_that_refuse_the_model_are_skipped_rows():
    import transformers

    # A big vocabulary over a narrow encoder: its q/v matrices hold less than 1% of the model.
    config = transformers.BertConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=30000
    )
    model = transformers.BertForSequenceClassification(config).eval()
    rows = run_bench(model, batch_size=2, seq_len=8, rounds=1)
    skipped = {(r["method"], r["ratio"]): r["skipped"] for r in rows if "skipped" in r}
    assert set(skipped) == {("random_masking", 1e-2), ("structured_masking", 1e-2), ("shira", None)}
    assert "the target matrices hold only" in skipped[("random_masking", 1e-2)]
    assert "more shira params than" in skipped[("shira", None)]  # its default r=32 exceeds a 16x16 matrix
    assert {r["method"] for r in rows if "skipped" not in r} == {"floor", "random_masking", "lora", "full", "dense_mask"}
    lines = format_table(rows).splitlines()
    assert len(lines) == 1 + len(rows)
    assert "structured_masking       1e-02  skipped: ratio 0.01 asks for" in "\n".join(lines)


def test_cli_bench_picks_the_head_by_architecture_and_one_line_error():
    ok = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "tiny-bert", "--rounds", "1", "--seq-len", "8",
         "--batch-size", "2", "--json"], capture_output=True, text=True, check=True,
    )
    rows = json.loads(ok.stdout)
    assert {"method", "ratio", "trainable_params", "step_time_s", "peak_mem_bytes", "vs_floor"} <= set(rows[0])
    total = count_parameters(load_model("tiny-bert", head="sequence-classification"))
    by_method = {(r["method"], r["ratio"]): r for r in rows}
    assert by_method[("full", None)]["trainable_params"] == total
    assert by_method[("random_masking", 1e-3)]["trainable_params"] == round(1e-3 * total)
    assert "bench: tiny-bert as BertForSequenceClassification (sequence-classification head)" in ok.stderr
    clip = subprocess.run(  # CLIP trains under a frozen zero-shot head; its image tower is timed under a linear one
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "tiny-clip", "--rounds", "1", "--batch-size", "2",
         "--json"], capture_output=True, text=True, check=True,
    )
    assert "(image-classification head)" in clip.stderr and json.loads(clip.stdout)[0]["step_time_s"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "/no/such/model"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "/no/such/model" in bad.stderr
