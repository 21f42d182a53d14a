"""The example types every task renders to, and the split container a task loads into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

TaskKind = Literal["choice", "generation", "image"]


@dataclass(frozen=True)
class ChoiceExample:
    """One decision made by scoring candidate continuations of ``context``.

    A causal LM scores ``context + candidates[i]`` by the log-likelihood of the candidate's
    tokens and predicts the best; ``label`` is the gold index. ``text_pair`` is the raw
    (text_a, text_b) an encoder with a classification head reads instead of the prompt.
    ``group`` ties decisions that a metric scores together (a MultiRC question).
    ``golds`` lists every candidate index that counts as correct when several do (ReCoRD: an
    entity named by more than one surface form); empty means just ``label``, the training target.
    """

    uid: str
    context: str
    candidates: tuple[str, ...]
    label: int
    text_pair: tuple[str, str | None] = ("", None)
    group: str | None = None
    golds: tuple[int, ...] = ()

    def is_correct(self, index: int) -> bool:
        """Whether predicting candidate ``index`` is right."""
        return index in self.golds if self.golds else index == self.label


@dataclass(frozen=True)
class GenerationExample:
    """A prompt answered by greedy decoding; ``answers[0]`` is the training target.

    The QA prompts end with ``Answer:``; as in MeZO the model learns `` {answers[0]}\\n`` after it,
    so a decoded answer ends at the first newline.
    """

    uid: str
    context: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class ImageExample:
    """An HxWx3 uint8 image and its class index."""

    uid: str
    image: np.ndarray = field(repr=False)
    label: int


Example = ChoiceExample | GenerationExample | ImageExample


@dataclass
class TaskSplits:
    """Sampled train / dev / test examples and how they were obtained (source, sizes, notes)."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    meta: dict[str, Any]
