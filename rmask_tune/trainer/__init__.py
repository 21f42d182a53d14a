"""Train and evaluate one trial: one (model, task, method, ratio, learning rate, seed)."""

from rmask_tune.trainer.config import TrialConfig
from rmask_tune.trainer.loop import run_trial, train_trial
from rmask_tune.trainer.trial import Trial, prepare_trial

__all__ = ["Trial", "TrialConfig", "prepare_trial", "run_trial", "train_trial"]
