"""Task metrics: accuracy, macro-F1, SQuAD-style answer F1 / exact match, and MultiRC's scores.

Every score is a fraction in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

from rmask_tune.tasks.base import ChoiceExample, GenerationExample, ImageExample

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _check_lengths(examples: Sequence, predictions: Sequence) -> None:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")


def accuracy(examples: Sequence[ChoiceExample | ImageExample], predictions: Sequence[int]) -> float:
    """Fraction of examples whose predicted index is correct (any gold counts for a ChoiceExample)."""
    _check_lengths(examples, predictions)
    if not examples:
        return 0.0
    hits = sum(_is_correct(ex, int(p)) for ex, p in zip(examples, predictions))
    return hits / len(examples)


def _is_correct(example: ChoiceExample | ImageExample, prediction: int) -> bool:
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


def generation_scores(examples: Sequence[GenerationExample], predictions: Sequence[str]) -> dict[str, float]:
    """Mean over examples of the best F1 and exact match against any gold answer.

    A prediction is cut at its first newline (the answer terminator of the QA templates).
    """
    _check_lengths(examples, predictions)
    if not examples:
        return {"f1": 0.0, "em": 0.0}
    f1 = em = 0.0
    for ex, pred in zip(examples, predictions):
        pred = pred.strip().split("\n", 1)[0]
        f1 += max(answer_f1(pred, gold) for gold in ex.answers)
        em += max(answer_em(pred, gold) for gold in ex.answers)
    return {"f1": f1 / len(examples), "em": em / len(examples)}


def accuracy_scores(examples: Sequence[ChoiceExample | ImageExample], predictions: Sequence[int]) -> dict[str, float]:
    """Accuracy of multiple-choice, classification or image-class decisions."""
    return {"accuracy": accuracy(examples, predictions)}


def cb_scores(examples: Sequence[ChoiceExample], predictions: Sequence[int]) -> dict[str, float]:
    """CB: accuracy, plus macro-F1 over its three labels (SuperGLUE's second CB score)."""
    labels = [ex.label for ex in examples]
    return {"accuracy": accuracy(examples, predictions), "macro_f1": macro_f1(labels, predictions, 3)}


def multirc_scores(examples: Sequence[ChoiceExample], predictions: Sequence[int]) -> dict[str, float]:
    """MultiRC, one yes/no decision per answer option.

    ``accuracy`` (primary, as MeZO reports it): per-answer-option accuracy.
    ``em``: fraction of questions (``group``) whose every answer option is decided right.
    ``f1a``: binary F1 of the "correct answer" class over all answer options (SuperGLUE's F1a).
    """
    _check_lengths(examples, predictions)
    if not examples:
        return {"accuracy": 0.0, "em": 0.0, "f1a": 0.0}
    per_question: dict[str, bool] = defaultdict(lambda: True)
    tp = fp = fn = 0
    for ex, pred in zip(examples, predictions):
        pred = int(pred)
        per_question[ex.group or ex.uid] &= pred == ex.label
        tp += pred == 1 and ex.label == 1
        fp += pred == 1 and ex.label == 0
        fn += pred == 0 and ex.label == 1
    return {
        "accuracy": accuracy(examples, predictions),
        "em": sum(per_question.values()) / len(per_question),
        "f1a": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
    }
