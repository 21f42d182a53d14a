"""What a sweep would cost: optimizer steps and GPU-hours, from a stated cost per step and per example.

The cost of a step is per model (``MODEL_COSTS``) at a reference shape, scaled to each trial's batch
(``batch_size`` x ``grad_accum``) and to its task's typical example length (``TASK_TOKENS``, capped at
the trial's ``max_length``). Every trial is counted for all its epochs: an ASHA scheduler stops some
early, so the estimate is an upper bound for ASHA sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmask_tune.sweep.budget import trial_steps
from rmask_tune.trainer.config import TrialConfig

REFERENCE_BATCH = 8
REFERENCE_TOKENS = 256
# Sustained throughput assumed for the unmeasured models: 100 TFLOP/s, about a third of an A100's
# fp16/bf16 peak (312 TFLOP/s), a usual utilisation for fine-tuning at batch 8.
ASSUMED_FLOPS = 100e12
# Full fine-tuning also computes every weight's gradient: 6 N FLOPs per token against 4 N (forward 2 N,
# gradients of the activations 2 N) when the weights are frozen and only a few entries train.
FULL_FT_FACTOR = 6 / 4
# Below these a GPU is bound by kernel launches and the optimizer, not by FLOPs (assumed: a transformer
# step launches about a thousand kernels at ~10-30 us each): no step is priced under 30 ms, no forward
# pass of a batch of REFERENCE_BATCH examples under 10 ms.
STEP_FLOOR_S = 0.03
FORWARD_FLOOR_S = 0.01


@dataclass(frozen=True)
class ModelCost:
    """Seconds per optimizer step (forward + backward of ``REFERENCE_BATCH`` x ``REFERENCE_TOKENS`` tokens,
    frozen base weights) and per evaluated example (one forward of ``REFERENCE_TOKENS`` tokens), on one GPU."""

    step_s: float
    eval_s: float
    source: str


def from_parameter_count(params: float, where: str) -> ModelCost:
    """A model not measured: 4 N FLOPs per trained token and 2 N per evaluated token at ``ASSUMED_FLOPS``."""
    step = 4 * params * REFERENCE_BATCH * REFERENCE_TOKENS / ASSUMED_FLOPS
    evaluation = 2 * params * REFERENCE_TOKENS / ASSUMED_FLOPS
    return ModelCost(step, evaluation, f"not measured: scaled by its {params / 1e9:.3g}B parameters ({where}) "
                                       f"at an assumed {ASSUMED_FLOPS / 1e12:g} TFLOP/s")


# No step time has been measured on a GPU yet (no GPU was lent to this project so far; see the README's
# GPU check). Once `python -m rmask_tune.gpu_check` or `rmask-tune bench` has run on one, write its
# measured times here as ModelCost(step_s, eval_s, "measured: ...") in place of the scaled entry.
# STEP_FLOOR_S and FORWARD_FLOOR_S keep small, launch-bound models from being priced by their FLOPs alone.
MODEL_COSTS = {
    "opt-125m": from_parameter_count(125.2e6, "facebook/opt-125m's config"),
    "opt-1.3b": from_parameter_count(1.316e9, "facebook/opt-1.3b's config"),
    "opt-13b": from_parameter_count(12.85e9, "facebook/opt-13b's config"),
    "llama2-7b": from_parameter_count(6.74e9, "meta-llama/Llama-2-7b-hf's config"),
    "smollm2-135m": from_parameter_count(134.5e6, "the GGUF's tensors"),
    "minilm-l6": from_parameter_count(22.7e6, "all-MiniLM-L6-v2's tensors"),
    # Only the image tower runs per step and per example; the frozen text tower embeds the class prompts once.
    "clip-vit-b16": from_parameter_count(85.8e6, "openai/clip-vit-base-patch16's vision tower"),
}

# Mean tokens of one training sequence (prompt and gold answer), and mean candidates per decision:
# measured on 300 training examples of each task in ../shared/data with the SmolLM2 tokenizer (a GPT-2-
# style BPE like OPT's), except where a note says otherwise.
TASK_TOKENS = {
    "SST-2": (14, 2), "RTE": (86, 2), "CB": (96, 3), "BoolQ": (149, 2), "WSC": (51, 2), "WiC": (41, 2),
    "MultiRC": (401, 2), "COPA": (14, 2), "SQuAD": (185, 1),
    "ReCoRD": (266, 12.4),  # the 32 FewGLUE examples there are
    "DROP": (400, 1),  # not measured: no DROP data here; its passages run to a few hundred words
    # images: a ViT-B/16's 196 patches of a 224-pixel image and the class token
    **{name: (197, 1) for name in ("CIFAR-10", "GTSRB", "MNIST", "SVHN", "RESISC45")},
}

@dataclass
class SweepCost:
    """The estimate of a whole sweep; ``unpriced`` names the models without a stated cost."""

    trials: int
    steps: int
    gpu_hours: float
    unpriced: list[str]


def trial_seconds(config: TrialConfig, cost: ModelCost) -> float:
    """GPU-seconds of one trial: its steps at its batch and task length, dev evaluated after every epoch
    (once for ``none``), test once. A choice task trained as classification, and every choice task at
    evaluation, runs each candidate through the model."""
    tokens, candidates = TASK_TOKENS.get(config.task, (REFERENCE_TOKENS, 1))
    length = min(tokens, config.max_length) / REFERENCE_TOKENS
    per_step = cost.step_s * length * config.batch_size * config.grad_accum / REFERENCE_BATCH
    if config.method == "full":
        per_step *= FULL_FT_FACTOR
    if config.objective == "classification":
        per_step *= candidates
    per_example = max(cost.eval_s * length, FORWARD_FLOOR_S / REFERENCE_BATCH) * candidates
    evaluated = config.dev_examples * (1 if config.method == "none" else config.epochs) + config.test_examples
    return trial_steps(config) * max(per_step, STEP_FLOOR_S * config.grad_accum) + evaluated * per_example


def sweep_cost(space) -> SweepCost:
    """Trials, optimizer steps and GPU-hours of a SweepSpace; models without a cost are named, not priced."""
    from rmask_tune.sweep.plan import trial_point
    from rmask_tune.sweep.schema import OptunaSearch

    if isinstance(space.file.search, OptunaSearch):  # the cost does not depend on the sampled LR
        points = [trial_point(cell, None, seed) for _, cell, seed in space.optuna_schedule()]
    else:
        points = space.grid_trials()
    configs = [TrialConfig.from_dict(space.trial_config(point)) for point in points]
    unpriced = list(dict.fromkeys(c.model for c in configs if c.model not in MODEL_COSTS))
    seconds = sum(trial_seconds(c, MODEL_COSTS[c.model]) for c in configs if c.model in MODEL_COSTS)
    return SweepCost(len(configs), sum(map(trial_steps, configs)), seconds / 3600, unpriced)
