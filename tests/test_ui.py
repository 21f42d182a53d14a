"""``rmask-tune ui``: the experiment opens on the sweep's runs (checked in headless Chromium) and SIGTERM
ends the MLflow server with the command."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from rmask_tune.sweep.mlflow_view import EXPERIMENT_KIND_TAG, MODEL_TRAINING, VIEW_TAG, view_state  # noqa: E402
from rmask_tune.sweep.tracking import SweepTracker  # noqa: E402

EXPERIMENT = "ui-exp"
RATIOS = (1e-4, 1e-3)
LRS = (1e-3, 1e-2, 1e-1)
START_TIMEOUT_S = 120


def trial_name(ratio, lr):
    return f"trial ratio {ratio:g} lr {lr:g}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep's store as the sweep's own tracker writes it: a parent run and six finished trials."""
    folder = tmp_path_factory.mktemp("ui-sweep")
    tracker = SweepTracker(f"sqlite:///{folder / 'mlflow.db'}", EXPERIMENT, "ui-sweep", "s1", folder / "mlartifacts")
    tracker.open({"sweep_file": "ui.yaml"})
    for i, (ratio, lr) in enumerate((r, lr) for r in RATIOS for lr in LRS):
        params = {"model": "tiny-llama", "task": "SST-2", "method": "random_masking", "ratio": ratio, "lr": lr, "seed": 0}
        tracker.trial_run(f"t{i}", trial_name(ratio, lr), params)
        tracker.log_epoch(f"t{i}", {"epoch": 1, "train_loss": 0.7, "dev_metric": 0.5 + lr})
        tracker.finish_trial(f"t{i}", "finished", {"epoch": 1, "best_dev_metric": 0.5 + lr, "test_metric": 0.4 + lr})
    return folder, tracker


def test_the_sweep_marks_its_experiment_as_model_training_with_its_runs_view(store):
    _, tracker = store
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    view = json.loads(tags[VIEW_TAG])
    assert view == view_state()
    assert view["selectedColumns"] == ["params.`method`", "params.`ratio`", "params.`lr`", "params.`seed`",
                                       "metrics.`best_dev_metric`", "metrics.`test_metric`"]


def test_ui_marks_the_experiments_of_an_older_store_and_keeps_a_kind_set_by_hand(store):
    from rmask_tune.commands.ui import prepare_experiments

    folder, tracker = store
    client = tracker.client
    older = client.create_experiment("older-sweep")  # as sweeps made it before they marked their experiments
    own = client.create_experiment("someone-elses", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    found = dict(prepare_experiments(tracker.tracking_uri, None))
    assert found == {EXPERIMENT: tracker.experiment_id, "older-sweep": older, "someone-elses": own}
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert VIEW_TAG in client.get_experiment(older).tags
    assert client.get_experiment(own).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert prepare_experiments(tracker.tracking_uri, EXPERIMENT) == [(EXPERIMENT, tracker.experiment_id)]


def test_ui_refuses_a_folder_without_a_store(tmp_path, capsys):
    from rmask_tune.cli import main

    assert main(["ui", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("rmask-tune: error: no sweep at")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


@pytest.fixture(scope="module")
def ui(store):
    """``rmask-tune ui`` on the store, serving on a free port: (process, port, the links it printed)."""
    folder, tracker = store
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rmask_tune.cli", "ui", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(port):
        assert process.poll() is None, "rmask-tune ui exited before its server answered"
        assert time.monotonic() < deadline, f"the MLflow server did not answer on port {port}"
        time.sleep(0.5)
    lines = [process.stdout.readline()]
    while f"/experiments/{tracker.experiment_id}/" not in lines[-1] or "CHART" not in lines[-1]:
        lines.append(process.stdout.readline())  # a runs and a charts link per experiment in the store
    links = re.findall(r"(?:runs|charts)  (http://\S+)", "".join(lines))
    yield process, port, links
    below = _descendants(process.pid)  # the server runs in a process group of its own
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in below:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _page_text(url: str, tmp_path: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the MLflow UI check needs it")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=30000", "--window-size=1600,1200", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


@pytest.mark.slow
def test_the_printed_link_opens_the_trial_runs_with_their_columns(ui, store, tmp_path):
    _, port, links = ui
    _, tracker = store
    runs = f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs?"
    assert any(link.startswith(runs) for link in links)
    text = _page_text(next(link for link in links if link.startswith(runs) and "CHART" not in link), tmp_path)
    assert f"{len(RATIOS) * len(LRS)} matching runs" in text  # the trials, not the sweep's parent run
    assert "ui-sweep" not in text and "Traces 0" not in text
    headers = text[text.index("Run Name") : text.index(trial_name(RATIOS[0], LRS[0]))]
    for column in ("method", "ratio", "lr", "seed", "best_dev_metric", "test_metric"):
        assert re.search(rf"\b{column}\b", headers), f"column {column} not shown: {headers}"
    for ratio in RATIOS:
        for lr in LRS:
            assert trial_name(ratio, lr) in text


def test_the_charts_link_opens_the_learning_rate_charts(ui, store, tmp_path):
    _, _, links = ui
    _, tracker = store
    chart = next(link for link in links if f"/experiments/{tracker.experiment_id}/" in link and "CHART" in link)
    text = _page_text(chart, tmp_path)
    assert "Learning rate within a ratio (2)" in text  # the view's section with its two charts
    assert f"{len(RATIOS) * len(LRS)} matching runs" in text


def test_sigterm_ends_the_ui_and_its_server(ui):
    process, port, _ = ui
    below = _descendants(process.pid)
    assert below, "the MLflow server should run below rmask-tune ui"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    deadline = time.monotonic() + 5
    while (_answers(port) or any(map(_alive, below))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _answers(port), f"port {port} still answers after the ui ended"
    assert not [pid for pid in below if _alive(pid)], "processes of the MLflow server outlived rmask-tune ui"
