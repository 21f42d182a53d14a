"""Where task data comes from (a local directory or the Hugging Face hub) and how splits are sampled.

A local data directory has the layout of the project's ``shared/data``::

    superglue/<Task>/{train,val}.jsonl     SuperGLUE jsonl (BoolQ may have val.jsonl only)
    glue/SST-2/{train,dev}.tsv             header ``sentence<TAB>label``
    squad/dev.json                         JSON list of {context, question, answer}; optional train.json
    drop/{train,dev}.jsonl                 one {passage, question, answers: [str, ...]} per line
                                           (or drop/{train,dev}.json holding a JSON list of the same)
    cifar10/cifar10_subset.npz             train_images/train_labels/test_images/test_labels/classes
      or cifar10/{train,test}/<class>/*.png|jpg

A source yields two pools of records: ``train`` (sampled into train and dev) and ``test`` (the
official validation split, sampled into test). When a source has a single split (``train`` is None)
all three splits are carved from it, disjointly.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmask_tune.errors import RmaskError

DATA_DIR_ENV = "RMASK_DATA_DIR"


@dataclass
class Pool:
    """Records of one source split; ``name`` ends up in example uids (``<name>-<index>``)."""

    name: str
    records: Sequence[dict[str, Any]]


@dataclass
class Pools:
    """What a source provides: a train pool (None: carve everything from ``test``) and a test pool."""

    train: Pool | None
    test: Pool
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """How one task reads its data: from a local directory, or from the hub."""

    offline: Callable[[Path], Pools]
    hub: Callable[[], Pools]


class Mapped(Sequence):
    """A lazy ``fn``-mapped view of a sequence (hub splits are converted record by record)."""

    def __init__(self, items: Sequence, fn: Callable[[Any], dict[str, Any]]):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.fn(self.items[index])


def load_pools(task: str, source: Source, data_dir: str | Path | None) -> Pools:
    """Read ``task``'s pools from ``data_dir``, else $RMASK_DATA_DIR, else the hub (needs `datasets`)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise RmaskError(f"data directory not found: {root}")
        return source.offline(root)
    if importlib.util.find_spec("datasets") is None:
        raise RmaskError(
            f"no data for task {task}: pass --data-dir (a directory laid out like shared/data), "
            f"set ${DATA_DIR_ENV}, or install `datasets` to download it from the Hugging Face hub"
        )
    return source.hub()


def require(path: Path, task: str) -> Path:
    """``path`` if it is a file, else an RmaskError naming it."""
    if not path.is_file():
        raise RmaskError(f"task {task}: missing data file {path}")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line."""
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RmaskError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """A file holding one JSON list of objects."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RmaskError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list):
        raise RmaskError(f"{path}: expected a JSON list of records")
    return records


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A tab-separated file with a header row, no quoting (GLUE's convention); fields are stripped,
    so stray carriage returns inside a line (as in some SST-2 copies) do not break rows."""
    lines = [line for line in path.read_bytes().decode("utf-8").split("\n") if line.strip()]
    if not lines:
        raise RmaskError(f"{path}: empty file")
    header = [name.strip() for name in lines[0].split("\t")]
    records = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = [value.strip() for value in line.split("\t")]
        if len(fields) != len(header):
            raise RmaskError(f"{path}:{lineno}: {len(fields)} fields, header has {len(header)}")
        records.append(dict(zip(header, fields)))
    return records


def hub_split(path: str, config: str | None, split: str):
    """One split of a hub dataset, through `datasets` (imported here, not at module import)."""
    import datasets

    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as e:  # network, auth or format problems all become one user-facing line
        name = f"{path}/{config}" if config else path
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RmaskError(f"could not load {name} [{split}] from the Hugging Face hub: {first_line}") from None


def _take(records: Sequence, order: np.ndarray, start: int, budget: int, weight) -> tuple[list[int], int]:
    """Indices from ``order[start:]`` until their total weight reaches ``budget``; returns (picked, next)."""
    picked, total, i = [], 0, start
    while total < budget and i < len(order):
        index = int(order[i])
        picked.append(index)
        total += weight(records[index]) if weight else 1
        i += 1
    return picked, i


def _total(records: Sequence, weight) -> int:
    return sum(weight(r) for r in records) if weight else len(records)


def _shares(total: int, wanted: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``wanted`` (the last share takes the rounding remainder)."""
    asked = sum(wanted)
    if asked == 0:
        return [0] * len(wanted)
    shares = [total * w // asked for w in wanted[:-1]]
    return [*shares, total - sum(shares)]


def sample_splits(
    pools: Pools,
    sizes: tuple[int, int, int],
    seed: int,
    weight: Callable[[dict[str, Any]], int] | None = None,
) -> tuple[list[tuple[Pool, list[int]]], dict[str, Any]]:
    """Seeded, disjoint train/dev/test picks: [(pool, indices)] for train, dev, test, and meta.

    Train and dev come from a permutation of the train pool, test from a permutation of the test
    pool. A pool smaller than what is asked is used whole, shared in proportion to the requested
    sizes. ``weight`` counts the examples a record renders to (MultiRC: a question's answer
    options); records are then taken whole until the budget is met, so a split may exceed it by
    less than one record's weight.
    """
    n_train, n_dev, n_test = sizes
    if min(sizes) < 0:
        raise RmaskError(f"split sizes must be >= 0, got train={n_train} dev={n_dev} test={n_test}")
    rng = np.random.default_rng(seed)
    notes = list(pools.notes)
    if pools.train is None:
        pool = pools.test
        order = rng.permutation(len(pool.records))
        available = _total(pool.records, weight)
        budgets = list(sizes)
        if available < sum(sizes):
            budgets = _shares(available, sizes)
            notes.append(
                f"{pool.name} split has {available} examples (< {sum(sizes)} asked): used whole, "
                f"shared {budgets[0]}/{budgets[1]}/{budgets[2]} between train/dev/test"
            )
        train, pos = _take(pool.records, order, 0, budgets[0], weight)
        dev, pos = _take(pool.records, order, pos, budgets[1], weight)
        test, _ = _take(pool.records, order, pos, budgets[2], weight)
        picks = [(pool, train), (pool, dev), (pool, test)]
        available_sizes = {pool.name: available}
    else:
        train_pool, test_pool = pools.train, pools.test
        order = rng.permutation(len(train_pool.records))
        available = _total(train_pool.records, weight)
        budgets = [n_train, n_dev]
        if available < n_train + n_dev:
            budgets = _shares(available, (n_train, n_dev))
            notes.append(
                f"{train_pool.name} split has {available} examples (< {n_train} + {n_dev} asked): "
                f"used whole, {budgets[0]} for train and {budgets[1]} for dev"
            )
        train, pos = _take(train_pool.records, order, 0, budgets[0], weight)
        dev, _ = _take(train_pool.records, order, pos, budgets[1], weight)
        test_available = _total(test_pool.records, weight)
        if test_available < n_test:
            notes.append(f"{test_pool.name} split has {test_available} examples (< {n_test} asked): used whole as test")
        test, _ = _take(test_pool.records, rng.permutation(len(test_pool.records)), 0, n_test, weight)
        picks = [(train_pool, train), (train_pool, dev), (test_pool, test)]
        available_sizes = {train_pool.name: available, test_pool.name: test_available}
    if weight is not None:
        notes.append("sampled in whole groups (a MultiRC question with all its answer options) up to each budget")
    meta = {"source": pools.source, "seed": seed, "available": available_sizes, "notes": notes}
    return picks, meta
