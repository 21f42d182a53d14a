"""Every malformed file at a file boundary (law.json, sweep export, sweep.json, sweep file) is one line naming the
file and the field, exit code 2, no traceback, nothing written: issue 31's failures 5, 7 and 8, table-driven."""

from __future__ import annotations

import copy
import gzip
import json
import math
from pathlib import Path

import pytest
from hostile import PROBE_CALIBRATION, cli, real_export, snapshot, sweep_yaml, valid_law

from rmask_tune.law import load_law



def _set(doc: dict, path: tuple, value) -> dict:
    """A deep copy of ``doc`` with the value at ``path`` replaced (``DELETE``: removed)."""
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()
NAN, INF = float("nan"), float("inf")

# (case, path in law.json, value, words the error must hold)
LAW_CASES = [
    ("missing tau", ("shared", "tau"), DELETE, "shared.tau: is missing"),
    ("missing offsets", ("shared", "offsets"), DELETE, "shared.offsets: is missing"),
    ("shared as a list", ("shared",), [1, 2], "shared: "),
    ("text b", ("shared", "b"), "-0.8", "shared.b: "),
    ("NaN exponent", ("shared", "b"), NAN, "shared.b: input should be a finite number"),
    ("infinite offset", ("shared", "offsets", 0), INF, "shared.offsets[0]: input should be a finite number"),
    ("negative covariance", ("shared", "cov", 2, 2), -0.5, "shared: cov has a negative variance"),
    ("NaN covariance", ("shared", "cov", 0, 1), NAN, "shared.cov[0][1]"),
    ("covariance of the wrong size", ("shared", "cov"), [[1.0]], "shared: cov must be a 3 x 3 matrix"),
    ("negative ratio in the range", ("shared", "ratio_range", 0), -1e-4, "shared.ratio_range[0]"),
    ("negative ratio in a point", ("points", 0, "ratio"), -0.01, "points[0].ratio"),
    ("ratio above 1", ("shared", "points", 1, "ratio"), 3.0, "shared.points[1].ratio"),
    ("negative tau", ("shared", "tau"), -0.1, "shared.tau"),
    ("offsets shorter than pairs", ("shared", "offsets"), [0.1], "offsets has 1 values for 2 pairs"),
    ("pooled exponent as text", ("pooled", "b"), "x", "pooled.b"),
    ("NaN pooled intercept", ("pooled", "a"), NAN, "pooled.a"),
    ("calibration c as text", ("probe_calibration", "c"), "0.5", "probe_calibration.c"),
    ("negative calibration c", ("probe_calibration", "c"), -1.0, "probe_calibration.c"),
    ("calibration point without lambda_max", ("probe_calibration", "points", 0, "lambda_max"), DELETE,
     "probe_calibration.points[0].lambda_max: is missing"),
    ("calibration probe setting as text", ("probe_calibration", "probe", "batches"), "four",
     "probe_calibration.probe.batches"),
    ("calibration as a list", ("probe_calibration",), [], "probe_calibration"),
]


@pytest.fixture(scope="module")
def law_doc() -> dict:
    return valid_law()


@pytest.mark.parametrize("case, path, value, words", LAW_CASES, ids=[c[0] for c in LAW_CASES])
@pytest.mark.parametrize("probe", [False, True], ids=["law", "probe"])
def test_a_malformed_law_is_one_line_naming_file_and_field(law_doc, tmp_path, case, path, value, words, probe):
    law = tmp_path / "law.json"
    law.write_text(json.dumps(_set(law_doc, path, value)))  # Python's json writes NaN and Infinity
    before = snapshot(tmp_path)
    argv = ["recommend", "--law", law, "--ratio", "1e-3", "--model", "m", "--task", "SST-2", "--json"]
    done = cli(argv + (["--probe"] if probe else []))
    assert done.one_line_error, (done.code, done.err)
    assert str(law) in done.err and words in done.err, done.err
    assert done.out == "" and snapshot(tmp_path) == before


def test_the_valid_law_recommends_with_valid_json(law_doc, tmp_path):
    """The base of the table is sound: the same law unbroken gives finite learning rates in strict JSON."""
    law = tmp_path / "law.json"
    law.write_text(json.dumps(law_doc))
    done = cli(["recommend", "--law", law, "--ratio", "1e-3", "--model", "m", "--task", "SST-2", "--json"])
    assert done.code == 0, done.err
    result = json.loads(done.out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert math.isfinite(result["lr"]) and result["lr"] > 0 and result["basis"] == "pair"
    assert load_law(law).probe_calibration.c == PROBE_CALIBRATION["c"]


def test_a_law_that_overflows_is_refused_not_printed(law_doc, tmp_path):
    """Finite but absurd numbers (an offset of 400 decades) give no learning rate of inf or 0 either."""
    law = tmp_path / "law.json"
    law.write_text(json.dumps(_set(law_doc, ("shared", "offsets", 1), 400.0)))
    done = cli(["recommend", "--law", law, "--ratio", "1e-3", "--model", "m", "--task", "SST-2", "--json"])
    assert done.one_line_error and "not a usable number" in done.err, done.err


# ---------------------------------------------------------------- sweep exports (failure 8) and what reads them


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return real_export(tmp_path_factory.mktemp("export") / "good.json.gz")


def _export_doc(export: Path) -> dict:
    return json.loads(gzip.decompress(export.read_bytes()))


EXPORT_CASES = [
    ("trial without params.model", ("trials", 0, "params", "model"), DELETE, "trials[0].params: "),
    ("params null", ("trials", 1, "params"), None, "trials[1].params"),
    ("NaN learning rate", ("trials", 2, "params", "lr"), "nan", "params.lr must be a positive finite number"),
    ("negative ratio", ("trials", 2, "params", "ratio"), "-0.01", "params.ratio must be a positive finite number"),
    ("metric as words", ("trials", 0, "metrics", "best_dev_metric"), "good", "trials[0].metrics.best_dev_metric"),
    ("trials not a list", ("trials",), {"a": 1}, "trials: "),
    ("unknown example set", ("example_sets",), {}, "which example_sets lacks"),
    ("history step as text", ("trials", 0, "history", "dev_metric", 0, 0), "one", "trials[0].history.dev_metric[0]"),
    ("unreadable count missing", ("unreadable",), DELETE, "unreadable: is missing"),
]


def _readers(bad: Path, good: Path, folder: Path, spec: Path) -> dict[str, list]:
    """Every command line that reads an export, reading ``bad`` (``good`` where a second one is needed)."""
    law = folder / "law.json"
    law.write_text(json.dumps(valid_law()))
    return {
        "report": ["report", bad, "--out", folder / "report"],
        "report --also": ["report", good, "--also", bad, "--out", folder / "report"],
        "report --versus": ["report", good, "--versus", bad, "--out", folder / "report", "--bootstrap", "20"],
        "sweep --skip-done": ["sweep", spec, "--skip-done", bad, "--dry-run"],
        "recommend --anchor": ["recommend", "--law", law, "--ratio", "1e-3", "--model", "x", "--anchor", bad],
        "export of an export": ["export", bad, "--out", folder / "again.json.gz"],
    }


@pytest.mark.needs_data
@pytest.mark.parametrize("case, path, value, words", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
@pytest.mark.slow
def test_a_malformed_export_is_one_line_in_every_command_that_reads_it(export, tmp_path, case, path, value, words):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(_export_doc(export), path, value)))
    spec = tmp_path / "s.yaml"
    spec.write_text(sweep_yaml("s", tmp_path / "runs"))
    for reader, argv in _readers(bad, export, tmp_path, spec).items():
        before = snapshot(tmp_path)
        done = cli(argv)
        assert done.one_line_error, (reader, done.code, done.err)
        assert f"sweep export {bad}: " in done.err and words in done.err, (reader, done.err)
        assert snapshot(tmp_path) == before, reader


def test_export_refuses_an_empty_store_as_report_does(tmp_path):
    from rmask_tune.sweep.tracking import SweepTracker

    SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "empty", "empty", "s1", tmp_path / "art").open({})
    before = snapshot(tmp_path)
    report, export = cli(["report", tmp_path, "--out", tmp_path / "r"]), cli(["export", tmp_path, "--out", tmp_path / "e.json.gz"])
    assert report.one_line_error and export.one_line_error, (report.err, export.err)
    assert report.err == export.err == "rmask-tune: error: experiment 'empty' has no trial runs (tag rmask.role=trial)\n"
    assert snapshot(tmp_path) == before


def test_export_into_a_missing_folder_creates_it(export, tmp_path):
    out = tmp_path / "new" / "deeper" / "x.json.gz"
    done = cli(["export", export, "--out", out])
    assert done.code == 0, done.err
    assert _export_doc(out)["trials"] == _export_doc(export)["trials"]
    file = tmp_path / "file"
    file.write_text("not a folder")
    done = cli(["export", export, "--out", file / "x.json.gz"])
    assert done.one_line_error and "is not a folder" in done.err, done.err


# ---------------------------------------------------------------- sweep.json for --resume (failure 8)

STATE_CASES = [
    ("empty", ""),
    ("partial", '{"format": "rmask-tune sweep v1", "sweep_id": "ab'),
    ("not an object", "[1, 2]"),
    ("missing fields", '{"format": "rmask-tune sweep v1", "sweep_id": "abc"}'),
    ("wrong types", json.dumps({"format": "rmask-tune sweep v1", "sweep_id": 5, "name": "s", "source": "s.yaml",
                                "fingerprint": {}, "tracking_uri": "sqlite:///x", "experiment": "s"})),
    ("fingerprint a list", json.dumps({"format": "rmask-tune sweep v1", "sweep_id": "a", "name": "s", "source": "s",
                                       "fingerprint": [], "tracking_uri": "sqlite:///x", "experiment": "s"})),
    ("unknown field", json.dumps({"format": "rmask-tune sweep v1", "sweep_id": "a", "name": "s", "source": "s",
                                  "fingerprint": {}, "tracking_uri": "u", "experiment": "s", "extra": 1})),
]


@pytest.mark.needs_data
@pytest.mark.parametrize("case, text", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_resume_with_a_damaged_sweep_json_is_one_line(tmp_path, case, text):
    spec = tmp_path / "s.yaml"
    spec.write_text(sweep_yaml("s", tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "sweep.json").write_text(text)
    before = snapshot(tmp_path)
    done = cli(["sweep", spec, "--resume"])
    assert done.one_line_error, (done.code, done.err)
    assert str(tmp_path / "runs" / "sweep.json") in done.err, done.err
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- sweep files (failure 7)

SWEEP_CASES = [
    ("duplicate LRs", "methods:\n  lora:\n    lr: [5e-3, 0.005]\n", "learning rate listed twice: 0.005"),
    ("duplicate key", "methods:\n  lora:\n    lr: [1e-3]\n  lora:\n    lr: [1e-2]\n", "key 'lora' given twice"),
    ("per_decade below 1", "methods:\n  lora:\n    lr: {min: 1e-3, max: 1e-2, per_decade: 0.2}\n", "per_decade"),
    ("boolean LR", "methods:\n  lora:\n    lr: [true]\n", "lr[0]: a number is needed here, got true"),
    ("boolean seed", "seeds: [true]\nmethods:\n  lora:\n    lr: [1e-3]\n", "seeds[0]: a number is needed here"),
    ("no train examples", "data: {train_examples: 0}\nmethods:\n  lora:\n    lr: [1e-3]\n",
     "data.train_examples: 0 train examples: methods lora train on them"),
    ("no dev examples for a task", "task_settings:\n  SST-2: {dev_examples: 0}\nmethods:\n  lora:\n    lr: [1e-3]\n",
     "task_settings.SST-2.dev_examples: 0 dev examples"),
]


@pytest.mark.parametrize("case, body, words", SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
def test_a_silent_sweep_file_problem_is_an_error(tmp_path, case, body, words):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmodels: [tiny-llama]\ntasks: [SST-2]\n" + f"storage_path: {tmp_path / 'runs'}\n" + body)
    for argv in (["sweep", spec, "--dry-run"], ["sweep", spec]):
        done = cli(argv)
        assert done.one_line_error and words in done.err, (case, done.err)
        assert f"{spec}:" in done.err and not (tmp_path / "runs").exists()


def test_a_grid_always_ends_at_its_max(tmp_path):
    """per_decade 1 over a fifth of a decade rounded to one step once gave the grid's min alone."""
    from rmask_tune.sweep import load_space

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmodels: [tiny-llama]\ntasks: [SST-2]\nmethods:\n  lora:\n"
                    "    lr: {min: 1e-3, max: 1.5e-3, per_decade: 1}\n")
    assert load_space(spec).cells()[0].lrs == (1e-3, 1.5e-3)
