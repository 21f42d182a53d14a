"""Task metrics: accuracy, macro-F1, SQuAD-style answer F1 / exact match, and MultiRC's scores.

Every score is a fraction in [0, 1]. A task's ``Scorer`` computes them from per-example columns.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.base import ChoiceExample, GenerationExample, ImageExample

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _check_lengths(examples: Sequence, predictions: Sequence) -> None:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")


def _is_correct(example: ChoiceExample | ImageExample, prediction: int) -> bool:
    """Whether the predicted index is right (any gold counts for a ChoiceExample)."""
    if isinstance(example, ChoiceExample):
        return example.is_correct(prediction)
    return prediction == example.label


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """Unweighted mean over classes of each class's F1 (a class never gold nor predicted scores 0)."""
    _check_lengths(labels, predictions)
    scores = []
    for c in range(num_labels):
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / num_labels


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and the articles a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalized answers; when either is empty, 1 if both are, else 0."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_em(prediction: str, gold: str) -> float:
    """1.0 when the normalized answers are identical."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


@dataclass(frozen=True)
class Scorer:
    """A task's scoring in two steps: per-example results (``columns``), then the metrics (``summarize``).

    Calling a scorer scores predictions; its metrics are always computed from the per-example columns,
    so columns recorded for a trial (see ``rmask_tune.tasks.results``) recompute its metrics exactly, and
    a resample of the examples (a bootstrap) recomputes them on that resample. ``facts`` names the columns
    that describe the examples themselves (a label, a question) rather than one evaluation of them.
    """

    name: str
    columns: Callable[[Sequence, Sequence], dict[str, list]] = field(repr=False)
    summarize: Callable[[dict[str, list]], dict[str, float]] = field(repr=False)
    facts: tuple[str, ...] = ()

    def __call__(self, examples: Sequence, predictions: Sequence) -> dict[str, float]:
        _check_lengths(examples, predictions)
        return self.summarize(self.columns(examples, predictions))


def _mean(values: Sequence) -> float:
    return sum(values) / len(values) if values else 0.0


def _correct_columns(examples: Sequence[ChoiceExample | ImageExample], predictions: Sequence[int]) -> dict[str, list]:
    return {"correct": [int(_is_correct(ex, int(p))) for ex, p in zip(examples, predictions)]}


def _labelled_columns(examples: Sequence[ChoiceExample], predictions: Sequence[int]) -> dict[str, list]:
    return {
        **_correct_columns(examples, predictions),
        "prediction": [int(p) for p in predictions],
        "label": [ex.label for ex in examples],
    }


def _accuracy_summary(columns: dict[str, list]) -> dict[str, float]:
    return {"accuracy": _mean(columns["correct"])}


def _cb_summary(columns: dict[str, list]) -> dict[str, float]:
    return {**_accuracy_summary(columns), "macro_f1": macro_f1(columns["label"], columns["prediction"], 3)}


def _multirc_columns(examples: Sequence[ChoiceExample], predictions: Sequence[int]) -> dict[str, list]:
    return {**_labelled_columns(examples, predictions), "group": [ex.group or ex.uid for ex in examples]}


def _multirc_summary(columns: dict[str, list]) -> dict[str, float]:
    if not columns["correct"]:
        return {"accuracy": 0.0, "em": 0.0, "f1a": 0.0}
    per_question: dict[str, bool] = defaultdict(lambda: True)
    tp = fp = fn = 0
    outcomes = zip(columns["correct"], columns["prediction"], columns["label"], columns["group"])
    for correct, pred, label, group in outcomes:
        per_question[group] &= bool(correct)
        tp += pred == 1 and label == 1
        fp += pred == 1 and label == 0
        fn += pred == 0 and label == 1
    return {
        **_accuracy_summary(columns),
        "em": sum(per_question.values()) / len(per_question),
        "f1a": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
    }


def _generation_columns(examples: Sequence[GenerationExample], predictions: Sequence[str]) -> dict[str, list]:
    cut = [pred.strip().split("\n", 1)[0] for pred in predictions]
    return {
        "f1": [max(answer_f1(pred, gold) for gold in ex.answers) for ex, pred in zip(examples, cut)],
        "em": [int(max(answer_em(pred, gold) for gold in ex.answers)) for ex, pred in zip(examples, cut)],
    }


def _generation_summary(columns: dict[str, list]) -> dict[str, float]:
    return {"f1": _mean(columns["f1"]), "em": _mean(columns["em"])}


# Accuracy of multiple-choice, classification or image-class decisions (per example: ``correct``).
accuracy_scores = Scorer("accuracy", _correct_columns, _accuracy_summary)
# CB: accuracy, plus macro-F1 over its three labels (SuperGLUE's second CB score), which needs each
# example's prediction and label.
cb_scores = Scorer("cb", _labelled_columns, _cb_summary, facts=("label",))
# MultiRC, one yes/no decision per answer option. ``accuracy`` (primary, as MeZO reports it): per-option
# accuracy; ``em``: fraction of questions (``group``) whose every option is decided right; ``f1a``: binary
# F1 of the "correct answer" class over all options (SuperGLUE's F1a).
multirc_scores = Scorer("multirc", _multirc_columns, _multirc_summary, facts=("label", "group"))
# SQuAD-style QA: mean over examples of the best F1 and exact match against any gold answer; a prediction
# is cut at its first newline (the answer terminator of the QA templates).
generation_scores = Scorer("generation", _generation_columns, _generation_summary)

SCORERS: dict[str, Scorer] = {s.name: s for s in (accuracy_scores, cb_scores, multirc_scores, generation_scores)}


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name`` (as recorded with per-example results)."""
    if name not in SCORERS:
        raise RmaskError(f"unknown scorer {name!r}; known scorers: {', '.join(SCORERS)}")
    return SCORERS[name]
