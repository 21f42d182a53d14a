"""The run store's schema in MLflow: the tags, params and metrics a sweep writes for its runs and a report
reads back, named once here for both sides, and the one way a missing value is written and read."""

from __future__ import annotations

import json

# Tags. Every run a sweep makes carries ROLE_TAG: the sweep's parent run ROLE_SWEEP, each trial's ROLE_TRIAL.
ROLE_TAG, ROLE_SWEEP, ROLE_TRIAL = "rmask.role", "sweep", "trial"
SWEEP_TAG = "rmask.sweep"  # the parent run: the sweep's name
SWEEP_ID_TAG = "rmask.sweep_id"  # the parent run: the sweep's id, found again on --resume
SETTINGS_TAG = "rmask.settings"  # the parent run: the settings every trial shares (``SweepSpace.shared_settings``)
TRIALS_TAG = "rmask.trials"  # the parent run: how many trials it ran
TRIAL_ID_TAG = "rmask.trial_id"  # a trial's run: Tune's trial id
STATUS_TAG = "rmask.status"  # a trial's run: running | finished | diverged | stopped | errored | interrupted
TAG_PREFIX = "rmask."

# A trial's params: its grid point, the settings that change what it computes (so that --skip-done can tell an
# earlier sitting's trial from another), and the facts only the trial itself knows.
POINT_PARAMS = ("model", "task", "method", "ratio", "lr", "seed")
CONFIG_PARAMS = (
    "epochs", "train_examples", "dev_examples", "test_examples", "batch_size", "grad_accum", "objective", "scoring",
    "max_length", "head_lr", "max_steps", "schedule", "warmup_ratio", "weight_decay", "optimizer",
    "divergence_factor", "targets", "method_options", "data_seed", "mask_seed", "head", "train_head", "tokenizer",
)  # fmt: skip
# ``budget_steps``: the optimizer steps the trial was planned to train on its real training split (its budget;
# ``rmask_tune.runstore.reader.budget_steps`` derives it from the config params for trials that lack it).
TRIAL_PARAMS = ("trainable_params", "total_params", "precision", "budget_steps")
BUDGET_STEPS = "budget_steps"

# A trial's metrics: the final ones, logged once (step = its last epoch), and the per-epoch histories.
BEST_DEV, TEST, EPOCHS_COMPLETED, WALL_TIME = "best_dev_metric", "test_metric", "epochs_completed", "wall_time_s"
TRAINABLE_FRACTION = "trainable_fraction"
FINAL_METRICS = (
    TEST, BEST_DEV, "best_epoch", "diverged", "step_time_s", "peak_mem_bytes", EPOCHS_COMPLETED, WALL_TIME,
    TRAINABLE_FRACTION,
)  # fmt: skip
HISTORIES = ("dev_metric", "train_loss")

# How a param with no value is written, and every spelling of "no value" a store may hold (older sweeps, exports).
NONE = "none"
NONE_SPELLINGS = (None, "", "none", "None", "null")


def param_text(value):
    """A setting as its MLflow param holds it: None as ``NONE``, a list or a dict as sorted JSON, anything else
    as given."""
    if value is None:
        return NONE
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, tuple, dict)) else value


def is_none(value) -> bool:
    """Whether a param's value (as given, or as its text) means "no value"."""
    return value in NONE_SPELLINGS
