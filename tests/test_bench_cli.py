"""The step benchmark and the CLI on a real tiny model (behaviour, not timings)."""

import json
import subprocess
import sys

from rmask_tune.bench import run_bench
from rmask_tune.masking.targets import count_parameters
from rmask_tune.models import tiny_model


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


def test_cli_bench_json_and_one_line_error():
    ok = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "tiny-opt", "--rounds", "1", "--seq-len", "8",
         "--batch-size", "2", "--json"], capture_output=True, text=True, check=True,
    )
    rows = json.loads(ok.stdout)
    assert {"method", "ratio", "trainable_params", "step_time_s", "peak_mem_bytes", "vs_floor"} <= set(rows[0])
    bad = subprocess.run(
        [sys.executable, "-m", "rmask_tune.cli", "bench", "--model", "/no/such/model"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "/no/such/model" in bad.stderr
