"""Random Masking as a peft method: the same masks as the project's own, and what a peft user relies on
(trainable count, save and load, merge, HF Trainer, gradient checkpointing) on tiny Llama, OPT and GPT-2
models and on the real MiniLM with a classification head.
"""

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from rmask_tune import RandomMaskingConfig
from rmask_tune.errors import RmaskError
from rmask_tune.masking import (
    DifferentBaseWarning,
    RandomMaskingLinear,
    apply_random_masking,
    load_adapter,
    masked_layers,
    save_adapter,
)
from rmask_tune.models import load_model, tiny_model

TINY = ["tiny-llama", "tiny-opt", "tiny-gpt2"]
MODELS = TINY + ["minilm-l6"]
PEFT_PREFIX = "base_model.model."


def base_model(name, seed=0):
    """A fresh base model; MiniLM's new classification head differs on every load, as a user's would
    (the adapter saves it, and the base check leaves it out)."""
    if name == "minilm-l6":
        return load_model(name, head="sequence-classification")
    return tiny_model(name, seed=seed)


def rmask_config(name, **settings):
    task = {"task_type": "SEQ_CLS"} if name == "minilm-l6" else {}
    return RandomMaskingConfig(**{"ratio": 1e-3, "seed": 0, **task, **settings})


def batch(model, size=4, seq=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (size, seq), generator=gen)
    if model.config.model_type == "bert":
        return {"input_ids": ids, "labels": torch.randint(0, 2, (size,), generator=gen)}
    return {"input_ids": ids, "labels": ids}


def outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


def perturb(model, seed=1):
    """Give every masked value (and a trainable head) a nonzero value, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def trainable_line(capsys, model) -> int:
    model.print_trainable_parameters()
    line = capsys.readouterr().out
    return int(line.split("trainable params:")[1].split("||")[0].replace(",", ""))


def test_import_rmask_tune_stays_without_peft():
    code = "import sys, rmask_tune; assert 'peft' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_refuses_bad_settings():
    with pytest.raises(RmaskError, match="exactly one of ratio"):
        RandomMaskingConfig()
    with pytest.raises(RmaskError, match="exactly one of ratio"):
        RandomMaskingConfig(ratio=1e-3, density=0.01)
    with pytest.raises(RmaskError, match="unknown structure"):
        RandomMaskingConfig(ratio=1e-3, structure="diagonal")


@pytest.mark.parametrize("name", TINY)
def test_same_masks_and_exact_count_as_the_project(name, capsys):
    config = rmask_config(name)
    model = get_peft_model(base_model(name), config)
    twin = base_model(name)
    info = apply_random_masking(twin, ratio=1e-3, seed=0)
    layers = {n.removeprefix(PEFT_PREFIX): layer for n, layer in masked_layers(model).items()}
    assert list(layers) == info.targets
    for layer_name, twin_layer in masked_layers(twin).items():
        assert torch.equal(layers[layer_name].mask.rmask_flat, twin_layer.mask.rmask_flat)
    assert trainable_line(capsys, model) == info.trainable_params == sum(info.counts.values())
    assert model.peft_config["default"] is config and config.base_fingerprint  # the user's config, filled in
    assert model.peft_config["default"].masked_modules == info.targets


def test_minilm_counts_masks_and_its_new_head(capsys):
    model = get_peft_model(base_model("minilm-l6"), rmask_config("minilm-l6"))
    masked = sum(layer.values.numel() for layer in masked_layers(model).values())
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert masked == round(1e-3 * sum(p.numel() for p in base_model("minilm-l6").parameters()))
    assert trainable_line(capsys, model) == masked + sum(p.numel() for p in head.parameters())


PATHS = pytest.mark.parametrize("path", ["dense", "sparse", "inplace"])


@PATHS
@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_then_from_pretrained_gives_the_same_outputs(name, tmp_path, path):
    model = get_peft_model(base_model(name), rmask_config(name, path=path))
    perturb(model)
    inputs = batch(model)
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert isinstance(PeftConfig.from_pretrained(str(tmp_path)), RandomMaskingConfig)

    loaded = PeftModel.from_pretrained(base_model(name), str(tmp_path))
    assert {layer.mask.rmask_path for layer in masked_layers(loaded).values()} == {path}
    assert torch.equal(outputs(loaded, inputs), expected)
    for param in loaded.parameters():
        assert not param.requires_grad  # loaded for inference unless is_trainable=True


@pytest.mark.parametrize("name", TINY)
def test_saved_adapter_is_the_fp32_values_only(name, tmp_path):
    model = get_peft_model(base_model(name), rmask_config(name))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert all(key.endswith(".rmask_values") and t.dtype == torch.float32 for key, t in tensors.items())
    values = sum(t.numel() for t in tensors.values())
    assert values == sum(layer.values.numel() for layer in masked_layers(model).values())
    header = weights.stat().st_size - 4 * values
    assert 0 < header < 160 * len(tensors)  # names, shapes and offsets only: no indices
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "RMASK" and saved["seed"] == 0 and saved["masks_checksum"]


@pytest.mark.parametrize("name", TINY)
def test_a_different_base_is_a_warning_unless_strict_and_a_different_mask_is_refused(name, tmp_path):
    get_peft_model(base_model(name), rmask_config(name)).save_pretrained(tmp_path)
    with pytest.warns(DifferentBaseWarning, match="different base model"):
        PeftModel.from_pretrained(base_model(name, seed=1), str(tmp_path))
    strict = PeftConfig.from_pretrained(str(tmp_path))
    strict.strict_base = True
    with pytest.raises(RmaskError, match="different base model"):
        PeftModel.from_pretrained(base_model(name, seed=1), str(tmp_path), config=strict)
    config_file = tmp_path / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "seed": 5}))
    with pytest.raises(RmaskError, match="differ from the saved ones"):
        PeftModel.from_pretrained(base_model(name), str(tmp_path))


@PATHS
@pytest.mark.parametrize("name", MODELS)
def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs(name, path):
    model = get_peft_model(base_model(name), rmask_config(name, path=path))
    perturb(model)
    inputs = batch(model)
    expected = outputs(model, inputs)
    merged = model.merge_and_unload()
    assert type(merged) is type(base_model(name))
    assert not any(isinstance(m, (BaseTunerLayer, RandomMaskingLinear)) for m in merged.modules())
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(outputs(merged, inputs), expected, rtol=1e-5, atol=1e-5)


@PATHS
def test_merge_adapter_unmerge_and_disable_are_exact(path):
    model = get_peft_model(base_model("tiny-llama"), rmask_config("tiny-llama", path=path))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    plain = outputs(model, batch(model))
    perturb(model)
    adapted = outputs(model, batch(model))
    assert not torch.equal(adapted, plain)
    with model.disable_adapter():
        assert torch.equal(outputs(model, batch(model)), plain)
    model.merge_adapter()
    torch.testing.assert_close(outputs(model, batch(model)), adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert torch.equal(outputs(model, batch(model)), adapted)


def test_a_second_adapter_gets_its_own_mask_from_its_seed():
    model = get_peft_model(base_model("tiny-llama"), rmask_config("tiny-llama"))
    model.add_adapter("other", rmask_config("tiny-llama", seed=1))
    twin = base_model("tiny-llama")
    apply_random_masking(twin, ratio=1e-3, seed=1)
    for layer_name, twin_layer in masked_layers(twin).items():
        layer = masked_layers(model)[PEFT_PREFIX + layer_name]
        assert torch.equal(layer.rmask_masks["other"].rmask_flat, twin_layer.mask.rmask_flat)
        assert not torch.equal(layer.rmask_masks["default"].rmask_flat, twin_layer.mask.rmask_flat)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.slow
def test_hf_trainer_with_fused_adamw_trains_the_values_only(name, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(base_model(name), rmask_config(name))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    values = {n: p.detach().clone() for n, p in model.named_parameters() if ".rmask_values." in n}
    data = [{k: v[i] for k, v in batch(model, size=8, seed=i).items()} for i in range(8)]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        optim="adamw_torch_fused", use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
    )
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n], v) for n, v in values.items())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())


@PATHS
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant, path):
    def value_grads(model):
        model.train()
        model.zero_grad()
        model(**batch(model)).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if ".rmask_values." in n}

    model = get_peft_model(base_model("tiny-llama"), rmask_config("tiny-llama", path=path))
    plain = value_grads(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    if use_reentrant:
        model.enable_input_require_grads()  # reentrant checkpoints pass gradients only through inputs that need them
    checkpointed = value_grads(model)
    assert model.base_model.model.model.gradient_checkpointing
    assert all(plain[n].abs().sum() > 0 for n in plain)
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-7)


def test_adapter_sizes_against_shira_and_lora(tmp_path):
    """The adapter stores 4 bytes per value; SHiRA stores its indices too; LoRA at the same count its factors."""
    from peft import LoraConfig, ShiraConfig

    targets = ["q_proj", "v_proj"]
    sizes = {}
    for method, config in {
        "shira": ShiraConfig(r=2, mask_type="random", random_seed=0, target_modules=targets),
        "lora": LoraConfig(r=2, target_modules=targets),
    }.items():
        model = get_peft_model(base_model("tiny-llama"), config)
        model.save_pretrained(tmp_path / method)
        sizes[method] = (tmp_path / method / "adapter_model.safetensors").stat().st_size, model
    count = sizes["lora"][1].get_nb_trainable_parameters()[0]
    assert count == sizes["shira"][1].get_nb_trainable_parameters()[0]
    model = get_peft_model(base_model("tiny-llama"), RandomMaskingConfig(density=count / (4 * 256 * (256 + 128))))
    assert model.get_nb_trainable_parameters()[0] == count
    model.save_pretrained(tmp_path / "rmask")
    rmask = (tmp_path / "rmask" / "adapter_model.safetensors").stat().st_size
    assert 4 * count < rmask < 4 * count + 2048
    assert rmask < sizes["lora"][0] < sizes["shira"][0]


def test_save_adapter_needs_no_masking_info(tmp_path):
    model = tiny_model("tiny-opt")
    apply_random_masking(model, ratio=1e-3, seed=3)
    perturb(model)
    path = save_adapter(model, tmp_path / "adapter")
    fresh = tiny_model("tiny-opt")
    assert load_adapter(fresh, path)["seed"] == 3
    for layer_name, layer in masked_layers(model).items():
        assert torch.equal(masked_layers(fresh)[layer_name].values, layer.values)


def test_save_adapter_without_recorded_masking_asks_for_it(tmp_path):
    model = tiny_model("tiny-opt")
    name = "model.decoder.layers.0.self_attn.q_proj"
    model.set_submodule(name, RandomMaskingLinear(model.get_submodule(name), torch.arange(5), 5 / 256**2))
    with pytest.raises(RmaskError, match="records no Random Masking config"):
        save_adapter(model, tmp_path / "adapter")


def test_a_run_folder_s_random_masking_adapter_is_found_and_another_method_s_is_not(tmp_path):
    """``find_adapter`` (used by the landscape probe and the distance analysis) takes a run's ``adapter``
    folder only when it holds a Random Masking adapter, and an older run's ``adapter.safetensors``."""
    from peft import LoraConfig

    from rmask_tune.masking.adapter import find_adapter, saved_values

    rmask_run, lora_run, old_run = tmp_path / "rmask", tmp_path / "lora", tmp_path / "old"
    model = tiny_model("tiny-opt")
    apply_random_masking(model, ratio=1e-3, seed=3)
    perturb(model)
    save_adapter(model, rmask_run / "adapter")
    get_peft_model(tiny_model("tiny-opt"), LoraConfig(target_modules=["q_proj"])).save_pretrained(lora_run / "adapter")
    old_run.mkdir()
    (old_run / "adapter.safetensors").write_bytes((rmask_run / "adapter" / "adapter_model.safetensors").read_bytes())
    assert find_adapter(rmask_run) == rmask_run / "adapter" and find_adapter(lora_run) is None
    assert find_adapter(old_run) == old_run / "adapter.safetensors" and find_adapter(tmp_path) is None
    values = saved_values(find_adapter(rmask_run))
    assert sum(t.numel() for t in values.values()) == sum(layer.values.numel() for layer in masked_layers(model).values())
