"""The step benchmark and the CLI on real tiny models (behaviour, not timings)."""

import json
import subprocess
import sys

import pytest

from rmask_tune.bench import Spread, _Case, bench_batch, bench_cases, format_table, run_bench
from rmask_tune.errors import RmaskError
from rmask_tune.masking.targets import count_parameters
from rmask_tune.models import load_model, tiny_model


def test_bench_measures_every_method_with_exact_counts():
    model = tiny_model("tiny-opt")
    result = run_bench(model, batch_size=2, seq_len=16, rounds=1)
    floor = result.row("floor")
    assert floor.vs_floor == 1.0 and floor.vs_floor_spread == Spread(1.0, 1.0, 1.0)
    assert result.row("lora").vs_lora == Spread(1.0, 1.0, 1.0)
    assert result.row("full").trainable_params == count_parameters(model)
    total = count_parameters(model)
    for ratio in (1e-2, 1e-3, 1e-4, 1e-5):
        row = result.row("random_masking", ratio)
        assert row.path == "auto"
        assert abs(row.trainable_params - ratio * total) <= max(0.01 * ratio * total, 16)
        # trainable state (values, grads, AdamW moments) is 16 bytes per trainable value
        assert row.trainable_state_bytes == 16 * row.trainable_params
    dense = result.row("dense_mask", 1e-3)
    assert dense.trainable_state_bytes > 100 * result.row("random_masking", 1e-3).trainable_state_bytes
    assert all(r.step_time_s > 0 for r in result.rows)
    assert result.row("full").peak_mem_bytes > floor.peak_mem_bytes + 3 * 4 * total  # grads + 2 moments
    assert result.row("random_masking", 1e-5).peak_mem_bytes < result.row("full").peak_mem_bytes
    assert result.row("random_masking", 1e-3).peak_mem_bytes <= result.row("lora").peak_mem_bytes


def test_rounds_interleave_every_case_and_ratios_are_taken_within_a_round():
    model = tiny_model("tiny-llama")
    cases = bench_cases(ratios=(1e-3,), paths=("dense", "sparse"), methods=("floor", "random_masking", "lora"))
    assert cases == [("floor", {}), ("random_masking", {"ratio": 1e-3, "path": "dense"}),
                     ("random_masking", {"ratio": 1e-3, "path": "sparse"}), ("lora", {})]  # fmt: skip
    result = run_bench(model, batch_size=2, seq_len=8, rounds=5, cases=cases, profile_steps=1)
    assert [(r.method, r.path) for r in result.rows] == [("floor", None), ("random_masking", "dense"),
                                                         ("random_masking", "sparse"), ("lora", None)]  # fmt: skip
    for row in result.rows:
        assert row.vs_floor_spread.low <= row.vs_floor == row.vs_floor_spread.median <= row.vs_floor_spread.high
        assert row.vs_lora.low <= row.vs_lora.median <= row.vs_lora.high
    # the masked layers record the path that ran: forced sparse runs every layer sparse, forced dense none
    by_path = {p.path: p for p in result.profiles}
    assert set(by_path) == {"dense", "sparse"}
    assert by_path["sparse"].sparse_layers == by_path["sparse"].layers > 0 and by_path["dense"].sparse_layers == 0
    for profile in result.profiles:
        assert profile.forward_ms > 0 and profile.input_grad_ms > 0 and profile.value_grad_ms > 0
        assert profile.optimizer_ms > 0 and 0 < profile.delta_ms < profile.forward_ms + profile.input_grad_ms
    assert "Random Masking step by stage" in format_table(result)
    with pytest.raises(RmaskError, match="unknown bench method 'adapters'"):
        bench_cases(methods=("floor", "adapters"))
    with pytest.raises(RmaskError, match="rounds must be at least 1"):
        run_bench(model, rounds=0)


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
    result = run_bench(model, batch_size=2, seq_len=8, rounds=1)
    skipped = {(r.method, r.ratio): r.skipped for r in result.skipped}
    assert set(skipped) == {("random_masking", 1e-2), ("structured_masking", 1e-2), ("shira", None)}
    assert "the target matrices hold only" in skipped[("random_masking", 1e-2)]
    assert "more shira params than" in skipped[("shira", None)]  # its default r=32 exceeds a 16x16 matrix
    assert {r.method for r in result.rows} == {"floor", "random_masking", "lora", "full", "dense_mask"}
    lines = format_table(result).splitlines()
    assert len(lines) == 2 + len(result.rows) + len(result.skipped)
    assert "structured_masking    1e-02  skipped: ratio 0.01 asks for" in "\n".join(lines)


@pytest.mark.slow
def test_cli_bench_picks_the_head_by_architecture_and_one_line_error():
    ok = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "tiny-bert", "--rounds", "2", "--seq-len", "8",
         "--batch-size", "2", "--json", "--methods", "floor,random_masking,full", "--ratios", "1e-3",
         "--paths", "dense,auto"], capture_output=True, text=True, check=True,
    )
    result = json.loads(ok.stdout)
    rows = result["rows"]
    assert result["rounds"] == 2 and [(r["method"], r["path"]) for r in rows] == [
        ("floor", None), ("random_masking", "dense"), ("random_masking", "auto"), ("full", None)]
    assert {"method", "ratio", "trainable_params", "step_time_s", "peak_mem_bytes", "vs_floor"} <= set(rows[0])
    assert set(rows[0]["vs_floor_spread"]) == {"median", "low", "high"} and rows[0]["vs_lora"] is None
    total = count_parameters(load_model("tiny-bert", head="sequence-classification"))
    assert rows[3]["trainable_params"] == total and rows[1]["trainable_params"] == round(1e-3 * total)
    assert "bench: tiny-bert as BertForSequenceClassification (sequence-classification head)" in ok.stderr
    clip = subprocess.run(  # CLIP trains under a frozen zero-shot head; its image tower is timed under a linear one
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "tiny-clip", "--rounds", "1", "--batch-size", "2",
         "--json"], capture_output=True, text=True, check=True,
    )
    assert "(image-classification head)" in clip.stderr and json.loads(clip.stdout)["rows"][0]["step_time_s"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "/no/such/model"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "/no/such/model" in bad.stderr
    for option, message in ((["--paths", "fast"], "unknown path 'fast'"),
                            (["--methods", "floor,adapters"], "unknown bench method 'adapters'")):  # fmt: skip
        bad = subprocess.run([sys.executable, "-m", "rmask_tune.cli", "bench", *option], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and message in bad.stderr
