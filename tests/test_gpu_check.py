"""The GPU check script in its CPU configuration (what CI runs): benchmark and one trial per method."""

import json
import sys

import pytest

from rmask_tune.gpu_check import TRIAL_CASES, main
from paths import DATA



@pytest.mark.needs_data
@pytest.mark.slow
def test_gpu_check_runs_on_cpu_in_bf16_and_every_method_trains(tmp_path, capsys, monkeypatch):
    for absent in ("ray", "mlflow", "optuna", "datasets"):  # the GPU machine has none of them
        monkeypatch.setitem(sys.modules, absent, None)
    out = tmp_path / "check.json"
    assert main(["--device", "cpu", "--small", "--data-dir", str(DATA), "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16"
    rows = report["bench"]["rows"]
    methods = [row["method"] for row in rows]
    assert methods == ["floor"] + ["random_masking"] * 16 + ["structured_masking", "lora", "shira", "full", "dense_mask"]
    paths = [(row["ratio"], row["path"]) for row in rows if row["method"] == "random_masking"]
    assert paths == [(r, p) for r in (1e-2, 1e-3, 1e-4, 1e-5) for p in ("dense", "sparse", "inplace", "auto")]  # each path timed
    assert all(row["step_time_s"] > 0 and row["peak_mem_bytes"] > 0 for row in rows)
    assert len(report["trials"]) == len(TRIAL_CASES)
    assert all(trial["status"] == "finished" for trial in report["trials"]), report["trials"]
    assert len(table) == 1 + len(rows) and sum("finished" in line for line in table) == len(TRIAL_CASES)
