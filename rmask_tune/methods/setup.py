"""What every fine-tuning method hands to the trainer: the model to train and its parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

from rmask_tune.masking.targets import count_parameters


@dataclass
class MethodSetup:
    """A model prepared for one fine-tuning method.

    ``model`` is what to train (possibly a peft wrapper); ``trainable_params`` counts the entries that
    training may change (for masking the masked entries, otherwise the parameters with ``requires_grad``);
    ``total_params`` is the base model's size before the method added anything.
    ``on_step_end(global_step)``, when set, must run after ``optimizer.step()`` and before
    ``optimizer.zero_grad()``, with the step counted from 1.
    ``extra_loss()``, when set, is a scalar the method adds to every training loss (e.g. AdaLoRA's
    orthogonal regularizer, already weighted); it is computed from the parameters alone.
    """

    method: str
    model: nn.Module
    trainable_params: int
    total_params: int
    details: dict = field(default_factory=dict)
    on_step_end: Callable[[int], None] | None = None
    extra_loss: Callable[[], Tensor] | None = None

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters as a fraction of the base model's parameters."""
        return self.trainable_params / self.total_params

    @classmethod
    def measure(cls, method: str, model: nn.Module, total_params: int, details: dict) -> MethodSetup:
        """A setup whose trainable count is read off ``model``'s ``requires_grad`` flags."""
        return cls(method, model, count_parameters(model, trainable_only=True), total_params, details)
