"""Sweeps on a real Ray (a local head in this process, a CLI subprocess, an autoscaling fake cluster)
with a real MLflow sqlite store, a tiny Llama and a slice of real SST-2."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from rmask_tune.cli import main
from rmask_tune.sweep.runner import set_environment
from paths import DATA

pytestmark = pytest.mark.needs_data
CLI = [sys.executable, "-m", "rmask_tune.cli"]


def sweep_file(tmp: Path, name: str, body: str) -> Path:
    """A sweep of tiny trials (8 train / 8 dev / 8 test SST-2 examples) stored under ``tmp``."""
    text = f"""\
        name: {name}
        models: [tiny-llama]
        tasks: [SST-2]
        data: {{data_dir: {DATA}, train_examples: 8, dev_examples: 8, test_examples: 8}}
        storage_path: {tmp / name}
    """
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(body))
    return path


def mlflow_runs(storage: Path, experiment: str) -> tuple[object, list, object]:
    """(client, trial runs, the parent run) of a sweep's sqlite store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rmask.role") == "sweep"]
    assert len(parents) == 1, "one parent run per sweep, never a second one"
    trials = [r for r in runs if r.data.tags.get("rmask.role") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    return client, trials, parents[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_marked(marker: str) -> None:
    """SIGKILL the processes this test started: those carrying ``RMASK_TEST_MARKER=<marker>`` in their environment."""
    tag = f"RMASK_TEST_MARKER={marker}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def marked_env():
    """Environment for subprocesses: their own Ray temp dir and a marker to find (and end) what they start."""
    marker = uuid.uuid4().hex[:8]
    temp = Path(f"/tmp/rmt-{marker}")  # short: Ray's socket paths live under it
    temp.mkdir()
    set_environment()
    yield {**os.environ, "RAY_TMPDIR": str(temp), "RMASK_TEST_MARKER": marker}
    kill_marked(marker)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray head for the in-process sweeps of this module (run_sweep reuses it)."""
    set_environment()
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grid_sweep(local_ray, tmp_path_factory):
    """2 ratios x 3 learning rates with ASHA over 2 epochs, 2 trials at a time; (storage, stdout)."""
    tmp = tmp_path_factory.mktemp("grid")
    path = sweep_file(
        tmp,
        "grid",
        """\
        methods:
          random_masking:
            ratios: ["1%", "0.1%"]
            lr: [1e-3, 3e-2, 1.0]
        training: {epochs: 2, batch_size: 4}
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
        max_concurrent_trials: 2
        """,
    )
    out = run_cli(["sweep", str(path)])
    return tmp / "grid", out


def run_cli(argv: list[str]) -> str:
    """Run the CLI in this process, returning its stdout; fails on a non-zero exit."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


@pytest.mark.slow
def test_grid_sweep_logs_one_run_per_trial_under_one_parent(grid_sweep):
    storage, out = grid_sweep
    client, trials, parent = mlflow_runs(storage, "grid")
    assert parent.data.tags["rmask.sweep"] == "grid" and parent.info.status == "FINISHED"
    assert len(trials) == 6 and len({r.data.tags["rmask.trial_id"] for r in trials}) == 6
    points = {(r.data.params["ratio"], r.data.params["lr"]) for r in trials}
    assert points == {(ratio, lr) for ratio in ("0.01", "0.001") for lr in ("0.001", "0.03", "1.0")}
    statuses = []
    for run in trials:
        params, metrics, status = run.data.params, run.data.metrics, run.data.tags["rmask.status"]
        statuses.append(status)
        assert (params["model"], params["task"], params["method"], params["seed"]) == ("tiny-llama", "SST-2", "random_masking", "0")
        assert (params["epochs"], params["train_examples"], params["metric"]) == ("2", "8", "accuracy")
        epochs = int(metrics["epochs_completed"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_metric")] == list(range(1, epochs + 1))
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) <= epochs
        assert run.info.status == "FINISHED" and status in ("finished", "stopped", "diverged")
        # sizes are logged with the first epoch, so trials ASHA stops carry them too
        assert int(params["trainable_params"]) / int(params["total_params"]) == pytest.approx(float(params["ratio"]), rel=0.01)
        assert params["precision"] == "fp32"  # the policy the trial resolved ("auto" on a CPU)
        if status == "stopped":  # ASHA ended it after the first epoch: no test metric
            assert epochs == 1 and "test_metric" not in metrics
        else:
            assert "test_metric" in metrics or metrics["diverged"] == 1
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["examples.json", "metrics.json"]
            saved = json.loads((storage / "trials" / run.data.tags["rmask.trial_id"] / "metrics.json").read_text())
            assert saved["status"] == status and saved["lr"] == float(params["lr"])
            if status == "finished":
                assert epochs == 2 and metrics["test_metric"] == pytest.approx(saved["test_metric"])
    assert "finished" in statuses
    rows = [line for line in out.splitlines() if line.startswith("tiny-llama  SST-2")]
    assert len(rows) == 6 and sorted(line.split()[6] for line in rows) == sorted(statuses)
    assert "trial-epochs trained:" in out and "per-trial overhead" in out
    assert f"Tune folder: {storage / 'tune'}" in out and f"MLflow store: sqlite:///{storage / 'mlflow.db'}" in out


@pytest.mark.slow
def test_ui_serves_the_sweeps_store(grid_sweep, marked_env):
    storage, _ = grid_sweep
    port = free_port()
    ui = subprocess.Popen(CLI + ["ui", str(storage), "--port", str(port)], env=marked_env, stdout=subprocess.PIPE, text=True)
    try:
        assert ui.stdout.readline().startswith(f"MLflow UI for sqlite:///{storage / 'mlflow.db'}: http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=grid"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert json.load(response)["experiment"]["name"] == "grid"
                    break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the MLflow UI did not come up"
                time.sleep(1)
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 0
    finally:
        ui.kill()


@pytest.mark.slow
def test_optuna_sweep_samples_learning_rates_in_the_methods_range(local_ray, tmp_path):
    path = sweep_file(
        tmp_path,
        "tpe",
        """\
        methods:
          random_masking:
            ratios: ["1%"]
            lr: {min: 1e-3, max: 1e-1, per_decade: 1}
        training: {epochs: 1, batch_size: 8}
        search: {type: optuna, num_samples: 2, seed: 3}
        scheduler: {type: none}
        max_concurrent_trials: 2
        """,
    )
    run_cli(["sweep", str(path)])
    _, trials, _ = mlflow_runs(tmp_path / "tpe", "tpe")
    lrs = [float(r.data.params["lr"]) for r in trials]
    assert len(trials) == 2 and len(set(lrs)) == 2 and all(1e-3 <= lr <= 1e-1 for lr in lrs)
    assert all(r.data.tags["rmask.status"] == "finished" and "test_metric" in r.data.metrics for r in trials)


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_or_duplicating(local_ray, tmp_path, marked_env):
    path = sweep_file(
        tmp_path,
        "crash",
        """\
        methods:
          random_masking:
            ratios: ["1%"]
            lr: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
        training: {epochs: 1, batch_size: 8}
        scheduler: {type: none}
        max_concurrent_trials: 1
        """,
    )
    storage = tmp_path / "crash"
    sweep = subprocess.Popen(CLI + ["sweep", str(path)], env=marked_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not glob.glob(str(storage / "trials" / "*" / "metrics.json")):
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    kill_marked(marked_env["RMASK_TEST_MARKER"])  # whatever Ray left behind
    done = {Path(p).parent.name: os.stat(p).st_mtime_ns for p in glob.glob(str(storage / "trials" / "*" / "metrics.json"))}
    assert 1 <= len(done) < 6

    run_cli(["sweep", str(path), "--resume"])
    finished = glob.glob(str(storage / "trials" / "*" / "metrics.json"))
    assert len(finished) == 6
    for trial_id, mtime in done.items():  # finished before the crash: never trained again
        assert os.stat(storage / "trials" / trial_id / "metrics.json").st_mtime_ns == mtime
        assert len((storage / "trials" / trial_id / "attempts.jsonl").read_text().splitlines()) == 1
    client, trials, parent = mlflow_runs(storage, "crash")
    assert len(trials) == 6 and len({r.data.tags["rmask.trial_id"] for r in trials}) == 6
    assert {r.data.tags["rmask.trial_id"] for r in trials} == {Path(p).parent.name for p in finished}
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["rmask.status"] == "finished"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_metric")] == [1]
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_interrupted_sweep_marks_the_cut_trial_and_resume_runs_it_again(local_ray, tmp_path, marked_env):
    path = sweep_file(
        tmp_path,
        "ctrlc",
        """\
        methods:
          random_masking:
            ratios: ["1%"]
            lr: [1e-3, 1e-2, 1e-1]
        training: {epochs: 20, batch_size: 2}
        scheduler: {type: none}
        max_concurrent_trials: 1
        """,
    )
    storage = tmp_path / "ctrlc"
    sweep = subprocess.Popen(CLI + ["sweep", str(path)], env=marked_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300

    def running() -> bool:  # the second trial has started and not finished
        started = glob.glob(str(storage / "trials" / "*" / "attempts.jsonl"))
        return len(glob.glob(str(storage / "trials" / "*" / "metrics.json"))) == 1 and len(started) == 2

    while not running():
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and ends the running trial
    out, err = sweep.communicate(timeout=120)
    kill_marked(marked_env["RMASK_TEST_MARKER"])
    assert sweep.returncode == 1  # issue 31: an interrupted sweep does not exit 0
    assert err.strip().splitlines()[-1].startswith("rmask-tune: error: sweep incomplete: 1 cut short, 1 not started")
    progress = [line for line in err.splitlines() if "trials done" in line]
    assert "1/3 trials done (1 finished, 0 stopped early" in progress[-1] and "1 interrupted" in progress[-1]
    client, trials, parent = mlflow_runs(storage, "ctrlc")
    statuses = {r.data.tags["rmask.trial_id"]: r.data.tags["rmask.status"] for r in trials}
    assert sorted(statuses.values()) == ["finished", "interrupted"]
    cut = next(r for r in trials if r.data.tags["rmask.status"] == "interrupted")
    assert cut.info.status == "KILLED" and parent.info.status == "KILLED"
    assert "interrupted" in out and "1 trial(s) cut short and 1 not started" in out and "--resume" in out
    assert "trial-epochs trained: 20 of 20" in out  # the cut trial counts neither as trained nor as saved

    run_cli(["sweep", str(path), "--resume"])
    client, trials, parent = mlflow_runs(storage, "ctrlc")
    assert len(trials) == 3 and parent.info.status == "FINISHED"
    again = client.get_run(cut.info.run_id)  # the same run, run again to its end
    assert again.data.tags["rmask.status"] == "finished" and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(cut.info.run_id, "dev_metric")] == list(range(1, 21))
    assert all(r.data.tags["rmask.status"] == "finished" for r in trials)


def fake_cluster_config(port: int) -> dict:
    """Ray's fake multi-node provider: a head with no CPUs, and 1-CPU workers the autoscaler may add (up to 2)."""
    worker = {"resources": {"CPU": 1, "object_store_memory": 100 * 2**20}, "node_config": {}, "min_workers": 0, "max_workers": 2}
    return {
        "cluster_name": "rmask-fake",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
            "cpu_worker": worker,
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        **{key: {} for key in ("docker", "file_mounts")},
        "auth": {"ssh_user": "ubuntu"},
        "file_mounts_sync_continuously": False,
        **{
            key: []
            for key in (
                "cluster_synced_files", "initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
            )  # fmt: skip
        },
    }


def cluster_nodes(address: str, env: dict) -> list[bool]:
    """Whether each node the cluster has registered is alive, asked from a separate driver process."""
    code = "import json, ray; ray.init(address=%r, logging_level='ERROR'); print('NODES', json.dumps([n['Alive'] for n in ray.nodes()]))"
    done = subprocess.run([sys.executable, "-c", code % address], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("NODES ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("NODES ") :])


@pytest.mark.slow
def test_autoscaling_cluster_adds_workers_for_a_sweep(tmp_path, marked_env):
    """What ray.cluster_utils.AutoscalingCluster does, on its own port and temp dir: its start() runs
    `ray stop --force` (every Ray on the machine) and its config template is not in the Ray 2.60 wheel."""
    port = free_port()
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps(fake_cluster_config(port)))
    env = {**marked_env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=0", "--node-ip-address=127.0.0.1",
         f"--autoscaling-config={config}", "--include-dashboard=false", "--object-store-memory=100000000",
         f"--temp-dir={env['RAY_TMPDIR']}"],  # fmt: skip
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    address = f"127.0.0.1:{port}"
    assert cluster_nodes(address, env) == [True]  # the head alone, with no CPU for any trial
    path = sweep_file(
        tmp_path,
        "scale",
        """\
        methods:
          random_masking:
            ratios: ["1%"]
            lr: [1e-3, 1e-2, 1e-1]
        training: {epochs: 1, batch_size: 8}
        scheduler: {type: none}
        resources: {cpus: 1}
        max_concurrent_trials: 2
        """,
    )
    done = subprocess.run(CLI + ["sweep", str(path), "--address", address], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if " finished " in line]) == 3
    nodes = cluster_nodes(address, env)
    assert len(nodes) >= 2, nodes  # the autoscaler added worker nodes for the trials
    _, trials, _ = mlflow_runs(tmp_path / "scale", "scale")
    assert len(trials) == 3


@pytest.mark.slow
def test_crashing_trial_is_retried_then_logged_as_errored(local_ray, tmp_path):
    path = sweep_file(
        tmp_path,
        "crashy",
        """\
        methods:
          none: {}
        scheduler: {type: none}
        max_failures: 1
        """,
    )
    (tmp_path / "no-data").mkdir()
    path.write_text(path.read_text().replace(str(DATA), str(tmp_path / "no-data")))  # the trial cannot start
    out = run_cli(["sweep", str(path), "--allow-failures"])
    _, trials, _ = mlflow_runs(tmp_path / "crashy", "crashy")
    (run,) = trials
    assert run.info.status == "FAILED" and run.data.tags["rmask.status"] == "errored"
    trial_dir = tmp_path / "crashy" / "trials" / run.data.tags["rmask.trial_id"]
    assert len((trial_dir / "attempts.jsonl").read_text().splitlines()) == 2  # FailureConfig retried it once
    assert "errored: none SST-2 tiny-llama seed 0: " in out and "RmaskError: task SST-2: missing data file" in out


def test_trials_asking_for_more_than_the_local_machine_has(local_ray, tmp_path, capsys):
    path = sweep_file(tmp_path, "gpu", "methods:\n  none: {}\nresources: {cpus: 1, gpus: 0.5}\n")
    assert main(["sweep", str(path)]) == 2
    assert "a trial needs 0.5 GPUs (resources), this machine has 0" in capsys.readouterr().err
    assert not (tmp_path / "gpu").exists()
