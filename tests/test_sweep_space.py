"""Search-space files: the shipped ones, bad ones (one-line errors with field and line, exit 2, before
Ray starts), --lr-from, resume bookkeeping, the tracking-server probe, and the per-worker model cache."""

from __future__ import annotations

import json
import math
import socket
import textwrap
from pathlib import Path

import psutil
import pytest
import torch

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint
from rmask_tune.sweep import load_space
from paths import DATA, REPO

pytestmark = pytest.mark.needs_data
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
    assert max(rm.lr) >= 3 and min(rm.lr) <= 1e-5  # past the sparsest masks' best LRs (tests/test_protocol.py)
    assert space.file.methods["none"].lr is None and "lora" in space.file.methods
    settings = space.settings()
    assert (settings["train_examples"], settings["dev_examples"], settings["test_examples"]) == (1000, 500, 1000)
    assert (settings["epochs"], settings["batch_size"]) == (5, 8)
    if name in ("opt125m", "opt1.3b"):
        assert 0 < space.file.resources.gpus < 1  # several small-model trials share a GPU


def test_smollm2_and_demo_files():
    smol = load_space(REPO / "search_spaces" / "smollm2-135m.yaml")
    assert smol.file.tasks == ["SST-2"] and smol.file.scheduler.type == "asha"
    assert smol.file.methods["random_masking"].ratios == pytest.approx([0.01, 0.001, 0.0001, 0.00001])
    lrs = smol.file.methods["random_masking"].lr
    assert min(lrs) <= 1e-4 and max(lrs) >= 1e-1 and lrs[1] / lrs[0] == pytest.approx(10**0.5, rel=0.01)
    assert set(smol.file.methods) == {"random_masking", "lora", "full", "none"}
    assert (smol.settings()["train_examples"], smol.settings()["epochs"]) == (256, 2)
    demo = load_space(REPO / "search_spaces" / "demo.yaml")
    assert demo.file.models == ["tiny-llama"] and demo.settings()["tokenizer"] == "smollm2-135m"
    assert demo.num_trials() <= 12
    # the README's first run: a real pretrained encoder, the head at its own LR, one grid for every ratio
    quick = load_space(REPO / "search_spaces" / "quickstart.yaml")
    assert quick.file.models == ["minilm-l6"] and quick.settings()["head_lr"] == pytest.approx(1e-3)
    grids = {quick.lr_grid("minilm-l6", "random_masking", r) for r in quick.file.methods["random_masking"].ratios}
    assert len(grids) == 1 and min(next(iter(grids))) == pytest.approx(1e-4) and max(next(iter(grids))) == 1.0
    assert quick.num_trials() == 48


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


def test_lr_by_ratio_gives_a_ratio_its_own_grid(tmp_path):
    text = GOOD.replace("lr: [1e-3, 1e-2]", 'lr: [1e-3, 1e-2]\n    lr_by_ratio: {0.001: {min: 1e-2, max: 1, per_decade: 1}}')
    space = load_space(write(tmp_path, text))
    grids = {(c.method, c.ratio): c.lrs for c in space.cells()}
    assert grids[("random_masking", 0.01)] == (1e-3, 1e-2)  # no grid of its own: the method's
    assert grids[("random_masking", 0.001)] == (1e-2, 1e-1, 1.0)
    assert space.num_trials() == 2 + 3 + 1 + 1
    assert {(t["ratio"], t["lr"]) for t in space.grid_trials() if t["method"] == "random_masking"} == \
           {(0.01, 1e-3), (0.01, 1e-2), (0.001, 1e-2), (0.001, 1e-1), (0.001, 1.0)}
    # without a shared lr, every ratio needs its own grid
    only_own = GOOD.replace("lr: [1e-3, 1e-2]", 'lr_by_ratio: {"1%": [1e-3], 0.001: [1e-1]}')
    assert {c.ratio: c.lrs for c in load_space(write(tmp_path, only_own)).cells() if c.ratio} == {0.01: (1e-3,), 0.001: (1e-1,)}


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
    ("per-ratio LRs on lora", GOOD.replace("lr: [1e-4]", "lr: [1e-4]\n    lr_by_ratio: {0.01: [1e-3]}"),
     "methods.lora.lr_by_ratio", 10, "takes no per-ratio grids"),
    ("per-ratio grid for an unlisted ratio", GOOD.replace("lr: [1e-3, 1e-2]", "lr: [1e-3]\n    lr_by_ratio: {0.05: [1e-3]}"),
     "methods.random_masking.lr_by_ratio", 8, "not in ratios: 0.05"),
    ("a ratio without any grid", GOOD.replace("lr: [1e-3, 1e-2]", 'lr_by_ratio: {"1%": [1e-3]}'),
     "methods.random_masking", 5, "none for 0.001"),
    ("per-ratio key of 0", GOOD.replace("lr: [1e-3, 1e-2]", "lr_by_ratio: {0: [1e-3]}"),
     "methods.random_masking.lr_by_ratio[0]", 7, "(0, 1]"),
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

    points = [LawPoint(ratio=r, log10_lr=-3 - 0.5 * math.log10(r / 0.01), se=0.1) for r in (0.01, 0.001, 0.0001)]
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


def test_lr_points_one_trains_each_pairs_own_recommendation(tmp_path, capsys):
    """Check runs: --lr-points 1 gives each (model, task) cell the law's recommendation for that pair."""
    from rmask_tune.law import Law, fit_shared

    offsets = {"SST-2": -2.0, "RTE": -1.0}  # RTE's optima a decade above SST-2's at every ratio
    points = [LawPoint(model="tiny-llama", task=task, ratio=r, log10_lr=offset - 0.8 * (math.log10(r) + 3), se=0.05)
              for task, offset in offsets.items() for r in (0.01, 0.001, 0.0001)]
    law = Law(pooled=None, models={}, shared=fit_shared(points))
    law.save(tmp_path / "law.json")
    path = write(tmp_path, GOOD.replace("tasks: [SST-2]", "tasks: [SST-2, RTE]"))
    args = ["sweep", str(path), "--lr-from", str(tmp_path / "law.json"), "--dry-run"]
    assert main(args + ["--lr-points", "1"]) == 0
    out = capsys.readouterr().out
    for task in offsets:
        lr = law.recommend(0.001, "tiny-llama", task).lr
        assert lr == pytest.approx(10 ** offsets[task], rel=0.02)
        assert f"tiny-llama {task} random_masking 0.1%: {lr:.3g}\n" in out
    assert main(args + ["--lr-points", "0"]) == 2 and "--lr-points must be at least 1" in capsys.readouterr().err
    assert main(["sweep", str(path), "--lr-points", "1", "--dry-run"]) == 2
    assert "give --lr-from LAW_JSON too" in capsys.readouterr().err


def test_the_resolved_space_holds_the_options_and_nothing_can_change_it(tmp_path):
    """resolve_space applies --lr-from, --lr-points and --prior once, into a new frozen space (the validated one
    is left as it was); assigning to the space, its file or a section of the file raises."""
    from dataclasses import FrozenInstanceError

    from pydantic import ValidationError

    from rmask_tune.law import Law, fit_law, narrow_grid
    from rmask_tune.sweep import SweepOptions, resolve_space
    from rmask_tune.sweep.schema import GridSearch

    points = [LawPoint(ratio=r, log10_lr=-3 - 0.5 * math.log10(r / 0.01), se=0.1) for r in (0.01, 0.001, 0.0001)]
    Law(pooled=fit_law(points, bootstrap=20), models={}).save(tmp_path / "law.json")
    law = str(tmp_path / "law.json")
    validated = load_space(write(tmp_path, GOOD))
    space = resolve_space(validated, SweepOptions(lr_from=law, lr_points=3, prior=law))
    assert (space.file.search.type, space.file.search.prior, space.law_points) == ("law", law, 3)
    assert space.prior is not None and space.prior.note == f"law {law}"
    grids = {cell.ratio: cell.lrs for cell in space.cells() if cell.method == "random_masking"}
    assert grids == {r: tuple(narrow_grid(space.law, r, points=3)) for r in (0.01, 0.001)}
    assert (validated.file.search.type, validated.law, validated.prior) == ("grid", None, None)
    with pytest.raises(FrozenInstanceError):
        space.done = ({"model": "tiny-llama"},)
    with pytest.raises(FrozenInstanceError):
        space.law = None
    with pytest.raises(ValidationError, match="frozen"):
        space.file.search = GridSearch()
    with pytest.raises(ValidationError, match="frozen"):
        space.file.methods["random_masking"].lr = [1.0]
    with pytest.raises(RmaskError, match="--lr-from applies when a sweep starts"):
        SweepOptions(lr_from=law, resume=True)


@pytest.mark.slow
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
    rte = load_space(REPO / "search_spaces" / "smollm2-135m-rte.yaml")
    rte_extend = load_space(REPO / "search_spaces" / "smollm2-135m-rte-extend.yaml")
    guided = load_space(REPO / "search_spaces" / "smollm2-135m-guided.yaml")
    main_grid = main_space.file.methods["random_masking"].lr
    extend_lrs = extend.file.methods["random_masking"].lr
    # the reruns must be the very configurations the main sweep logged (the report dedupes on them)
    assert [lr for lr in extend_lrs if lr <= max(main_grid)] == [lr for lr in main_grid if lr >= min(extend_lrs)]
    assert extend.experiment_name == main_space.experiment_name
    assert extend.tracking_uri == "sqlite:///runs/smollm2-135m/mlflow.db"  # the main sweep's default store
    # the RTE file runs the main file's cells on RTE, on windows of the same half-decade values (0.001% goes
    # past 1; 1% on the whole grid)
    assert rte.file.tasks == ["RTE"] and rte.experiment_name == main_space.experiment_name
    assert rte.tracking_uri == extend.tracking_uri
    main_cells = {(c.method, c.ratio): c.lrs for c in main_space.cells()}
    assert rte.lr_grid("smollm2-135m", "random_masking", 0.01) == main_cells[("random_masking", 0.01)]
    half_decades = {float(f"{10 ** (k / 2):.3g}") for k in range(-14, 3)}
    for cell in rte.cells() + rte_extend.cells():
        grid = main_cells[(cell.method, cell.ratio)]
        assert set(cell.lrs) <= half_decades and {lr for lr in cell.lrs if lr <= max(grid or [0])} <= set(grid), cell
    assert rte_extend.tracking_uri == rte.tracking_uri and rte_extend.experiment_name == rte.experiment_name
    for other in (extend, guided, rte, rte_extend):
        first = other.grid_trials()[0]
        ours = other.trial_config(first)
        theirs = main_space.trial_config(next(t for t in main_space.grid_trials()
                                              if (t["method"], t["ratio"]) == (first["method"], first["ratio"])))
        assert {k: v for k, v in ours.items() if k not in ("task", "ratio", "lr")} == \
               {k: v for k, v in theirs.items() if k not in ("task", "ratio", "lr")}


def test_across_tasks_files_share_one_grid_fixed_for_every_task_and_model():
    smol = load_space(REPO / "search_spaces" / "smollm2-135m-tasks.yaml")
    mini = load_space(REPO / "search_spaces" / "minilm-l6-tasks.yaml")
    for space in (smol, mini):
        assert space.file.seeds == [0, 1, 2] and len(space.file.tasks) >= 3
        grids = {}
        for cell in space.cells():
            grids.setdefault((cell.method, cell.ratio), set()).add(cell.lrs)
        assert all(len(by_task) == 1 for by_task in grids.values())  # the same grid on every task
        # each Random Masking window: seven half-decade values, centred a decade and a half from its ends
        for ratio in (0.01, 0.001, 0.0001, 0.00001):
            (lrs,) = grids[("random_masking", ratio)]
            assert len(lrs) == 7 and lrs[-1] / lrs[0] == pytest.approx(1000, rel=0.01)
    assert {k: {c.lrs for c in smol.cells() if (c.method, c.ratio) == k} for k in [("random_masking", 0.001)]} == \
           {k: {c.lrs for c in mini.cells() if (c.method, c.ratio) == k} for k in [("random_masking", 0.001)]}
    assert (smol.settings()["objective"], smol.settings()["scoring"]) == ("classification", "mean")
    assert mini.settings()["head_lr"] == pytest.approx(1e-3) and "COPA" not in mini.file.tasks
    for main_space in (smol, mini):  # the check runs: one ratio in no grid, every other setting the main file's
        check = load_space(REPO / "search_spaces" / f"{main_space.name}-check.yaml")
        assert check.file.methods["random_masking"].ratios == pytest.approx([3e-5])
        assert (check.file.tasks, check.file.seeds) == (main_space.file.tasks, main_space.file.seeds)
        ours = check.trial_config(check.grid_trials()[0])
        theirs = main_space.trial_config(next(t for t in main_space.grid_trials() if t["method"] == "random_masking"))
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


def test_summary_of_a_sitting_where_no_trial_ended(tmp_path):
    """Ctrl+C before any trial ends (e.g. right after --resume): no NaN overhead, the resume command instead."""
    import io
    from types import SimpleNamespace

    from rmask_tune.sweep.results import print_summary, timing

    space = load_space(write(tmp_path, GOOD))
    out = io.StringIO()
    store = SimpleNamespace(tracking_uri="sqlite:///x.db", experiment="good")  # only where the store is, for the last line
    print_summary([], space, store, out, timing([], slots=2, started=0.0, ray_ready=6.0, wall=150.0))
    text = out.getvalue()
    assert "0 trials ran here" in text and "no trial ended here, so no per-trial overhead" in text and "nan" not in text
    assert f"0 trial(s) cut short and {space.num_trials()} not started" in text and "--resume" in text


@pytest.mark.slow
def test_a_reused_worker_gives_back_what_the_last_trial_freed():
    """Freed small-object heap stays resident until trimmed: release_memory (run before every trial) returns it."""
    from rmask_tune.sweep.trainable import release_memory

    release_memory()
    chunks = [bytearray(3000) for _ in range(200_000)]  # ~600 MB of small heap chunks
    survivors = chunks[::8]  # a few stay alive all over the heap, so glibc cannot just shrink its top
    del chunks  # a trial's leftovers: freed, but still resident
    freed_but_resident = psutil.Process().memory_info().rss
    assert freed_but_resident - release_memory() > 300e6
    assert len(survivors) == 25_000


def test_a_sweep_whose_driver_died_marks_its_running_trials_interrupted(tmp_path):
    """Tune's driver can die under the sweep (Ray killed a worker for memory, mid-reuse): the runs MLflow
    still has as running are marked interrupted, so the report leaves them out and --resume reruns them."""
    import mlflow

    from rmask_tune.sweep.runner import root_cause
    from rmask_tune.sweep.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "exp", "good", "sweep-1", tmp_path / "artifacts")
    tracker.open({"sweep_name": "good"})
    cut, done = tracker.trial_run("t-cut", "cut", {"lr": 0.1}), tracker.trial_run("t-done", "done", {"lr": 0.01})
    tracker.finish_trial("t-done", "finished", {"epoch": 2, "test_metric": 0.8})
    driver = SweepTracker(uri, "exp", "good", "sweep-1", tmp_path / "artifacts")  # the resumed driver's own
    driver.open({"sweep_name": "good"})
    assert driver.abandon() == 1
    client = mlflow.MlflowClient(uri)
    assert client.get_run(cut).data.tags["rmask.status"] == "interrupted" and client.get_run(cut).info.status == "KILLED"
    assert client.get_run(done).data.tags["rmask.status"] == "finished" and client.get_run(done).info.status == "FINISHED"
    assert client.get_run(driver.parent_id).info.status == "KILLED" and driver.parent_id == tracker.parent_id
    try:
        try:
            raise MemoryError("1 worker(s) were killed due to the node running low on memory.\nTop 10 memory users: ...")
        except MemoryError as oom:
            raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed ...") from oom
    except RuntimeError as error:
        assert root_cause(error) == "1 worker(s) were killed due to the node running low on memory."
