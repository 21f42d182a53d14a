"""``prepare_trial``: the task's splits, the model with the right head, the method, and the loss family, in
named steps that read top to bottom."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.heads import ZERO_SHOT_IMAGE, Head, get_head, head_for_task
from rmask_tune.methods import MethodSetup, method_options, prepare_method
from rmask_tune.precision import PrecisionPolicy, resolve_precision
from rmask_tune.trainer.config import TrialConfig

# Tokenizers the random-init models borrow (their embeddings are resized to the tokenizer's vocabulary).
TINY_TOKENIZERS = {
    "tiny-llama": "smollm2-135m",
    "tiny-opt": "smollm2-135m",
    "tiny-gpt2": "smollm2-135m",
    "tiny-bert": "minilm-l6",
    "tiny-clip": "minilm-l6",  # no CLIP tokenizer is available offline; tiny-clip's text tower is sized for this one
}
# Settings a TrialConfig forwards to the methods that accept them.
_METHOD_SETTINGS = ("ratio", "density", "targets")


@dataclass
class Trial:
    """Everything one trial trains and evaluates.

    ``model`` is the model to train (``setup.model``, placed by the accelerator); ``items`` holds the
    encoded train / dev / test examples; ``family`` computes losses and predictions for the task kind.
    ``head_params`` names the classification-head parameters the trainer made trainable next to the method.
    ``precision`` is the precision policy: forward passes run under its autocast, and ``param_dtypes``
    counts the parameter values each dtype holds after it cast the model.
    ``extra_losses`` holds the method's extra loss terms of the training losses not yet taken.
    """

    config: TrialConfig
    task: Any
    splits: Any
    setup: MethodSetup
    model: nn.Module
    tokenizer: Any
    family: Any
    accelerator: Any
    items: dict[str, list]
    precision: PrecisionPolicy
    param_dtypes: dict[str, int]
    head_params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_losses: list[float] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def trainable_params(self) -> int:
        """The method's trainable count plus the classification head the trainer trains with it."""
        params = dict(self.model.named_parameters())
        return self.setup.trainable_params + sum(params[name].numel() for name in self.head_params)

    def loss(self, batch: list) -> torch.Tensor:
        """The training loss (a scalar with gradients) of a batch from ``train_batches``.

        It includes the method's ``extra_loss`` (computed outside autocast, in its parameters' dtype), whose
        values are kept for ``take_extra_loss``.
        """
        with self.precision.autocast(self.device.type):
            loss = self.family.loss(self.model, batch)
        if self.setup.extra_loss is None:
            return loss
        extra = self.setup.extra_loss()
        self.extra_losses.append(extra.item())
        return loss + extra

    def take_extra_loss(self) -> float | None:
        """The mean ``extra_loss`` of the losses since the last call (None without any), and forget them."""
        values, self.extra_losses = self.extra_losses, []
        return sum(values) / len(values) if values else None

    def train_batches(self, generator: torch.Generator | None = None) -> Iterator[list]:
        """The training items in batches of ``batch_size``, shuffled by ``generator`` (in order without one)."""
        items = self.items["train"]
        if generator is None:
            order = list(range(len(items)))
        else:
            order = torch.randperm(len(items), generator=generator).tolist()
        for start in range(0, len(order), self.config.batch_size):
            yield [items[i] for i in order[start : start + self.config.batch_size]]

    def evaluate(self, split: str) -> dict[str, float]:
        """The task's metrics on ``split`` (``dev`` or ``test``); the model is left in eval mode."""
        return self.evaluate_examples(split)[0]

    @torch.no_grad()
    def evaluate_examples(self, split: str) -> tuple[dict[str, float], dict[str, list]]:
        """The task's metrics on ``split`` and the per-example columns they were computed from
        (see ``rmask_tune.tasks.metrics.Scorer``); the model is left in eval mode."""
        self.model.eval()
        examples, items = getattr(self.splits, split), self.items[split]
        from tqdm.auto import tqdm

        batch_size = self.config.eval_batch_size or self.config.batch_size
        bar = tqdm(total=len(items), desc=split, leave=False, disable=self.config.quiet)
        with self.precision.autocast(self.device.type), bar:
            predictions = self.family.predict(self.model, items, batch_size, bar.update)
        columns = self.task.scorer.columns(examples, predictions)
        metrics = {key: float(value) for key, value in self.task.scorer.summarize(columns).items()}
        return metrics, columns


def prepare_trial(config: TrialConfig | dict) -> Trial:
    """Load the task's splits and the model, set the method up and encode the examples."""
    from accelerate import Accelerator

    config = TrialConfig.coerce(config)
    task, head = task_and_head(config)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    splits = load_splits(config, task)
    notes: list[str] = []
    tokenizer = load_trial_tokenizer(config, head, notes)
    model = load_trial_model(config, task, head, tokenizer, precision, notes)
    setup = set_up_method(config, head, model, len(splits.train), notes)
    head_params = train_classifier(config, head, setup)
    param_dtypes = precision.cast_model(setup.model)
    # Autocast and loss scaling come from the precision policy, not from Accelerate (which would leave
    # fp16 on a CPU silently in fp32).
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    prepared = accelerator.prepare(setup.model)
    family = make_family(config, task, head, prepared, tokenizer, accelerator.device)
    items = {name: [family.encode(e) for e in getattr(splits, name)] for name in ("train", "dev", "test")}
    return Trial(
        config, task, splits, setup, prepared, tokenizer, family, accelerator, items, precision, param_dtypes,
        head_params, notes,
    )


def task_and_head(config: TrialConfig) -> tuple[Any, Head]:
    """The task, and the head the config names (else the model's natural one for the task's kind); a head
    or objective that cannot serve the task is refused."""
    from rmask_tune.models import default_head
    from rmask_tune.tasks import get_task

    task = get_task(config.task)
    head = get_head(config.head) if config.head else head_for_task(task.kind, default_head(config.model))
    head.check(task)
    if task.kind == "generation" and config.objective == "classification":
        raise RmaskError(f"{task.name} is a generation task; the classification objective needs a choice task")
    return task, head


def load_splits(config: TrialConfig, task):
    """The task's seeded train / dev / test examples; a split the trial needs may not be empty."""
    splits = task.load_splits(
        config.data_dir,
        train_examples=config.train_examples,
        dev_examples=config.dev_examples,
        test_examples=config.test_examples,
        seed=config.effective_data_seed,
    )
    needed = ("dev", "test") if config.method == "none" else ("train", "dev", "test")
    for split in needed:
        if not getattr(splits, split):
            raise RmaskError(f"the {split} split of {task.name} is empty; ask for at least one {split} example")
    return splits


def load_trial_tokenizer(config: TrialConfig, head: Head, notes: list[str]):
    """The tokenizer the head reads with (the config's, the model's own, or the one a tiny model borrows);
    None for a head without one."""
    from rmask_tune.models import load_tokenizer

    if head.tokenizer == "none":
        return None
    name = config.tokenizer or TINY_TOKENIZERS.get(config.model, config.model)
    tokenizer = load_tokenizer(name)
    if name != config.model:
        notes.append(f"tokenizer of {name}")
    return tokenizer


def load_trial_model(config: TrialConfig, task, head: Head, tokenizer, precision: PrecisionPolicy,
                     notes: list[str]) -> nn.Module:
    """The model with ``head``, seeded, its embeddings fitted to the tokenizer, its own labels the task's."""
    from rmask_tune.models import load_model

    torch.manual_seed(config.seed)
    model = load_model(
        config.model, head=head.name, num_labels=task.num_labels or 2,
        dtype=precision.load_dtype(config.method == "full"),
    )
    if tokenizer is not None and head.tokenizer == "embeddings":  # a text tower checks its own vocabulary
        fit_vocabulary(model, tokenizer, config.model, notes)
    if head.labels == "checkpoint" and model.config.num_labels != task.num_labels:
        raise RmaskError(
            f"{config.model} classifies into {model.config.num_labels} classes, {task.name} has {task.num_labels}"
        )
    return model


def set_up_method(config: TrialConfig, head: Head, model: nn.Module, train_size: int, notes: list[str]) -> MethodSetup:
    """The method on the model; under a zero-shot head its text side stays frozen."""
    setup = prepare_method(model, config.method, **method_settings(config, train_size, head))
    if head is ZERO_SHOT_IMAGE:
        from rmask_tune.trainer.classifiers import freeze_text_side

        note = freeze_text_side(setup)
        if note is not None:
            notes.append(note)
    return setup


def train_classifier(config: TrialConfig, head: Head, setup: MethodSetup) -> list[str]:
    """Make the classifier trainable next to the method when it trains (see ``wants_head_training``); the
    names of its parameters."""
    if not wants_head_training(config, head):
        return []
    from rmask_tune.trainer.classifiers import unfreeze_head

    return unfreeze_head(setup.model)


def resolve_device(device: str | None) -> str:
    """``device``, or cuda when available; asking for cuda without one is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RmaskError("device cuda asked for, but torch sees no CUDA device")
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def fit_vocabulary(model: nn.Module, tokenizer, model_name: str, notes: list[str]) -> None:
    """Grow a random-init model's embeddings to a borrowed tokenizer; refuse a tokenizer too big for a real model."""
    from rmask_tune.models import TINY_CONFIGS

    size, vocab = len(tokenizer), model.get_input_embeddings().num_embeddings
    if size <= vocab:
        return
    if model_name not in TINY_CONFIGS:
        raise RmaskError(f"the tokenizer has {size} tokens, more than the {vocab} embeddings of {model_name}")
    model.resize_token_embeddings(size, mean_resizing=False)
    notes.append(f"embeddings resized from {vocab} to {size} tokens")


def method_settings(config: TrialConfig, train_size: int, head: Head | None = None) -> dict:
    """The method's options: ``method_options`` plus the config's ratio/density/targets and mask seed.

    A head's ``default_targets`` apply when the config names none; AdaLoRA gets its step count.
    """
    accepted = method_options(config.method)
    options = dict(config.method_options)
    settings = {name: getattr(config, name) for name in _METHOD_SETTINGS if getattr(config, name) is not None}
    default = head.default_targets if head is not None else None
    if default is not None and "targets" in accepted and "targets" not in settings and "targets" not in options:
        settings["targets"] = default
    for name, value in settings.items():
        if name not in accepted:
            raise RmaskError(f"method '{config.method}' takes no {name}")
        if name in options:
            raise RmaskError(f"{name} is given twice (as a trial setting and in method_options)")
        options[name] = value
    if "seed" in accepted:
        options.setdefault("seed", config.effective_mask_seed)
    if "total_step" in accepted:
        options.setdefault("total_step", config.optimizer_steps(train_size))
    return options


def wants_head_training(config: TrialConfig, head: Head) -> bool:
    """A head's classifier trains with the method unless ``train_head`` says otherwise (never for none/full;
    a causal LM has none, a zero-shot head is frozen)."""
    if not head.trains_classifier or config.method in ("none", "full"):
        return False
    return config.train_head is not False


def make_family(config: TrialConfig, task, head: Head, model: nn.Module, tokenizer, device):
    """The loss / prediction helper of the head's family (and, for a language model, the task's kind)."""
    from rmask_tune.trainer.causal import CausalChoice, CausalGeneration, CausalLM
    from rmask_tune.trainer.classifiers import (
        ImageClassifier,
        SequenceClassifier,
        ZeroShotImageClassifier,
        image_preprocessing,
    )

    positions = getattr(model.config, "max_position_embeddings", None)
    max_length = min(config.max_length, positions) if positions else config.max_length
    if head.family == "zero-shot-classifier":
        if not task.class_names:
            raise RmaskError(f"task {task.name} names no classes for a zero-shot head")
        preprocess = image_preprocessing(config.model, model)
        return ZeroShotImageClassifier(model, tokenizer, task.class_names, task.class_prompt, preprocess, device)
    if head.family == "image-classifier":
        return ImageClassifier(image_preprocessing(config.model, model), device)
    if head.family == "sequence-classifier":
        return SequenceClassifier(tokenizer, max_length, device)
    lm = CausalLM(tokenizer, model, max_length, device)
    if task.kind == "generation":
        return CausalGeneration(lm, config.max_new_tokens)
    return CausalChoice(lm, config.objective, config.scoring)
