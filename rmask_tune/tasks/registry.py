"""The task registry: the paper's eleven NLP tasks and its five image tasks, looked up by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmask_tune.errors import RmaskError
from rmask_tune.tasks import metrics, sources, templates
from rmask_tune.tasks.base import ChoiceExample, Example, TaskKind, TaskSplits
from rmask_tune.tasks.data import Source, load_pools, sample_splits
from rmask_tune.tasks.images import IMAGE_DATASETS, ImageDataset, image_example

Render = Callable[[dict[str, Any], str], "Example | list[Example]"]
Scorer = Callable[[Sequence[Example], Sequence[Any]], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """One benchmark task: how it is read, rendered into examples, sampled and scored.

    ``metric`` is the primary key of :meth:`evaluate`; ``num_labels`` is the size of a fixed label
    set (a classification head's width), None when candidates vary per example. Image tasks name their
    classes in ``class_names`` and the prompt a zero-shot head reads each with (``class_prompt``, ``{}`` for
    the name).
    """

    name: str
    kind: TaskKind
    metric: str
    num_labels: int | None
    render: Render = field(repr=False)
    source: Source = field(repr=False)
    scorer: Scorer = field(repr=False)
    weight: Callable[[dict[str, Any]], int] | None = field(default=None, repr=False)
    class_names: tuple[str, ...] = field(default=(), repr=False)
    class_prompt: str = field(default="", repr=False)

    def load_splits(
        self,
        data_dir: str | Path | None = None,
        *,
        train_examples: int = 1000,
        dev_examples: int = 500,
        test_examples: int = 1000,
        seed: int = 0,
    ) -> TaskSplits:
        """Sample seeded, disjoint train/dev (from the train split) and test (from the validation split).

        ``data_dir`` None falls back to $RMASK_DATA_DIR, then to the Hugging Face hub.
        """
        pools = load_pools(self.name, self.source, data_dir)
        sizes = (train_examples, dev_examples, test_examples)
        picks, meta = sample_splits(pools, sizes, seed, self.weight)
        train, dev, test = ([ex for i in indices for ex in self._render(pool, i)] for pool, indices in picks)
        meta = {"task": self.name, **meta, "sizes": {"train": len(train), "dev": len(dev), "test": len(test)}}
        return TaskSplits(train=train, dev=dev, test=test, meta=meta)

    def _render(self, pool, index: int) -> list[Example]:
        record = pool.records[index]
        uid = f"{pool.name}-{record.get('uid', index)}"
        try:
            out = self.render(record, uid)
        except KeyError as e:
            raise RmaskError(f"task {self.name}: record {uid} lacks field {e}") from None
        examples = out if isinstance(out, list) else [out]
        for ex in examples:
            classes = len(ex.candidates) if isinstance(ex, ChoiceExample) else self.num_labels
            if classes is not None and not 0 <= ex.label < classes:
                raise RmaskError(f"task {self.name}: record {uid} has label {ex.label} outside 0..{classes - 1}")
        return examples

    def evaluate(self, examples: Sequence[Example], predictions: Sequence[Any]) -> dict[str, float]:
        """Scores of ``predictions`` (choice/image: class or candidate index; generation: text).

        Always contains ``self.metric``.
        """
        return self.scorer(examples, predictions)

    def require_num_labels(self) -> int:
        """The fixed label count a classification head needs; RmaskError for per-example candidates."""
        if self.num_labels is None:
            raise RmaskError(
                f"task {self.name} has per-example candidates, not a fixed label set: "
                "a classification head cannot learn it (use the language-model objective)"
            )
        return self.num_labels


def _multirc_weight(question: dict[str, Any]) -> int:
    return len(question["answers"])


def _choice(name, render, source, num_labels, scorer=metrics.accuracy_scores, **kw) -> Task:
    return Task(name, "choice", "accuracy", num_labels, render, source, scorer, **kw)


def _generation(name, render, source) -> Task:
    return Task(name, "generation", "f1", None, render, source, metrics.generation_scores)


def _image(dataset: ImageDataset) -> Task:
    return Task(
        dataset.name, "image", "accuracy", len(dataset.classes), image_example, dataset.source(),
        metrics.accuracy_scores, class_names=dataset.classes, class_prompt=dataset.prompt,
    )  # fmt: skip


_ALL = [
    _choice("SST-2", templates.sst2, sources.sst2(), 2),
    _choice("RTE", templates.rte, sources.superglue("RTE", "rte"), 2),
    _choice("CB", templates.cb, sources.superglue("CB", "cb"), 3, scorer=metrics.cb_scores),
    _choice("BoolQ", templates.boolq, sources.superglue("BoolQ", "boolq", carve=True), 2),
    _choice("WSC", templates.wsc, sources.superglue("WSC", "wsc.fixed"), 2),
    _choice("WiC", templates.wic, sources.superglue("WiC", "wic"), 2),
    _choice(
        "MultiRC",
        templates.multirc,
        sources.superglue(
            "MultiRC", "multirc", offline=sources.multirc_questions_offline, hub=sources.multirc_questions_hub
        ),
        2,
        scorer=metrics.multirc_scores,
        weight=_multirc_weight,
    ),
    _choice("COPA", templates.copa, sources.superglue("COPA", "copa"), None),
    _choice(
        "ReCoRD",
        templates.record_task,
        sources.superglue("ReCoRD", "record", offline=sources.record_queries_offline, hub=sources.record_queries_hub),
        None,
    ),
    _generation("SQuAD", templates.squad, sources.squad()),
    _generation("DROP", templates.drop, sources.drop()),
    *(_image(dataset) for dataset in IMAGE_DATASETS),
]

TASKS: dict[str, Task] = {task.name: task for task in _ALL}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): task for name, task in TASKS.items()}


def get_task(name: str) -> Task:
    """The task called ``name``, ignoring case and punctuation ("SST-2", "sst2", "cifar10")."""
    task = _BY_KEY.get(_key(name))
    if task is None:
        raise RmaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return task
