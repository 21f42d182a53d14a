"""The Adapter baseline from AdapterHub's ``adapters``: trained and saved in its side environment, refused here.

adapters 1.3.0 needs transformers 4.57, so the training test builds (once, cached) the side environment
of ``rmask_tune.methods.adapter_method`` and runs tests/adapterhub_checks.py there in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import transformers

from rmask_tune.errors import RmaskError
from rmask_tune.methods import prepare_method
from rmask_tune.methods.adapter_method import ADAPTER_NAME, side_environment_install
from rmask_tune.models import tiny_model
from paths import DATA, REPO

CACHE = Path(os.environ.get("RMASK_CACHE_DIR") or Path.home() / ".cache" / "rmask-tune")
UNREACHABLE = re.compile(r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|timed out")


@pytest.fixture(scope="module")
def side_env() -> Path:
    """The side environment (adapters 1.3.0 + transformers 4.57.6), installed once into the cache."""
    target = CACHE / "adapters-env"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    done = subprocess.run(side_environment_install(str(scratch)), capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        output = done.stdout + done.stderr
        if UNREACHABLE.search(output):
            pytest.skip(f"package registry unreachable, cannot build the adapters side environment: {output[-300:]}")
        pytest.fail(f"installing the adapters side environment failed: {output[-2000:]}")
    try:
        os.rename(scratch, target)  # only a complete install ever appears at the final path
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)  # another process installed it first
    return target


def run_with(path_first: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run python with ``path_first`` in front of the project's environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path_first), os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.needs_data
@pytest.mark.slow
def test_adapters_train_save_and_reload_under_the_side_environment(side_env, tmp_path):
    models = ("tiny-llama", "tiny-opt", "tiny-bert")  # built-in support, the plugin interface (OPT), a classifier
    done = run_with(side_env, "tests/adapterhub_checks.py", str(DATA), str(tmp_path), *models)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert (facts["transformers"], facts["adapters"]) == ("4.57.6", "1.3.0")
    assert facts["bad_config_error"].startswith("adapter: unknown bottleneck config 'lora'; choose one of")

    for name, run in facts["models"].items():
        # The paper's adapter: two per layer (after attention and after the MLP), bottleneck 8, ReLU, zero start.
        assert run["adapter_modules"] == 2 * run["layers"] and set(run["widths"]) == {8}, name
        assert run["details"]["config"] == "double_seq_bn" and run["details"]["non_linearity"] == "relu"
        assert run["starts_at_base"], f"{name}: a fresh adapter must leave the model's outputs unchanged"
        # The method's trainable count is the library's own count of the adapter's parameters.
        assert run["setup_trainable"] == run["library_count"] == run["details"]["library_params"] > 0
        assert run["trial_trainable"] == run["library_count"] + run["head_size"]
        # Training lowered the loss and wrote only the adapter (and a classifier's head): the base is untouched.
        assert run["status"] == "finished" and run["train_losses"][1] < run["train_losses"][0], name
        assert run["base_untouched"] and all(f".{ADAPTER_NAME}." in key for key in run["adapter_keys"])
        assert sorted(run["adapter_keys"] + run["head_params"]) == run["changed"], name
        # The trainer saved the adapter in the library's format; reloaded into a fresh model, it gives the same outputs.
        assert {"adapter.safetensors", "adapter_config.json"} <= set(run["saved_files"]), name
        assert run["loaded_as"] == ADAPTER_NAME
        assert run["reloaded_equal"], f"{name}: the reloaded adapter changed the model's outputs"

    llama, opt, bert = (facts["models"][name] for name in models)
    assert llama["head_params"] == opt["head_params"] == [] and llama["artifacts"] == opt["artifacts"] == ["adapter"]
    assert "adapter_interface.json" in opt["saved_files"]  # OPT goes through the library's plugin interface
    assert bert["head_params"] == ["classifier.weight", "classifier.bias"]
    assert bert["artifacts"] == ["adapter", "trainable.safetensors"]  # the head, as for peft methods


def test_without_a_compatible_library_the_method_says_what_it_needs():
    with pytest.raises(RmaskError) as caught:
        prepare_method(tiny_model("tiny-llama"), "adapter")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("adapter: ")
    if importlib.util.find_spec("adapters") is None:
        assert "AdapterHub's adapters is not installed" in message
    assert f"this environment has transformers {transformers.__version__}" in message
    assert "transformers~=4.57.6" in message and "pip install --no-deps --target DIR 'adapters==1.3.0'" in message


def test_adapters_installed_beside_transformers_5_is_refused_in_one_line(side_env, tmp_path):
    # Only the library (and its metadata) in front of this environment's transformers 5.
    for entry in ("adapters", "adapters-1.3.0.dist-info"):
        (tmp_path / entry).symlink_to(side_env / entry)
    probe = (
        "from rmask_tune.errors import RmaskError\nfrom rmask_tune.methods import prepare_method\n"
        "from rmask_tune.models import tiny_model\ntry:\n    prepare_method(tiny_model('tiny-llama'), 'adapter')\n"
        "except RmaskError as error:\n    print(error)\n"
    )
    done = run_with(tmp_path, "-c", probe, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    message = done.stdout.strip().splitlines()[-1]
    assert message.startswith("adapter: adapters 1.3.0, which needs transformers~=4.57.6, and this environment has ")
    assert f"transformers {transformers.__version__}" in message and "HfFolder" in message
