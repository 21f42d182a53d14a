"""The law's statistics end to end on a real sqlite MLflow store with known noisy per-example metrics
(tests/noisy_store.py): a known law, and one flat cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from noisy_store import NoisyLaw, noisy_store

from rmask_tune.law import load_law
from rmask_tune.report import build_report

LAW = NoisyLaw(ratios={1e-2: True, 1e-3: True, 1e-4: True, 1e-5: False})  # 1e-5: flat, the frozen level


def _store(ratios=None, frozen: bool = True) -> Path:
    return noisy_store(LAW, ratios, frozen)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = _store()
    out = build_report(str(folder), out=tmp_path_factory.mktemp("report") / "noisy", bootstrap=300).folder
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def _law_data(folder: Path) -> dict:
    data = json.loads((folder / "law.json").read_text())
    for key in ("created", "tracking_uri"):
        data.pop(key)
    return data


@pytest.mark.slow
def test_intervals_signal_test_and_shared_exponent_on_a_noisy_store(report):
    law = load_law(report / "law.json")
    points = {p.ratio: p for p in law.points}
    assert set(points) == {1e-2, 1e-3, 1e-4}
    for ratio, p in points.items():
        assert p.resampled == "per-example" and p.signal["reference"] == "frozen model"
        assert p.signal["passed"] and p.signal["difference"] > 0.15
        low, high = p.interval
        assert low < 10 ** LAW.log_lr("SST-2", ratio) < high, ratio  # the bootstrap interval holds the true optimum
        assert high / low < 10  # and dev noise, not the grid alone, sets its width
    (flat,) = [e.to_json() for e in law.excluded]
    assert flat["ratio"] == 1e-5 and flat["reason"].startswith("signal test failed")
    assert flat["signal"]["p_value"] >= 0.05 and flat["signal"]["reference"] == "frozen model"
    assert law.shared.b_ci[0] <= -0.8 <= law.shared.b_ci[1]
    assert law.shared.b == pytest.approx(-0.8, abs=0.1)
    readme = (report / "README.md").read_text()
    assert "no: signal test failed" in readme and "| per-example |" in readme


def test_the_report_regenerates_from_its_export_alone(report, tmp_path):
    again = build_report(str(report / "sweep-export.json.gz"), out=tmp_path / "again", bootstrap=300).folder
    assert _law_data(report) == _law_data(again)


@pytest.mark.slow
def test_sittings_in_separate_stores_combine_into_the_same_report(report, tmp_path):
    """Cells run in two sittings (two stores, as on two machines): one's export plus the other's store with
    --also give the report of the whole sweep, and the combined export regenerates it."""
    first, second = _store(ratios=(1e-2, 1e-3)), _store(ratios=(1e-4, 1e-5), frozen=False)
    try:
        part = build_report(str(first), out=tmp_path / "first", bootstrap=300).folder
        whole = build_report(str(part / "sweep-export.json.gz"), out=tmp_path / "whole", bootstrap=300,
                             also=[str(second)]).folder
    finally:
        shutil.rmtree(first, ignore_errors=True)
        shutil.rmtree(second, ignore_errors=True)
    assert _law_data(whole) == _law_data(report)
    again = build_report(str(whole / "sweep-export.json.gz"), out=tmp_path / "again", bootstrap=300).folder
    assert _law_data(again) == _law_data(report)
