"""Per-example results of a trial's evaluations (``examples.json``), and the metrics recomputed from them.

Every dev evaluation (one per epoch) and the test evaluation keep, example by example, the columns of
the task's ``Scorer``: ``correct`` (0/1) for accuracy tasks; ``prediction`` and ``label`` as well where
a metric is not a per-example mean (CB's macro-F1; MultiRC, with each option's question in ``group``);
``f1`` and ``em`` for generation. A split's examples (their ``uid`` and the scorer's fact columns, such as
``label``) are stored once; each evaluation stores only its outcome columns, 0/1 columns bit-packed.
Resampling examples by uid (a bootstrap over examples, paired across trials and seeds) and
recomputing the metric with ``scores`` is then possible without the model.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.metrics import get_scorer

EXAMPLES_FILE = "examples.json"
FORMAT = 1
# Columns holding only 0 and 1: stored as base64 of their bits (little-endian bit order, zero-padded).
BIT_COLUMNS = ("correct", "em")


@dataclass
class Evaluation:
    """One evaluation of a split: ``epoch`` is the dev epoch evaluated, or for test the epoch whose
    state was tested (the best dev epoch); ``columns`` are the scorer's per-example outcome columns."""

    split: str
    epoch: int
    columns: dict[str, list]

    @property
    def size(self) -> int:
        """How many examples were evaluated."""
        return len(next(iter(self.columns.values()), []))


@dataclass
class ExampleLog:
    """A trial's per-example results: its splits' examples and its evaluations, in order."""

    task: str
    metric: str
    scorer: str
    splits: dict[str, dict[str, list]] = field(default_factory=dict)  # split -> {"uid": [...], facts...}
    evaluations: list[Evaluation] = field(default_factory=list)

    def add(self, split: str, epoch: int, uids: Sequence[str], columns: dict[str, list]) -> None:
        """Record one evaluation of ``split`` (the examples' ``uids`` in order, the scorer's columns)."""
        facts = get_scorer(self.scorer).facts
        examples = {"uid": list(uids), **{name: list(columns[name]) for name in facts}}
        if self.splits.setdefault(split, examples) != examples:
            raise RmaskError(f"the {split} examples changed between two evaluations of one trial")
        outcome = {name: list(values) for name, values in columns.items() if name not in facts}
        self.evaluations.append(Evaluation(split, epoch, outcome))

    def find(self, split: str, epoch: int | None = None) -> Evaluation:
        """The (last) evaluation of ``split`` at ``epoch`` (any epoch when None)."""
        for evaluation in reversed(self.evaluations):
            if evaluation.split == split and epoch in (None, evaluation.epoch):
                return evaluation
        raise RmaskError(f"no per-example results for {split}" + ("" if epoch is None else f" epoch {epoch}"))

    def columns(self, evaluation: Evaluation) -> dict[str, list]:
        """Every column of ``evaluation``, its split's example columns included."""
        return {**self.splits[evaluation.split], **evaluation.columns}

    def scores(self, evaluation: Evaluation, indices: Sequence[int] | None = None) -> dict[str, float]:
        """The task's metrics recomputed from ``evaluation``'s per-example results; with ``indices``
        (positions into the split, repeats allowed), on that resample of the examples."""
        columns = self.columns(evaluation)
        if indices is not None:
            columns = {name: [values[i] for i in indices] for name, values in columns.items()}
        return get_scorer(self.scorer).summarize(columns)

    def since(self, evaluations: int, known_splits: set[str]) -> ExampleLog:
        """The evaluations after the first ``evaluations``, with the examples of the splits not in
        ``known_splits``: what a receiver that already holds the rest still needs."""
        new = self.evaluations[evaluations:]
        wanted = {e.split for e in new} - known_splits
        return ExampleLog(self.task, self.metric, self.scorer, {s: self.splits[s] for s in wanted}, new)

    def merge(self, other: ExampleLog) -> None:
        """Take ``other``'s examples and evaluations; an evaluation of the same split and epoch replaces
        the one held (a trial run again reports its epochs again)."""
        if (other.task, other.scorer) != (self.task, self.scorer):
            raise RmaskError(f"per-example results of {other.task} cannot join those of {self.task}")
        self.splits.update(other.splits)
        replaced = {(e.split, e.epoch) for e in other.evaluations}
        self.evaluations = [e for e in self.evaluations if (e.split, e.epoch) not in replaced] + other.evaluations

    @property
    def complete(self) -> bool:
        """Whether every evaluation's split has its examples (a partial log may lack them)."""
        return all(e.split in self.splits for e in self.evaluations)

    def to_dict(self) -> dict:
        """The JSON form (``examples.json``)."""
        return {
            "format": FORMAT,
            "task": self.task,
            "metric": self.metric,
            "scorer": self.scorer,
            "splits": self.splits,
            "evaluations": [
                {"split": e.split, "epoch": e.epoch, "n": e.size,
                 **{name: _encode(name, v) for name, v in e.columns.items()}}
                for e in self.evaluations
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ExampleLog:
        """Read the JSON form back (a part from ``since`` too: its splits' examples may be elsewhere)."""
        if data.get("format") != FORMAT:
            raise RmaskError(f"per-example results in format {data.get('format')!r}; this version reads {FORMAT}")
        splits = {name: dict(columns) for name, columns in data["splits"].items()}
        evaluations = []
        for item in data["evaluations"]:
            split, size = item["split"], int(item["n"])
            if split in splits and len(splits[split]["uid"]) != size:
                raise RmaskError(f"per-example results of {size} {split} examples, but {split} has "
                                 f"{len(splits[split]['uid'])}")
            columns = {k: _decode(k, v, size) for k, v in item.items() if k not in ("split", "epoch", "n")}
            evaluations.append(Evaluation(split, int(item["epoch"]), columns))
        log = cls(data["task"], data["metric"], data["scorer"], splits, evaluations)
        get_scorer(log.scorer)  # an unknown scorer is refused now, not at the first recompute
        return log


def _encode(name: str, values: list):
    if name not in BIT_COLUMNS:
        return values
    bits = np.asarray(values, dtype=np.uint8)
    if bits.size and bits.max() > 1:
        raise RmaskError(f"per-example column {name} holds values other than 0 and 1")
    return base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode("ascii")


def _decode(name: str, value, size: int) -> list:
    if name not in BIT_COLUMNS:
        if len(value) != size:
            raise RmaskError(f"per-example column {name} has {len(value)} values for {size} examples")
        return list(value)
    packed = np.frombuffer(base64.b64decode(value), dtype=np.uint8)
    if packed.size != (size + 7) // 8:
        raise RmaskError(f"per-example column {name} has {packed.size * 8} bits for {size} examples")
    return np.unpackbits(packed, count=size, bitorder="little").astype(int).tolist()
