"""The model heads, one record each: the transformers class that loads a model with it, the tokenizer it needs,
the weights a method adapts by default, its labels, its loss family and the task kinds it runs. A new head
is one entry in ``HEADS`` (and, for a new loss family, its class in ``rmask_tune.trainer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rmask_tune.errors import RmaskError


@dataclass(frozen=True)
class Head:
    """One model head.

    ``tokenizer``: ``none`` (pixel inputs), ``embeddings`` (the model's input embeddings read it; a random-init
    model's grow to a borrowed one) or ``text-tower`` (an image-text model's text tower reads it).
    ``labels``: ``task`` (a new classifier as wide as the task's fixed label set), ``checkpoint`` (the
    checkpoint's own classifier, which must have the task's label count) or ``none``.
    ``family`` names the loss / prediction family the trainer computes with; ``task_kinds`` are the task kinds
    it runs (none: a head for loading and analysis only). ``default_targets`` are the weights a method adapts
    when the trial names none (None: the method's own default). ``trains_classifier``: a classifier trains next
    to the method unless the trial says otherwise.
    """

    name: str
    auto_class: str
    tokenizer: Literal["none", "embeddings", "text-tower"]
    labels: Literal["none", "task", "checkpoint"]
    family: str
    task_kinds: tuple[str, ...]
    default_targets: str | None = None
    trains_classifier: bool = False

    def check(self, task) -> None:
        """Refuse a task this head cannot run (one without a fixed label set for a classifier sized to it)."""
        if task.kind not in self.task_kinds:
            fits = " or ".join(head.name for head in HEADS.values() if task.kind in head.task_kinds)
            raise RmaskError(f"{task.name} is a {task.kind} task; it needs a {fits} model, not {self.name}")
        if self.labels == "task":
            task.require_num_labels()


CAUSAL_LM = Head("causal-lm", "AutoModelForCausalLM", "embeddings", "none", "language-model", ("choice", "generation"))
SEQUENCE_CLASSIFICATION = Head("sequence-classification", "AutoModelForSequenceClassification", "embeddings", "task",
                               "sequence-classifier", ("choice",), trains_classifier=True)
# The paper's ViT setting: a method adapts the MLP layers.
IMAGE_CLASSIFICATION = Head("image-classification", "AutoModelForImageClassification", "none", "checkpoint",
                            "image-classifier", ("image",), default_targets="mlp", trains_classifier=True)
# An image-text model (CLIP) classifying images against its text embeddings of the class names: a frozen head,
# so a method adapts the image tower's MLP layers only.
ZERO_SHOT_IMAGE = Head("zero-shot-image", "AutoModel", "text-tower", "none", "zero-shot-classifier", ("image",),
                       default_targets=r"vision_model\..*\.mlp\.fc[12]")
BASE = Head("base", "AutoModel", "embeddings", "none", "none", ())  # the bare model, for loading and analysis

HEADS = {head.name: head for head in (CAUSAL_LM, SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION, ZERO_SHOT_IMAGE, BASE)}
TRAINABLE_HEADS = tuple(name for name, head in HEADS.items() if head.task_kinds)


def get_head(name: str) -> Head:
    """The head called ``name``; RmaskError naming the known ones otherwise."""
    if name not in HEADS:
        raise RmaskError(f"unknown head '{name}'; choose one of {', '.join(HEADS)}")
    return HEADS[name]


def head_for_task(task_kind: str, natural: str) -> Head:
    """The head a trial uses when it names none: the model's ``natural`` one, but for an image task that head
    must run images (a vision model's classifier, CLIP's zero-shot head), else the image classifier."""
    head = HEADS[natural]
    if task_kind == "image" and task_kind not in head.task_kinds:
        return IMAGE_CLASSIFICATION
    return head
