"""A trial's budget: the optimizer steps it trains for all its epochs, as it records them (``budget_steps``),
known before it runs from its config and its task's training-split size."""

from __future__ import annotations

from rmask_tune.trainer.config import TrialConfig

# Size of each task's full training split (the records a split is sampled from; MultiRC: answer rows),
# from the datasets' own releases; a sweep cannot use more training examples than these.
TRAIN_SPLIT_SIZES = {
    "SST-2": 67_349, "RTE": 2_490, "CB": 250, "BoolQ": 9_427, "WSC": 554, "WiC": 5_428, "MultiRC": 27_243,
    "COPA": 400, "ReCoRD": 100_730, "SQuAD": 87_599, "DROP": 77_409, "CIFAR-10": 50_000,
    "GTSRB": 26_640, "MNIST": 60_000, "SVHN": 73_257, "RESISC45": 18_900,
}


def trial_steps(config: TrialConfig) -> int:
    """Optimizer steps of one trial trained for all its epochs, on ``min(train_examples, full split)`` examples."""
    if config.method == "none":
        return 0
    return config.optimizer_steps(min(config.train_examples, TRAIN_SPLIT_SIZES.get(config.task, config.train_examples)))
