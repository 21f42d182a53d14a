"""The settings of one trial: one (model, task, method, ratio, learning rate, seed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from rmask_tune.errors import RmaskError
from rmask_tune.heads import TRAINABLE_HEADS
from rmask_tune.precision import PRECISIONS

SCHEDULES = ("constant", "linear", "cosine")
OBJECTIVES = ("lm", "classification")
SCORINGS = ("mean", "sum")
DEVICES = ("cpu", "cuda")
OPTIMIZERS = ("adamw", "adamw_foreach", "adamw_fused", "sgd", "adafactor")

_FLOATS = ("ratio", "density", "lr", "head_lr", "warmup_ratio", "weight_decay", "divergence_factor")
_INTS = (
    "seed", "data_seed", "mask_seed", "epochs", "max_steps", "batch_size", "eval_batch_size", "grad_accum",
    "train_examples", "dev_examples", "test_examples", "max_length", "max_new_tokens",
)  # fmt: skip
_AT_LEAST_ONE = ("epochs", "max_steps", "batch_size", "eval_batch_size", "grad_accum", "max_length", "max_new_tokens")
_AT_LEAST_ZERO = ("train_examples", "dev_examples", "test_examples")


@dataclass
class TrialConfig:
    """One trial. ``seed`` seeds data sampling, the mask and training unless ``data_seed`` / ``mask_seed`` are set.

    ``objective`` applies to choice tasks on a causal LM: ``lm`` trains the log-likelihood of the gold
    continuation, ``classification`` a cross-entropy over the candidates' scores. A candidate's score
    (for prediction and for ``classification``) is its tokens' ``mean`` log-probability (the paper's) or
    their ``sum`` (this project's earlier scoring); the two agree on single-token candidates. ``head``
    None picks the model head from the task and the model (causal LM for decoders, sequence
    classification for encoders); ``tokenizer`` None uses the model's own (tiny random-init models
    borrow one, see ``trial.TINY_TOKENIZERS``).
    ``train_head`` None trains a classification head next to the method (not for ``none`` or ``full``;
    a ``zero-shot-image`` head, the text embeddings of the class names, stays frozen).
    Training runs ``epochs`` passes over the training examples, with a dev evaluation after each. With
    ``max_steps`` it runs exactly that many optimizer steps instead, reshuffling the data on every pass,
    and ``epochs`` counts evaluation rounds: dev is evaluated after steps ``round(k * max_steps / epochs)``,
    k = 1..epochs (the best round is kept, and ASHA compares rounds as it compares epochs). The schedule
    spans all the steps; its warmup is ``round(warmup_ratio * steps)`` (2000 steps, 0.1: 200 steps).
    A trial whose loss is not finite, or whose smoothed loss exceeds ``divergence_factor`` x its first
    loss, stops as diverged. ``precision`` names a policy of ``rmask_tune.precision`` (auto: bf16 on
    CUDA, fp32 on CPU); ``optimizer`` is AdamW (betas 0.9/0.999; torch picks its implementation, or
    ``adamw_foreach`` / ``adamw_fused`` ask for one), SGD with momentum 0.9, or transformers' Adafactor
    at the fixed ``lr``.
    """

    model: str
    task: str
    method: str = "random_masking"
    ratio: float | None = None
    density: float | None = None
    lr: float = 1e-3
    seed: int = 0
    data_seed: int | None = None
    mask_seed: int | None = None
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 8
    eval_batch_size: int | None = None
    grad_accum: int = 1
    train_examples: int = 1000
    dev_examples: int = 500
    test_examples: int = 1000
    data_dir: str | None = None
    targets: str | list[str] | None = None
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    objective: str = "lm"
    scoring: str = "mean"
    max_length: int = 512
    max_new_tokens: int = 50
    divergence_factor: float = 10.0
    device: str | None = None
    precision: str = "auto"
    optimizer: str = "adamw"
    head: str | None = None
    tokenizer: str | None = None
    train_head: bool | None = None
    head_lr: float | None = None
    method_options: dict = field(default_factory=dict)
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in _FLOATS + _INTS:
            setattr(self, name, _number(name, getattr(self, name), int if name in _INTS else float))
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)
        self._check()

    def _check(self) -> None:
        from rmask_tune.methods import METHODS

        if self.method not in METHODS:
            raise RmaskError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RmaskError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in _AT_LEAST_ZERO:
            if getattr(self, name) < 0:
                raise RmaskError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise RmaskError(f"lr must be positive, got {self.lr}")
        if self.head_lr is not None and not self.head_lr > 0:
            raise RmaskError(f"head_lr must be positive, got {self.head_lr}")
        if self.max_steps is not None and self.max_steps < self.epochs:
            rounds = f"epochs ({self.epochs}), its evaluation rounds"
            raise RmaskError(f"max_steps ({self.max_steps}) must be at least {rounds}")
        if not 0 <= self.warmup_ratio < 1:
            raise RmaskError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.divergence_factor > 1:
            raise RmaskError(f"divergence_factor must be above 1, got {self.divergence_factor}")
        for name, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("objective", self.objective, OBJECTIVES),
            ("scoring", self.scoring, SCORINGS),
            ("device", self.device, DEVICES + (None,)),
            ("precision", self.precision, PRECISIONS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("head", self.head, TRAINABLE_HEADS + (None,)),
        ):
            if value not in choices:
                known = ", ".join(c for c in choices if c is not None)
                raise RmaskError(f"unknown {name} '{value}'; choose one of {known}")
        if not isinstance(self.method_options, dict):
            raise RmaskError(f"method_options must be a mapping, got {type(self.method_options).__name__}")

    @classmethod
    def from_dict(cls, values: dict) -> TrialConfig:
        """A config from a mapping (a sweep file's trial, a metrics.json ``config``); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RmaskError(f"unknown trial setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [name for name in ("model", "task") if name not in values]
        if missing:
            raise RmaskError(f"a trial needs {' and '.join(missing)}")
        return cls(**values)

    @classmethod
    def coerce(cls, config: TrialConfig | dict) -> TrialConfig:
        """``config`` itself, or the config a mapping describes."""
        return config if isinstance(config, cls) else cls.from_dict(dict(config))

    def to_dict(self) -> dict:
        """A json-able copy (``from_dict`` rebuilds the config from it)."""
        return asdict(self)

    def optimizer_steps(self, train_examples: int) -> int:
        """Optimizer steps over all epochs on ``train_examples`` training examples (``max_steps`` when set)."""
        if self.max_steps is not None:
            return self.max_steps
        batches = -(-train_examples // self.batch_size)
        return self.epochs * -(-batches // self.grad_accum)

    @property
    def effective_data_seed(self) -> int:
        """The seed of the train/dev/test sampling."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def effective_mask_seed(self) -> int:
        """The seed of the mask (Random Masking, ShiRA)."""
        return self.seed if self.mask_seed is None else self.mask_seed


def _number(name: str, value, kind: type):
    """``value`` as ``kind`` (numbers may arrive as strings from YAML, e.g. ``1e-3``); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RmaskError(f"{name} must be a number, got {value}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RmaskError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RmaskError(f"{name} must be finite, got {value}")
    if kind is int:
        if number != int(number):
            raise RmaskError(f"{name} must be a whole number, got {value}")
        return int(number)
    return number
