"""``rmask-tune train``: run one trial (model, task, method, ratio, learning rate, seed) and save its result."""

from __future__ import annotations

import argparse
import json
import sys

# (flag, TrialConfig field, type, help); unset flags keep TrialConfig's defaults.
SETTINGS = (
    ("--method", "method", str, "fine-tuning method (default random_masking)"),
    ("--ratio", "ratio", float, "trainable fraction of the whole model (masking, shira)"),
    ("--density", "density", float, "trainable fraction of each target matrix (masking)"),
    ("--lr", "lr", float, "learning rate (default 1e-3)"),
    ("--seed", "seed", int, "seed of data sampling, mask and training (default 0)"),
    ("--epochs", "epochs", int, "training epochs, or evaluation rounds with --max-steps (default 5)"),
    ("--max-steps", "max_steps", int, "train exactly this many optimizer steps, evaluating --epochs times"),
    ("--head-lr", "head_lr", float, "learning rate of a trained classifier head (default: --lr)"),
    ("--batch-size", "batch_size", int, "examples per batch (default 8)"),
    ("--grad-accum", "grad_accum", int, "batches per optimizer step (default 1)"),
    ("--train-examples", "train_examples", int, "training examples (default 1000)"),
    ("--dev-examples", "dev_examples", int, "dev examples for model selection (default 500)"),
    ("--eval-examples", "test_examples", int, "test examples (default 1000)"),
    ("--data-dir", "data_dir", str, "dataset folder (default $RMASK_DATA_DIR, then the Hugging Face hub)"),
    ("--targets", "targets", str, "target matrices: qv, attention, mlp, all-linear or name patterns"),
    ("--device", "device", str, "cpu or cuda (default: cuda when available)"),
    ("--precision", "precision", str, "fp32, bf16, fp16 or auto (default: bf16 on CUDA, fp32 on CPU)"),
    ("--optimizer", "optimizer", str, "adamw, adamw_foreach, adamw_fused, sgd or adafactor (default adamw)"),
    ("--objective", "objective", str, "lm or classification (choice tasks on a causal LM; default lm)"),
    ("--scoring", "scoring", str, "a candidate's score: mean or sum of its tokens' log-probabilities (default mean)"),
    ("--schedule", "schedule", str, "constant, linear or cosine (default constant)"),
    ("--warmup-ratio", "warmup_ratio", float, "fraction of the steps spent warming up (default 0)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default 0)"),
    ("--max-length", "max_length", int, "longest input in tokens (default 512)"),
    ("--max-new-tokens", "max_new_tokens", int, "generation cap (default 50)"),
    ("--tokenizer", "tokenizer", str, "tokenizer model, if not the model's own"),
)


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.models import progress
    from rmask_tune.trainer import TrialConfig, run_trial

    values = {"model": args.model, "task": args.task, "quiet": args.quiet, "method_options": dict(args.option)}
    values.update({field: getattr(args, field) for _, field, _, _ in SETTINGS if getattr(args, field) is not None})
    with progress(not args.quiet):  # the model conversion's; the epochs' bars follow TrialConfig.quiet
        result = run_trial(TrialConfig.from_dict(values), output_dir=args.output, overwrite=args.overwrite)
    for note in result["data"].get("notes", []):  # a split smaller than asked (CB has 56 test examples)
        print(f"rmask-tune: warning: {note}", file=sys.stderr)
    print(summary(result, args.output))


def summary(result: dict, output: str | None) -> str:
    """A few lines on the trial's outcome."""
    ratio = "" if result["ratio"] is None else f" ratio={result['ratio']:g}"
    lr = "" if result["method"] == "none" else f" lr={result['lr']:g}"
    lines = [
        f"{result['task']} {result['model']} {result['method']}{ratio}{lr} seed={result['seed']} "
        f"precision={result['precision']['precision']}: {result['status']}",
        f"  test {result['metric']}: {_number(result['test_metric'])} "
        f"(best dev {_number(result['dev_metric'])} at epoch {result['best_epoch']})",
        f"  trainable {result['trainable_params']:,} of {result['total_params']:,} "
        f"({result['trainable_fraction']:.2e}); step {_number(result['step_time_s'], 's')}, "
        f"wall {result['wall_time_s']:.1f}s",
    ]
    if output is not None:
        lines.append(f"  wrote {output}/metrics.json")
    return "\n".join(lines)


def _number(value, unit: str = "") -> str:
    return "none" if value is None else f"{value:.4f}{unit}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    train = sub.add_parser("train", help="run one fine-tuning trial and report its best-dev test metric")
    train.add_argument("--model", required=True, help="model alias, local folder or hub id")
    train.add_argument("--task", required=True, help="task name, e.g. SST-2, SQuAD, CIFAR-10")
    for flag, field, kind, text in SETTINGS:
        train.add_argument(flag, dest=field, type=kind, help=text, metavar=flag[2:].upper().replace("-", "_"))
    train.add_argument(
        "--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="a method option, e.g. r=16"
    )
    train.add_argument("--output", help="folder for metrics.json and the trained adapter")
    train.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
    train.add_argument("--quiet", action="store_true", help="no progress (model conversion, epochs, evaluation)")
    train.set_defaults(run=_run)
