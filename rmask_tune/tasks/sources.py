"""Per-task data sources: which local files or hub datasets hold a task, and how their rows become
the canonical records the templates read.

Hub datasets (loaded only when no data directory is given and `datasets` is installed):
SuperGLUE ``aps/super_glue`` (configs boolq, cb, copa, multirc, record, rte, wic, wsc.fixed),
SST-2 ``nyu-mll/glue`` (sst2), ``rajpurkar/squad``, ``ucinlp/drop``, CIFAR-10 ``uoft-cs/cifar10``;
their train split is sampled into train/dev and their validation (CIFAR-10: test) split into test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.data import Mapped, Pool, Pools, Source, hub_split, read_json_list, read_jsonl, read_tsv, require

Records = Sequence[dict[str, Any]]
Convert = Callable[[Records], Records]

SUPERGLUE_HUB = "aps/super_glue"


def _same(records: Records) -> Records:
    return records


def _hub_pools(path: str, config: str | None, convert: Convert, test_split: str = "validation") -> Pools:
    train = convert(hub_split(path, config, "train"))
    test = convert(hub_split(path, config, test_split))
    name = f"{path}/{config}" if config else path
    return Pools(Pool("train", train), Pool(test_split, test), source=f"hf:{name}")


def superglue(folder: str, config: str, offline: Convert = _same, hub: Convert = _same, carve: bool = False) -> Source:
    """SuperGLUE ``superglue/<folder>/{train,val}.jsonl``; with ``carve``, val.jsonl alone is enough."""

    def read_offline(root: Path) -> Pools:
        directory = root / "superglue" / folder
        val = offline(read_jsonl(require(directory / "val.jsonl", folder)))
        train_path = directory / "train.jsonl"
        if carve and not train_path.is_file():
            note = (
                f"{folder}: {directory} has no train.jsonl, "
                "so train, dev and test are carved disjointly from val.jsonl"
            )
            return Pools(None, Pool("val", val), source=str(directory), notes=[note])
        train = offline(read_jsonl(require(train_path, folder)))
        return Pools(Pool("train", train), Pool("val", val), source=str(directory))

    return Source(offline=read_offline, hub=lambda: _hub_pools(SUPERGLUE_HUB, config, hub))


def sst2() -> Source:
    """GLUE SST-2 ``glue/SST-2/{train,dev}.tsv`` (header ``sentence<TAB>label``)."""

    def read_offline(root: Path) -> Pools:
        directory = root / "glue" / "SST-2"
        train = read_tsv(require(directory / "train.tsv", "SST-2"))
        dev = read_tsv(require(directory / "dev.tsv", "SST-2"))
        return Pools(Pool("train", train), Pool("dev", dev), source=str(directory))

    return Source(offline=read_offline, hub=lambda: _hub_pools("nyu-mll/glue", "sst2", _same))


def _squad_record(row: dict[str, Any]) -> dict[str, Any]:
    """{title?, context, question, answers}: from ``answer`` (str), ``answers`` (list) or hub ``answers.text``."""
    answers = row["answer"] if "answer" in row else row["answers"]
    if isinstance(answers, dict):
        answers = answers["text"]
    return {"title": row.get("title"), "context": row["context"], "question": row["question"], "answers": answers}


def squad() -> Source:
    """SQuAD ``squad/dev.json`` (a JSON list of {context, question, answer}); with ``squad/train.json``
    beside it train/dev come from that, else all three splits are carved from dev.json."""

    def read_offline(root: Path) -> Pools:
        directory = root / "squad"
        dev = Mapped(read_json_list(require(directory / "dev.json", "SQuAD")), _squad_record)
        if not (directory / "train.json").is_file():
            note = f"SQuAD: {directory} has no train.json, so train, dev and test are carved disjointly from dev.json"
            return Pools(None, Pool("dev", dev), source=str(directory), notes=[note])
        train = Mapped(read_json_list(directory / "train.json"), _squad_record)
        return Pools(Pool("train", train), Pool("dev", dev), source=str(directory))

    return Source(
        offline=read_offline, hub=lambda: _hub_pools("rajpurkar/squad", None, lambda s: Mapped(s, _squad_record))
    )


def _drop_record(row: dict[str, Any]) -> dict[str, Any]:
    """{passage, question, answers}: from ``answers`` (list or str) or hub ``answers_spans.spans``."""
    answers = row["answers"] if "answers" in row else row["answers_spans"]["spans"]
    return {"passage": row["passage"], "question": row["question"], "answers": answers}


def drop() -> Source:
    """DROP ``drop/{train,dev}.jsonl`` (one {passage, question, answers: [str, ...]} per line), or
    ``drop/{train,dev}.json`` holding a JSON list of the same records."""

    def read_split(directory: Path, split: str) -> Records:
        jsonl, json_list = directory / f"{split}.jsonl", directory / f"{split}.json"
        if jsonl.is_file():
            return Mapped(read_jsonl(jsonl), _drop_record)
        if json_list.is_file():
            return Mapped(read_json_list(json_list), _drop_record)
        raise RmaskError(f"task DROP: missing data file {jsonl} (or {json_list.name})")

    def read_offline(root: Path) -> Pools:
        directory = root / "drop"
        train, dev = read_split(directory, "train"), read_split(directory, "dev")
        return Pools(Pool("train", train), Pool("dev", dev), source=str(directory))

    return Source(offline=read_offline, hub=lambda: _hub_pools("ucinlp/drop", None, lambda s: Mapped(s, _drop_record)))


def multirc_questions_offline(passages: Records) -> Records:
    """SuperGLUE MultiRC jsonl (passage -> questions -> answers) to one record per question."""
    return [
        {
            "uid": f"p{p['idx']}-q{q['idx']}",
            "paragraph": p["passage"]["text"],
            "question": q["question"],
            "answers": q["answers"],
        }
        for p in passages
        for q in p["passage"]["questions"]
    ]


def multirc_questions_hub(rows: Records) -> Records:
    """Hub MultiRC (one row per answer option) grouped back into one record per question."""
    questions: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["idx"]["paragraph"], row["idx"]["question"])
        if key not in questions:
            questions[key] = {
                "uid": f"p{key[0]}-q{key[1]}",
                "paragraph": row["paragraph"],
                "question": row["question"],
                "answers": [],
            }
        questions[key]["answers"].append({"text": row["answer"], "label": row["label"]})
    return list(questions.values())


def record_queries_offline(passages: Records) -> Records:
    """ReCoRD jsonl (passage with entity spans, inclusive ends, and its queries) to one record per query."""
    queries = []
    for p in passages:
        text = p["passage"]["text"]
        spans = sorted(p["passage"]["entities"], key=lambda e: (e["start"], e["end"]))
        entities = list(dict.fromkeys(text[e["start"] : e["end"] + 1] for e in spans))
        for q in p["qas"]:
            queries.append(
                {
                    "uid": f"{p['idx']}-{q['idx']}",
                    "passage": text,
                    "query": q["query"],
                    "entities": entities,
                    "answers": [a["text"] for a in q["answers"]],
                }
            )
    return queries


def _record_hub_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": f"{row['idx']['passage']}-{row['idx']['query']}",
        "passage": row["passage"],
        "query": row["query"],
        "entities": list(dict.fromkeys(row["entities"])),
        "answers": row["answers"],
    }


def record_queries_hub(rows: Records) -> Records:
    """Hub ReCoRD rows (already one per query) in the canonical shape, converted lazily."""
    return Mapped(rows, _record_hub_row)
