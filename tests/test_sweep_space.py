"""Search-space files: the shipped ones, bad ones (one-line errors with field and line, exit 2, before
Ray starts), --lr-from, resume bookkeeping, the tracking-server probe, and the per-worker model cache."""

from __future__ import annotations

import json
import math
import socket
import textwrap
from pathlib import Path

import pytest
import torch

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.sweep import load_space

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real task data not found at {DATA}")
PAPER_RATIOS = [0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001]
TASKS = ["SST-2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "COPA", "ReCoRD", "SQuAD", "DROP"]

GOOD = f"""\
name: good
models: [tiny-llama]
tasks: [SST-2]
methods:
  random_masking:
    ratios: ["1%", 0.001]
    lr: [1e-3, 1e-2]
  lora:
    lr: [1e-4]
  none: {{}}
training: {{epochs: 2, batch_size: 4}}
data: {{data_dir: {DATA}, train_examples: 8, dev_examples: 8, test_examples: 8}}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", ["opt125m", "opt1.3b", "opt13b", "llama2-7b"])
def test_paper_files_have_the_papers_grids(name):
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    assert space.file.tasks == TASKS
    rm = space.file.methods["random_masking"]
    assert rm.ratios == pytest.approx(PAPER_RATIOS)
    assert max(rm.lr) == pytest.approx(0.1) and min(rm.lr) <= 1e-4
    assert space.file.methods["none"].lr is None and "lora" in space.file.methods
    settings = space.settings()
    assert (settings["train_examples"], settings["dev_examples"], settings["test_examples"]) == (1000, 500, 1000)
    assert (settings["epochs"], settings["batch_size"]) == (5, 8)
    if name in ("opt125m", "opt1.3b"):
        assert 0 < space.file.resources.gpus < 1  # several small-model trials share a GPU


def test_smollm2_and_demo_files():
    smol = load_space(REPO / "search_spaces" / "smollm2-135m.yaml")
    assert smol.file.tasks == ["SST-2", "RTE"] and smol.file.scheduler.type == "asha"
    assert smol.file.methods["random_masking"].ratios == pytest.approx([0.01, 0.001, 0.0001, 0.00001])
    lrs = smol.file.methods["random_masking"].lr
    assert min(lrs) <= 1e-4 and max(lrs) >= 1e-1 and lrs[1] / lrs[0] == pytest.approx(10**0.5, rel=0.01)
    assert set(smol.file.methods) == {"random_masking", "lora", "full", "none"}
    assert (smol.settings()["train_examples"], smol.settings()["epochs"]) == (256, 2)
    demo = load_space(REPO / "search_spaces" / "demo.yaml")
    assert demo.file.models == ["tiny-llama"] and demo.settings()["tokenizer"] == "smollm2-135m"
    assert demo.num_trials() <= 12


def test_grid_and_optuna_trials(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    trials = space.grid_trials()
    assert len(trials) == 2 * 2 + 1 + 1 == space.num_trials()
    assert {(t["method"], t["ratio"], t["lr"]) for t in trials} >= {("random_masking", 0.01, 1e-3), ("none", None, None)}
    optuna = load_space(write(tmp_path, GOOD + "search: {type: optuna, num_samples: 3}\nseeds: [0, 1]\n"))
    schedule = optuna.optuna_schedule()
    # 3 LRs per seed for each of the 3 cells with an LR range, 1 per seed for `none`
    assert len(schedule) == (3 * 3 + 1) * 2 == optuna.num_trials()


def test_log_grid_spacing(tmp_path):
    space = load_space(write(tmp_path, GOOD.replace("lr: [1e-3, 1e-2]", "lr: {min: 1e-4, max: 1e-1, per_decade: 2}")))
    assert space.file.methods["random_masking"].lr == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1]


BAD = [
    ("unknown top-level key", GOOD + "colour: red\n", "colour", 13, "unknown key 'colour'"),
    ("wrong type", GOOD.replace("epochs: 2", "epochs: two"), "training.epochs", 11, "epochs must be a number"),
    ("ratio of 0", GOOD.replace('"1%", 0.001', '"1%", 0'), "methods.random_masking.ratios[1]", 6, "(0, 1]"),
    ("ratio of 2", GOOD.replace('"1%", 0.001', "2"), "methods.random_masking.ratios[0]", 6, "(0, 1]"),
    ("unknown task", GOOD.replace("[SST-2]", "[SST-3]"), "tasks[0]", 3, "SST-3"),
    ("unknown model", GOOD.replace("[tiny-llama]", "[tiny-lama]"), "models[0]", 2, "unknown model 'tiny-lama'"),
    ("unknown method", GOOD.replace("  none: {}", "  dropout: {lr: [1e-3]}"), "methods.dropout", 10, "unknown method"),
    ("negative LR", GOOD.replace("lr: [1e-3, 1e-2]", "lr: [1e-3, -1e-2]"), "methods.random_masking.lr[1]", 7, "greater than 0"),
    ("LR on none", GOOD.replace("none: {}", "none: {lr: [1e-3]}"), "methods.none.lr", 10, "no learning rate"),
    ("ratio on lora", GOOD.replace("lr: [1e-4]", "lr: [1e-4]\n    ratios: [0.01]"), "methods.lora.ratios", 10, "takes no ratio"),
    ("unknown section key", GOOD + "scheduler: {type: asha, grace: 1}\n", "scheduler.grace", 13, "unknown key 'grace'"),
    ("optuna without samples", GOOD + "search: {type: optuna}\n", "search", 13, "'num_samples' is required"),
    ("swept key in training", GOOD.replace("batch_size: 4", "lr: 0.1"), "training.lr", 11, "swept"),
    ("bad schedule", GOOD.replace("batch_size: 4", "schedule: wavy"), "training.schedule", 11, "unknown schedule"),
    ("missing data dir", GOOD.replace(str(DATA), "/nonexistent/data"), "data.data_dir", 12, "not found"),
    ("YAML syntax", GOOD.replace("tasks: [SST-2]", "tasks: [SST-2"), None, 4, "invalid YAML"),
]


@pytest.mark.parametrize("text,field,line,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_exit_2_with_one_line_naming_field_and_line(tmp_path, capsys, monkeypatch, text, field, line, words):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, text)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"rmask-tune: error: {path}:{line}: "), err
    assert (field is None or f": {field}: " in err) and words in err, err
    assert list(tmp_path.iterdir()) == [path]  # nothing started, nothing written


def test_missing_file(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "search-space file not found" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_anything_runs(tmp_path, capsys):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, GOOD + f"storage_path: {tmp_path / 'store'}\nmlflow: {{tracking_uri: 'http://127.0.0.1:{port}'}}\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err
    assert not (tmp_path / "store").exists()  # no sweep.json, no Tune folder: a retry starts cleanly


def test_storage_holding_a_sweep_needs_resume_and_resume_needs_the_same_file(tmp_path, capsys):
    from rmask_tune.sweep.runner import SweepState

    path = write(tmp_path, GOOD + f"storage_path: {tmp_path / 'store'}\n")
    space = load_space(path)
    SweepState.new(space).save(space.storage)
    saved = (space.storage / "sweep.json").read_text()
    assert main(["sweep", str(path)]) == 2
    assert "already holds sweep 'good'; add --resume" in capsys.readouterr().err
    path.write_text(path.read_text().replace("lr: [1e-4]", "lr: [1e-4, 1e-3]"))
    assert main(["sweep", str(path), "--resume"]) == 2
    assert "'methods' changed since the sweep started" in capsys.readouterr().err
    assert (space.storage / "sweep.json").read_text() == saved
    assert main(["sweep", str(write(tmp_path, GOOD + f"storage_path: {tmp_path / 'other'}\n", "b.yaml")), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_lr_from_law_narrows_the_laws_method_per_ratio(tmp_path, capsys):
    from rmask_tune.law import Law, fit_law, narrow_grid

    points = [{"ratio": r, "log10_lr": -3 - 0.5 * math.log10(r / 0.01), "se": 0.1} for r in (0.01, 0.001, 0.0001)]
    law = Law(pooled=fit_law(points, bootstrap=20), models={})
    law.save(tmp_path / "law.json")
    path = write(tmp_path, GOOD)
    assert main(["sweep", str(path), "--lr-from", str(tmp_path / "law.json"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for ratio in (0.01, 0.001):
        expected = ", ".join(f"{lr:.3g}" for lr in narrow_grid(law, ratio))
        assert f"random_masking {ratio * 100:g}%: {expected}" in out
    assert "lora: 0.0001\n" in out  # other methods keep their own grids
    assert main(["sweep", str(path), "--lr-from", str(tmp_path / "missing.json")]) == 2


def test_model_cache_gives_trials_the_same_model_and_rng_as_a_fresh_load():
    from rmask_tune.models import load_model
    from rmask_tune.sweep.model_cache import ModelCache

    cache = ModelCache()

    def load_with_seed(seed, loader):
        torch.manual_seed(seed)
        model = loader("minilm-l6", head="sequence-classification", num_labels=3)  # its new head draws from the RNG
        return model, torch.rand(3)

    def via_cache(name, **kwargs):
        return cache.load_model(load_model, name, **kwargs)

    fresh = {seed: load_with_seed(seed, load_model) for seed in (1, 2)}
    for seed in (1, 1, 2, 1):
        model, after = load_with_seed(seed, via_cache)
        reference, reference_after = fresh[seed]
        assert torch.equal(after, reference_after)  # the RNG continues exactly as after a real load
        for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(p, q), name
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # a trial's changes never reach the cached original
    assert (cache.hits, cache.misses) == (1, 3)  # seed-dependent: reused only for the same RNG state
    cache.reset_stats()
    for _ in range(3):
        cache.load_model(load_model, "tiny-llama")
    assert (cache.hits, cache.misses) == (2, 1)  # seed-free: reused whatever the RNG


def test_model_cache_installs_into_the_trainers_loaders():
    from rmask_tune import models
    from rmask_tune.sweep.model_cache import ModelCache

    original = models.load_model
    cache = ModelCache()
    with cache.installed():
        from rmask_tune.models import load_model  # as the trainer imports it when it prepares a trial

        load_model("tiny-llama")
        load_model("tiny-llama")
    assert models.load_model is original and cache.hits == 1


def test_sweep_state_file_round_trip(tmp_path):
    from rmask_tune.sweep.runner import SweepState

    space = load_space(write(tmp_path, GOOD + f"storage_path: {tmp_path / 'store'}\n"))
    state = SweepState.new(space)
    state.save(space.storage)
    assert SweepState.load(space) == state
    saved = json.loads((space.storage / "sweep.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}" and saved["experiment"] == "good"
    with pytest.raises(RmaskError, match="already holds"):
        SweepState.new(space)


def test_cluster_config_is_a_valid_autoscaling_gpu_cluster():
    import jsonschema
    import ray
    import yaml

    config = yaml.safe_load((REPO / "cluster" / "gpu-autoscaling.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["min_workers"] == 0 and t["max_workers"] >= 1 and t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)
    setup = " ".join(config["setup_commands"])
    assert "torch==" in setup and "rmask-tune[sweep]" in setup
    assert "--address auto" in (REPO / "cluster" / "README.md").read_text()


def test_unanswered_ray_address_is_a_one_line_error(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, GOOD + f"storage_path: {tmp_path / 'store'}\n")
    assert main(["sweep", str(path), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_setting_added_after_the_sweep_started_is_compared_at_its_default(tmp_path):
    path = write(tmp_path, GOOD + f"storage_path: {tmp_path / 'store'}\nscheduler: {{type: asha}}\n")
    space = load_space(path)
    older = space.fingerprint()
    del older["scheduler"]["tolerance"]  # as a sweep.json written before ASHA had a tolerance
    assert space.changed_section(older) is None
    path.write_text(path.read_text().replace("{type: asha}", "{type: asha, tolerance: 0.03}"))
    assert load_space(path).changed_section(older) == "scheduler"


def test_extend_and_guided_files_rerun_the_main_sweeps_configurations():
    main_space = load_space(REPO / "search_spaces" / "smollm2-135m.yaml")
    extend = load_space(REPO / "search_spaces" / "smollm2-135m-extend.yaml")
    guided = load_space(REPO / "search_spaces" / "smollm2-135m-guided.yaml")
    main_grid = main_space.file.methods["random_masking"].lr
    extend_lrs = extend.file.methods["random_masking"].lr
    # the reruns must be the very configurations the main sweep logged (the report dedupes on them)
    assert [lr for lr in extend_lrs if lr <= max(main_grid)] == [lr for lr in main_grid if lr >= min(extend_lrs)]
    assert extend.experiment_name == main_space.experiment_name
    assert extend.tracking_uri == "sqlite:///runs/smollm2-135m/mlflow.db"  # the main sweep's default store
    for other in (extend, guided):
        ours = other.trial_config(other.grid_trials()[0])
        theirs = main_space.trial_config(main_space.grid_trials()[0])
        assert {k: v for k, v in ours.items() if k not in ("ratio", "lr")} == \
               {k: v for k, v in theirs.items() if k not in ("ratio", "lr")}


def test_output_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    code = "import sys; from rmask_tune.cli import main; sys.exit(main())"
    # `true` exits without reading, long before Python has started: every write meets a closed pipe
    shell = f"{sys.executable} -c '{code}' sweep {REPO / 'search_spaces' / 'opt125m.yaml'} --dry-run | true"
    done = subprocess.run(["bash", "-c", shell + "; echo rc=${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=120)
    assert done.stdout == "rc=141\n"
    assert done.stderr == ""
