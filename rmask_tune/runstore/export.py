"""A sweep's compact export (``sweep-export.json.gz``): everything a report is made from, in one file.

It holds every trial run's record (``rmask_tune.runstore.record.RunRecord``): configuration (params),
status, latest metrics, per-epoch ``dev_metric`` and ``train_loss``, and its per-example results
(examples.json) where the trial recorded them. A split's examples (uids, labels), shared by the trials
that drew the same data, are stored once under ``example_sets``. A trial without per-example results
says so in ``per_example``. ``rmask-tune report`` reads an export as it reads a store, so a report
regenerates from its export alone, without the MLflow store (``runs/`` does not travel; a report does).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.files import validated
from rmask_tune.files.export import KIND, VERSION, ExportFile
from rmask_tune.runstore.record import RunRecord

EXPORT_FILE = "sweep-export.json.gz"
RECORDED = "recorded"
# What ``per_example`` says of a trial without per-example results.
NOT_RECORDED = (
    "not recorded: the trial ran before per-example results were kept, or ended before its first "
    "evaluation; a binomial approximation from its reported metric stands in for them"
)


@dataclass
class SweepExport:
    """An export read back: the experiment it came from and its trial runs' records (newest first)."""

    experiment: str
    tracking_uri: str
    records: list[RunRecord]
    unreadable: int  # trial runs of the store without model/task params (not exported)


def encode_export(experiment: str, tracking_uri: str, records: list[RunRecord], unreadable: int) -> bytes:
    """The gzipped JSON of an export (no timestamp in the gzip header: the same trials, the same bytes
    but for ``exported``)."""
    example_sets: dict[str, dict] = {}
    trials = [_trial_entry(record, example_sets) for record in records]
    data = {
        "kind": KIND,
        "version": VERSION,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "unreadable": unreadable,
        "example_sets": example_sets,
        "trials": trials,
    }
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _trial_entry(record: RunRecord, example_sets: dict[str, dict]) -> dict:
    examples = None
    if record.examples is not None:
        splits = {}
        for split, columns in record.examples["splits"].items():
            key = hashlib.sha256(json.dumps(columns, sort_keys=True).encode()).hexdigest()[:16]
            example_sets.setdefault(key, columns)
            splits[split] = key
        examples = {**record.examples, "splits": splits}
    return {
        "run_id": record.run_id,
        "run_status": record.run_status,
        "start_time": record.start_time,
        "end_time": record.end_time,
        "params": record.params,
        "metrics": {key: _number(value) for key, value in record.metrics.items()},
        "tags": record.tags,
        "history": {name: [[step, _number(v)] for step, v in points] for name, points in record.history.items()},
        "per_example": RECORDED if examples is not None else NOT_RECORDED,
        "examples": examples,
    }


def _number(value: float) -> float | str:
    """Strict JSON has no NaN or infinities: those are written as the strings nan, inf and -inf."""
    return value if math.isfinite(value) else repr(float(value))


def read_export(path: str | Path) -> SweepExport:
    """Read an export written by ``encode_export`` (gzipped, or plain JSON once unpacked), checked against its
    schema (``rmask_tune.files.export``): a malformed one is one line naming the file and the field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, EOFError, ValueError, RecursionError) as error:
        raise RmaskError(f"{path} is not a readable sweep export ({error})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise RmaskError(f"{path} is not a sweep export (written by rmask-tune report or export)")
    if data.get("version") != VERSION:
        raise RmaskError(f"{path} is a sweep export of version {data.get('version')!r}; this version reads {VERSION}")
    validated(ExportFile, data, path, "sweep export")
    records = [_record(entry, data["example_sets"]) for entry in data["trials"]]
    return SweepExport(data["experiment"], data["tracking_uri"], records, data["unreadable"])


def _record(entry: dict, example_sets: dict[str, dict]) -> RunRecord:
    examples = entry["examples"]
    if examples is not None:
        examples = {**examples, "splits": {split: example_sets[key] for split, key in examples["splits"].items()}}
    return RunRecord(
        run_id=entry["run_id"],
        run_status=entry["run_status"],
        start_time=entry["start_time"],
        end_time=entry["end_time"],
        params=entry["params"],
        metrics={key: float(value) for key, value in entry["metrics"].items()},  # float() reads "nan" too
        tags=entry["tags"],
        history={name: [(int(step), float(v)) for step, v in points] for name, points in entry["history"].items()},
        examples=examples,
    )
