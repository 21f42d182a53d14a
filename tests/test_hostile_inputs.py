"""Property-based (hypothesis): random malformed law.json files, sweep exports, sweep files and sweep.json
states, fed through every CLI entry point that reads them, in this process. Each must end with exit code 2,
exactly one line on stderr (``rmask-tune: error: ...``), no traceback, and no file of the output folder changed.

Every mutation breaks a rule of the file's schema (a NaN or infinite number, text or a boolean where a number
belongs, a number out of its range, a required key gone, a section of the wrong kind, a key or LR given twice,
a file cut short), so a valid file is never drawn; the sweep commands run with --dry-run (it checks the same
files; a valid file drawn by mistake then fails the test without starting Ray), except --resume, which
reads sweep.json before Ray starts. The cases tried are counted (``CASES``, printed with -s);
RMASK_HOSTILE_EXAMPLES sets how many per file kind (default 80).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hostile import cli, real_export, snapshot, sweep_yaml, valid_law
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.needs_data
EXAMPLES = int(os.environ.get("RMASK_HOSTILE_EXAMPLES", 80))  # per file kind; each draws its entry point too
CASES: Counter = Counter()
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DELETE = "<delete>"

NOT_A_NUMBER = st.sampled_from([float("nan"), float("inf"), float("-inf"), "0.5", True, [], {}, [1.0]])
NEGATIVE = st.floats(max_value=-1e-6, min_value=-1e6)
NON_POSITIVE = st.one_of(NEGATIVE, st.just(0.0))
BAD = {  # a kind of field -> values its schema refuses
    "finite": NOT_A_NUMBER,
    "nonneg": st.one_of(NOT_A_NUMBER, NEGATIVE),
    "positive": st.one_of(NOT_A_NUMBER, NON_POSITIVE),
    "ratio": st.one_of(NOT_A_NUMBER, NON_POSITIVE, st.floats(min_value=1.001, max_value=1e9)),
    "count": st.sampled_from([0, -3, 1.5, "4", True, None]),
    "section": st.sampled_from([[], "x", 3, [{"b": 1}]]),
    "required": st.just(DELETE),
}


def _leaves(doc, path=()):
    """Every (path, value) of a JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _leaves(value, path + (i,))
    yield path, doc


def _put(doc, path: tuple, value):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value == DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


# ---------------------------------------------------------------- law.json


def _law_kind(path: tuple, value) -> str | None:
    """The kind of a checked law.json field (None: not one the test breaks)."""
    if len(path) < 2 or isinstance(value, (dict, list)) or path[0] not in ("shared", "pooled", "probe_calibration",
                                                                         "points"):
        return None
    section, name, last = path[0], path[1], path[-1]
    if name == "ratio_range" or last == "ratio":
        return "ratio"
    if name == "cov":
        return "nonneg" if path[2] == path[3] else "finite"
    if section == "shared":
        return {"b": "finite", "x0": "finite", "mean_offset": "finite", "offsets": "finite", "tau": "nonneg",
                "mean_offset_se": "nonneg", "dof": "count"}.get(name)
    if section == "pooled":
        return "finite" if name in ("a", "b", "r2", "a_ci", "b_ci") else "nonneg" if name == "residual_sd" else None
    if section == "probe_calibration":
        if name == "probe":
            return {"batches": "count", "batch_size": "count", "iters": "count", "tol": "positive",
                    "fd_step": "positive"}.get(last)
        return "positive" if last in ("c", "lr", "lambda_max") or name == "c_by_model" else None
    return None


def _law_fields(law: dict) -> list[tuple[tuple, str]]:
    """Each checked field of the law with its kind, the required keys and the sections."""
    fields = [(path, kind) for path, value in _leaves(law) if (kind := _law_kind(path, value)) is not None]
    required = [(("shared", key), "required") for key in ("b", "x0", "pairs", "offsets", "cov", "tau", "dof")]
    required += [(("pooled", key), "required") for key in ("a", "b", "cov", "ratio_range")]
    required += [(("probe_calibration", "c"), "required")]
    sections = [((key,), "section") for key in ("shared", "pooled", "probe_calibration", "models")]
    return fields + required + sections


@pytest.fixture(scope="module")
def law_doc() -> dict:
    return valid_law()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, law_doc):
    """An output folder with files in it (a report, a law, a sweep file) that no failed command may touch."""
    folder = tmp_path_factory.mktemp("hostile")
    export = real_export(folder / "good.json.gz")
    assert cli(["report", export, "--out", folder / "report", "--bootstrap", "20"]).code == 0
    (folder / "spec.yaml").write_text(sweep_yaml("hostile", folder / "runs"))
    (folder / "good-law.json").write_text(json.dumps(law_doc))
    yield folder
    print(f"\nhostile inputs tried: {dict(CASES)}, total {sum(CASES.values())}")


def _check(workspace: Path, kind: str, entry: str, argv: list) -> None:
    before = snapshot(workspace)
    done = cli(argv)
    CASES[kind] += 1
    assert done.one_line_error, (kind, entry, done.code, done.err[-3000:])
    assert snapshot(workspace) == before, (kind, entry)


@st.composite
def broken_law(draw, law: dict):
    """law.json's text with one rule broken, or cut short."""
    if draw(st.integers(0, 9)) == 0:
        text = json.dumps(law)
        return text[: draw(st.integers(0, len(text) - 1))]
    path, kind = draw(st.sampled_from(_law_fields(law)))
    return json.dumps(_put(law, path, draw(BAD[kind])))


@PROPERTY
@given(data=st.data())
@pytest.mark.slow
def test_random_malformed_laws(workspace, law_doc, data):
    text = data.draw(broken_law(law_doc))
    bad = workspace / "input" / "law.json"
    entry = data.draw(st.sampled_from(["recommend", "recommend --probe", "sweep --lr-from"]))
    argv = {"recommend": ["recommend", "--law", bad, "--ratio", "1e-3", "--model", "m", "--task", "SST-2", "--json"],
            "recommend --probe": ["recommend", "--probe", "--law", bad, "--ratio", "1e-3", "--model", "m",
                                  "--task", "SST-2"],
            "sweep --lr-from": ["sweep", workspace / "spec.yaml", "--lr-from", bad, "--dry-run"]}[entry]
    with _input(workspace, "law.json", text.encode()):
        _check(workspace, "law", entry, argv)


# ---------------------------------------------------------------- sweep exports


def _export_fields(doc: dict) -> list[tuple[tuple, object]]:
    """(path, strategy of values that break it) over the export's checked fields (two trials' worth)."""
    fields = [(("kind",), st.sampled_from(["x", 1, None])), (("version",), st.sampled_from([2, "1", None])),
              (("experiment",), st.sampled_from([1, None, []])), (("unreadable",), BAD["count"].filter(lambda v: v != 0)),
              (("trials",), BAD["section"]), (("example_sets",), st.sampled_from([[], "x"]))]
    for i in range(2):
        trial = ("trials", i)
        fields += [(trial + ("params",), st.sampled_from([None, [], "x"])),
                   (trial + ("params", "model"), st.just(DELETE)), (trial + ("params", "task"), st.just(DELETE)),
                   (trial + ("params", "lr"), st.sampled_from(["nan", "inf", "-1", "0", "abc", 1e-3, None])),
                   (trial + ("params", "ratio"), st.sampled_from(["nan", "-0.01", "0", "x", 0.01])),
                   (trial + ("run_id",), st.sampled_from([None, 3, []])), (trial + ("tags",), st.sampled_from([[], "x"])),
                   (trial + ("start_time",), st.sampled_from(["now", 1.5, []])),
                   (trial + ("history",), st.sampled_from([[], "x"])), (trial + ("examples",), st.sampled_from([[], 3]))]
        for name in doc["trials"][i]["metrics"]:
            fields.append((trial + ("metrics", name), st.sampled_from(["abc", None, [], {}, True])))
    return fields


@pytest.fixture(scope="module")
def export_doc(workspace) -> dict:
    return json.loads(gzip.decompress((workspace / "good.json.gz").read_bytes()))


@PROPERTY
@given(data=st.data())
def test_random_malformed_exports(workspace, export_doc, data):
    if data.draw(st.integers(0, 9)) == 0:
        raw = gzip.compress(json.dumps(export_doc).encode())
        content = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        path, values = data.draw(st.sampled_from(_export_fields(export_doc)))
        content = json.dumps(_put(export_doc, path, data.draw(values))).encode()
    bad = workspace / "input" / "sweep.json.gz"
    good, report = workspace / "good.json.gz", workspace / "report"
    entry = data.draw(st.sampled_from(["report", "report --also", "report --versus", "sweep --skip-done",
                                       "recommend --anchor", "export"]))
    argv = {"report": ["report", bad, "--out", report, "--overwrite"],
            "report --also": ["report", good, "--also", bad, "--out", report, "--overwrite"],
            "report --versus": ["report", good, "--versus", bad, "--out", report, "--overwrite"],
            "sweep --skip-done": ["sweep", workspace / "spec.yaml", "--skip-done", bad, "--dry-run"],
            "recommend --anchor": ["recommend", "--law", workspace / "good-law.json", "--ratio", "1e-3",
                                   "--model", "other", "--anchor", bad],
            "export": ["export", bad, "--out", workspace / "report" / "sweep-export.json.gz", "--overwrite"]}[entry]
    with _input(workspace, "sweep.json.gz", content):
        _check(workspace, "export", entry, argv)


# ---------------------------------------------------------------- sweep files and sweep.json


def _sweep_doc(storage: Path) -> dict:
    return yaml.safe_load(sweep_yaml("hostile", storage))


SWEEP_MUTATIONS = [
    (("name",), st.sampled_from(["bad name!", "", 5, None])),
    (("models",), st.sampled_from([[], ["no-such-model"], "tiny-llama", [None]])),
    (("tasks",), st.sampled_from([[], ["NoTask"], ["SST-2", "sst2"], [1]])),
    (("seeds",), st.sampled_from([[-1], [True], [0, 0], [], ["a"], [0.5]])),
    (("methods",), st.sampled_from([{}, [], {"nomethod": {"lr": [1e-3]}}, {"none": {"lr": [1e-3]}}])),
    (("methods", "random_masking", "lr"), st.one_of(
        st.lists(st.one_of(NOT_A_NUMBER.filter(lambda v: v != "0.5"), NON_POSITIVE, st.just("fast")), min_size=1,
                 max_size=3),  # a quoted number is a number in a sweep file: '0.5' is 0.5
        st.just([5e-3, 0.005]), st.just([]),
        st.sampled_from([{"min": 1, "max": 0.1}, {"min": 1e-3, "max": 1e-2, "per_decade": 0.5},
                         {"min": 0, "max": 1}, {"min": 1e-3}, {"min": 1e-3, "max": 1e-2, "step": 2}]))),
    (("methods", "random_masking", "ratios"), st.one_of(
        st.lists(st.one_of(st.sampled_from([0, 2, "x%", True, "-1%", float("nan")]), NEGATIVE), min_size=1, max_size=2),
        st.just(["1%", "1%"]), st.just([]))),
    (("data", "train_examples"), st.sampled_from([0, -1, True, "many", 1.5])),
    (("data", "dev_examples"), st.sampled_from([0, -1, True, "many"])),
    (("data", "test_examples"), st.sampled_from([0, -2, False])),
    (("data", "data_dir"), st.sampled_from(["/no/such/folder", 3])),
    (("scheduler",), st.sampled_from([{"type": "foo"}, {"type": "asha", "grace_period": 0},
                                      {"type": "asha", "reduction_factor": 1}, [], {"type": "asha", "grace_period": 99}])),
    (("resources",), st.sampled_from([{"cpus": 0}, {"gpus": -1}, {"cpus": "two"}, {"memory": 3}])),
    (("max_concurrent_trials",), st.sampled_from([0, -1, "x"])),
    (("training",), st.sampled_from([{"epochs": 0}, {"lr": 1e-3}, {"nosuch": 1}, {"batch_size": 0}, [],
                                     {"train_examples": 3}])),
    (("nosuchkey",), st.just(1)),
    (("task_settings",), st.sampled_from([{"CB": {"batch_size": 2}}, {"SST-2": {"epochs": 3}},
                                          {"SST-2": {"dev_examples": 0}}, {"NoTask": {}}])),
]


@PROPERTY
@given(data=st.data())
def test_random_malformed_sweep_files_and_states(workspace, data):
    storage = workspace / "runs"
    doc = _sweep_doc(storage)
    what = data.draw(st.sampled_from(["sweep file", "sweep file text", "sweep.json"]))
    entry, state = ["sweep", workspace / "input" / "sweep.yaml", "--dry-run"], None
    if what == "sweep file":
        path, values = data.draw(st.sampled_from(SWEEP_MUTATIONS))
        text = yaml.safe_dump(_put(doc, path, data.draw(values)))
    elif what == "sweep file text":  # a key given twice, or the file cut inside a token
        text = sweep_yaml("hostile", storage)
        line = data.draw(st.sampled_from([l for l in text.splitlines() if not l.startswith(" ")]))
        text = text + line + "\n" if data.draw(st.booleans()) else text + "methods: [\n"
    else:  # a damaged sweep.json under --resume
        text = yaml.safe_dump(doc)
        state = data.draw(st.sampled_from(["", "{", "[]", "null", '{"format": "rmask-tune sweep v1"}',
                                           '{"format": "other", "sweep_id": "a"}']))
        entry[-1] = "--resume"
    with _input(workspace, "sweep.yaml", text.encode()):
        if state is not None:
            storage.mkdir()
            (storage / "sweep.json").write_text(state)
        try:
            _check(workspace, what, " ".join(map(str, entry[:1] + entry[2:])), entry)
        finally:
            shutil.rmtree(storage, ignore_errors=True)


class _input:
    """A malformed input file in ``workspace/input``, removed afterwards (so the snapshot sees it on both sides)."""

    def __init__(self, workspace: Path, name: str, content: bytes):
        self.path = workspace / "input" / name
        self.content = content

    def __enter__(self):
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_bytes(self.content)

    def __exit__(self, *exc):
        shutil.rmtree(self.path.parent, ignore_errors=True)
