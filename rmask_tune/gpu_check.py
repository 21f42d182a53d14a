"""The GPU check: the step benchmark and one short real trial per method under mixed precision, one table.

The benchmark times Random Masking on each path (dense, sparse and the cost model's auto choice), so a
GPU shows where its own crossover lies (see docs/speed.md).

Needs only torch, transformers, accelerate and peft (no ray, mlflow or datasets), so it runs on a bare
GPU machine. Default: SmolLM2-135M in bf16 on CUDA, SST-2 from ``--data-dir``. ``--small`` is the CPU
configuration CI runs (tiny-llama, a few examples). On a machine without SmolLM2's weights, pass
``--model random-init:FOLDER`` where FOLDER holds its config.json and tokenizer: step times are the
same, the trial scores are those of a random model.

    python -m rmask_tune.gpu_check --data-dir ../shared/data [--json OUT.json]
    python -m rmask_tune.gpu_check --device cpu --small --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

import torch

from rmask_tune.errors import RmaskError

if TYPE_CHECKING:
    from rmask_tune.bench import BenchResult

# (method, options) of the short trials: every method of the benchmark that trains, and the frozen model.
TRIAL_CASES = (
    ("none", {}),
    *(("random_masking", {"ratio": r}) for r in (1e-2, 1e-3, 1e-4, 1e-5)),
    ("structured_masking", {"ratio": 1e-2}),
    ("lora", {}),
    ("shira", {}),
    ("full", {}),
)
# Learning rates near the best of the committed SmolLM2 sweep (reports/smollm2-135m), by method and ratio.
TRIAL_LR = {"random_masking": {1e-2: 3e-3, 1e-3: 3e-2, 1e-4: 1e-1, 1e-5: 1.0}, "structured_masking": 3e-3,
            "lora": 1e-3, "shira": 1e-3, "full": 3e-5, "none": 1e-3}  # fmt: skip
SIZES = {
    "full": dict(model="smollm2-135m", batch_size=8, seq_len=128, rounds=15, train=256, dev=100, test=200, epochs=1),
    "small": dict(model="tiny-llama", batch_size=4, seq_len=32, rounds=2, train=16, dev=8, test=8, epochs=1),
}


def trial_lr(method: str, options: dict) -> float:
    """The learning rate of a check trial."""
    by_method = TRIAL_LR[method]
    return by_method[options["ratio"]] if isinstance(by_method, dict) else by_method


def run_trials(model: str, device: str, precision: str, data_dir: str | None, size: dict) -> list[dict]:
    """One short SST-2 trial per method; each row keeps the numbers the table shows, or the error."""
    from rmask_tune.trainer import run_trial

    rows = []
    for method, options in TRIAL_CASES:
        config = dict(model=model, task="SST-2", method=method, lr=trial_lr(method, options), device=device,
                      precision=precision, data_dir=data_dir, epochs=size["epochs"], batch_size=8,
                      train_examples=size["train"], dev_examples=size["dev"], test_examples=size["test"], seed=0,
                      quiet=True, **options)  # fmt: skip
        started = time.perf_counter()
        try:
            result = run_trial(config)
        except Exception as error:  # a failing method is a row of the check, not the end of it
            rows.append({"method": method, "ratio": options.get("ratio"), "error": f"{type(error).__name__}: {error}"})
            continue
        rows.append({
            "method": method,
            "ratio": options.get("ratio"),
            "lr": config["lr"],
            "status": result["status"],
            "dev": result["dev_metric"],
            "test": result["test_metric"],
            "trial_step_ms": None if result["step_time_s"] is None else result["step_time_s"] * 1e3,
            "trial_s": time.perf_counter() - started,
        })
    return rows


def check_cases() -> list[tuple[str, dict]]:
    """The benchmark's cases, Random Masking on each path."""
    from rmask_tune.bench import bench_cases

    return bench_cases(paths=("dense", "sparse", "inplace", "auto"))


def format_check(bench: BenchResult, trials: list[dict]) -> str:
    """One table: the benchmark's columns, then each method's trial (status, dev and test accuracy); a
    Random Masking trial runs the auto path and is shown on that row."""
    by_case = {(t["method"], t["ratio"]): t for t in trials}
    by_case[("floor", None)] = by_case.pop(("none", None), {})
    head = (f"{'method':<20}{'ratio':>8}{'path':>7}{'trainable':>11}{'step ms':>9}{'x floor':>8}{'x LoRA':>8}"
            f"{'state MiB':>10}{'peak MiB':>9}  {'trial':<9}{'dev':>6}{'test':>6}{'step ms':>9}")  # fmt: skip
    lines = [head]
    for skip in bench.skipped:
        lines.append(f"{skip.method:<20}{f'{skip.ratio:.0e}' if skip.ratio else '-':>8}  skipped: {skip.skipped}")
    for row in bench.rows:
        ratio = f"{row.ratio:.0e}" if row.ratio else "-"
        vs_lora = f"{row.vs_lora.median:>8.2f}" if row.vs_lora else f"{'-':>8}"
        text = (f"{row.method:<20}{ratio:>8}{row.path or '-':>7}{row.trainable_params:>11}{row.step_time_s * 1e3:>9.1f}"
                f"{row.vs_floor:>8.2f}{vs_lora}{row.trainable_state_bytes / 2**20:>10.2f}"
                f"{row.peak_mem_bytes / 2**20:>9.1f}")  # fmt: skip
        trial = by_case.get((row.method, row.ratio)) if row.path in (None, "auto") else None
        if trial and "error" in trial:
            text += f"  error: {trial['error'][:120]}"
        elif trial:
            step = "-" if trial["trial_step_ms"] is None else f"{trial['trial_step_ms']:.1f}"
            text += f"  {trial['status']:<9}{trial['dev']:>6.3f}{trial['test']:>6.3f}{step:>9}"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmask_tune.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--small", action="store_true", help="the CPU configuration: tiny-llama, a few examples")
    parser.add_argument("--model", help="model alias, folder, hub id or random-init:NAME (default: by size)")
    parser.add_argument("--data-dir", help="task data folder (the layout of ../shared/data)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    from rmask_tune.bench import run_bench
    from rmask_tune.models import load_model

    size = SIZES["small" if args.small else "full"]
    model_name = args.model or size["model"]
    try:
        device = torch.device(args.device)
        print(f"gpu_check: {model_name} on {device} ({torch.cuda.get_device_name(device) if args.device == 'cuda' else 'cpu'}),"
              f" precision {args.precision}, torch {torch.__version__}", file=sys.stderr)  # fmt: skip
        base = load_model(model_name, device=device)
        bench = run_bench(base, batch_size=size["batch_size"], seq_len=size["seq_len"], rounds=size["rounds"],
                          precision=args.precision, cases=check_cases())  # fmt: skip
        del base
        trials = run_trials(model_name, args.device, args.precision, args.data_dir, size)
    except RmaskError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    print(format_check(bench, trials))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"model": model_name, "device": args.device, "precision": args.precision,
                       "bench": bench.to_dict(), "trials": trials}, out, indent=1)  # fmt: skip
    failed = [t for t in trials if "error" in t or t["status"] != "finished"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
