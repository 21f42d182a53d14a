"""The contract peft's generic tests check of a tuner (its repository's tests/test_custom_models.py), held
by Random Masking: on small local MLP-style models, an embedding + HF Conv1D model and a tiny random-init
Llama, with LoRA run through the same tests as a control (a test that LoRA fails tests the test).

Each test names the behaviour; docs/peft.md lists what peft's suite checks that this method does not meet,
and why.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from rmask_tune.errors import RmaskError
from rmask_tune.masking import (
    DifferentBaseWarning,
    RandomMaskingConfig,
    RandomMaskingLinear,
    apply_random_masking,
    load_adapter,
    masked_layers,
    save_adapter,
)
from rmask_tune.models import tiny_model


class MLP(nn.Module):
    """Two linear layers; the input is cast to the first layer's dtype."""

    def __init__(self, width: int = 20):
        super().__init__()
        self.lin0 = nn.Linear(10, width)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(width, 2)

    def forward(self, x):
        return self.lin1(self.relu(self.lin0(x.to(self.lin0.weight.dtype))))


class EmbConv1D(nn.Module):
    """An embedding, HF's Conv1D (weight stored (in, out)) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.conv1d = Conv1D(4, 8)
        self.lin0 = nn.Linear(40, 2)

    def forward(self, x):
        return self.lin0(self.conv1d(self.emb(x)).flatten(1))


class TinyLlama(nn.Module):
    """A tiny random-init Llama returning its logits (a plain module, as peft's custom-model tests use)."""

    def __init__(self):
        super().__init__()
        self.model = tiny_model("tiny-llama", seed=torch.initial_seed())  # the seed Case.base set

    def forward(self, x):
        return self.model(input_ids=x).logits


def _float_inputs():
    return torch.randn(6, 10, generator=torch.Generator().manual_seed(0))


def _token_inputs(vocabulary: int, length: int):
    return lambda: torch.randint(0, vocabulary, (3, length), generator=torch.Generator().manual_seed(0))


@dataclass
class Case:
    """A model, its inputs and an adapter config (a new one each call; ``seed`` gives a second adapter)."""

    name: str
    model: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    config: Callable[..., PeftConfig]

    @property
    def is_rmask(self) -> bool:
        return isinstance(self.config(), RandomMaskingConfig)

    @property
    def saves_modules(self) -> bool:
        return bool(self.config().modules_to_save)

    def base(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.model().eval()

    def peft(self, seed: int = 0, **kwargs) -> PeftModel:
        return get_peft_model(self.base(), self.config(), **kwargs).eval()

    def out(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(self.inputs())


def rmask(targets, density=0.3, **settings):
    def make(seed=0):
        return RandomMaskingConfig(density=density, target_modules=targets, seed=seed, init_weights=False, **settings)
    return make


def lora(targets, **settings):
    def make(seed=0):
        torch.manual_seed(seed)  # LoRA's own random init differs between adapters
        return LoraConfig(target_modules=targets, init_lora_weights=False, **settings)
    return make


CASES = [
    Case("mlp-lin0-rmask", MLP, _float_inputs, rmask(["lin0"])),
    Case("mlp-both-rmask", MLP, _float_inputs, rmask(["lin0", "lin1"])),
    Case("mlp-save-lin1-rmask", MLP, _float_inputs, rmask(["lin0"], modules_to_save=["lin1"])),
    Case("conv1d-rmask", EmbConv1D, _token_inputs(100, 10), rmask(["conv1d", "lin0"], density=0.5)),
    Case("llama-rmask", TinyLlama, _token_inputs(1000, 8), rmask(["q_proj", "v_proj"], density=0.02)),
    Case("mlp-lin0-lora", MLP, _float_inputs, lora(["lin0"])),
    Case("mlp-save-lin1-lora", MLP, _float_inputs, lora(["lin0"], modules_to_save=["lin1"])),
    Case("llama-lora", TinyLlama, _token_inputs(1000, 8), lora(["q_proj", "v_proj"])),
]
ALL = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
RMASK = pytest.mark.parametrize("case", [c for c in CASES if c.is_rmask], ids=lambda c: c.name)
# peft activates one adapter at a time on a module trained whole (modules_to_save), for every method
ALL_WITHOUT_SAVED_MODULES = pytest.mark.parametrize("case", [c for c in CASES if not c.saves_modules],
                                                    ids=lambda c: c.name)
RMASK_WITHOUT_SAVED_MODULES = pytest.mark.parametrize(
    "case", [c for c in CASES if c.is_rmask and not c.saves_modules], ids=lambda c: c.name
)


def tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def adapter_state(model: PeftModel, name: str = "default") -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model, adapter_name=name)


@ALL
def test_forward_save_and_load_round_trip(case, tmp_path):
    """save_pretrained then from_pretrained: the same adapter state and outputs; the files are peft's."""
    model = case.peft()
    expected = case.out(model)
    assert not torch.equal(expected, case.out(case.base()))  # init_weights=False: the adapter acts
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / "config.json").exists()
    loaded = PeftModel.from_pretrained(case.base(), str(tmp_path)).eval()
    saved, reloaded = adapter_state(model), adapter_state(loaded)
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert torch.equal(case.out(loaded), expected)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == model.peft_type.value


@ALL
def test_pickle_save_loads_too(case, tmp_path):
    """``safe_serialization=False`` (torch's pickle format) round-trips as well."""
    model = case.peft()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    assert torch.equal(case.out(PeftModel.from_pretrained(case.base(), str(tmp_path)).eval()), case.out(model))


@ALL
def test_merge_and_unload_and_safe_merge_keep_the_outputs(case):
    expected = case.out(case.peft())
    for safe in (False, True):
        merged = case.peft().merge_and_unload(safe_merge=safe)
        assert not tuner_layers(merged)
        torch.testing.assert_close(case.out(merged), expected, rtol=1e-5, atol=1e-5)


@ALL
def test_safe_merge_refuses_non_finite_values(case):
    model = case.peft()
    param = next(p for n, p in model.named_parameters() if p.requires_grad and ".default" in n)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.merge_adapter(safe_merge=True)
    assert not any(layer.merged for layer in tuner_layers(model))


@ALL
def test_merge_unmerge_and_merging_twice(case):
    """merge_adapter keeps the outputs; merging again changes nothing (a warning); unmerge_adapter restores
    the base weights (exactly for Random Masking, which keeps the overwritten entries)."""
    model = case.peft()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    expected = case.out(model)
    model.merge_adapter()
    torch.testing.assert_close(case.out(model), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="merged"):
        model.merge_adapter()
    torch.testing.assert_close(case.out(model), expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    after = dict(model.named_parameters())
    for name, weight in before.items():
        if case.is_rmask:
            assert torch.equal(after[name], weight), name
        torch.testing.assert_close(after[name], weight)
    torch.testing.assert_close(case.out(model), expected, rtol=1e-5, atol=1e-5)


@ALL
def test_unload_gives_the_base_model_back(case):
    plain = case.out(case.base())
    model = case.peft()
    unloaded = model.unload()
    assert not tuner_layers(unloaded) and torch.equal(case.out(unloaded), plain)


@ALL
def test_disable_adapters_gives_the_base_outputs_also_when_merged(case):
    plain = case.out(case.base())
    model = case.peft()
    adapted = case.out(model)
    with model.disable_adapter():
        assert torch.equal(case.out(model), plain)
    assert torch.equal(case.out(model), adapted)
    model.merge_adapter()
    with model.disable_adapter():  # unmerges first
        torch.testing.assert_close(case.out(model), plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(case.out(model), adapted, rtol=1e-5, atol=1e-5)


@ALL
def test_training_changes_only_the_adapter_parameters(case):
    model = case.peft()
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(case.inputs()).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)
    assert all(not torch.equal(after[n], before[n]) for n in trainable if "modules_to_save" not in n)


def adapter_dtypes(model: PeftModel) -> set[torch.dtype]:
    return {p.dtype for n, p in model.named_parameters() if model.prefix in n}


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("autocast", [True, False])
def test_half_precision_forward_and_autocast_adapter_dtype(case, dtype, autocast, tmp_path):
    """On a half-precision base, ``autocast_adapter_dtype=True`` keeps the adapters in fp32 and False in the
    base dtype, through get_peft_model, add_adapter (the same config again), from_pretrained (also with
    ``low_cpu_mem_usage``) and load_adapter; the forward pass is finite, and so are the gradients, in the
    adapter's dtype."""
    config = case.config()
    model = get_peft_model(case.base().to(dtype), config, autocast_adapter_dtype=autocast).eval()
    model.add_adapter("other", config, autocast_adapter_dtype=autocast)
    expected = {torch.float32 if autocast else dtype}
    assert adapter_dtypes(model) == expected
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".other" in n)  # cast, still inactive
    assert torch.isfinite(case.out(model)).all()
    model(case.inputs()).float().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and model.prefix in n]
    assert grads and all(g is not None and g.dtype in expected and torch.isfinite(g).all() for g in grads)
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(case.base().to(dtype), str(tmp_path), autocast_adapter_dtype=autocast,
                                           low_cpu_mem_usage=low_cpu_mem_usage)
        loaded.load_adapter(str(tmp_path / "other"), "other", autocast_adapter_dtype=autocast,
                            low_cpu_mem_usage=low_cpu_mem_usage)
        assert adapter_dtypes(loaded) == expected
        assert torch.isfinite(case.out(loaded.eval())).all()


class DeepMLP(nn.Module):
    """Three blocks of one linear layer each."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16)) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


@pytest.mark.parametrize("make", [rmask, lora], ids=["rmask", "lora"])
def test_adapters_on_partly_overlapping_modules(make):
    """An adapter only on some layers: a layer made for the second adapter starts with the model's active
    adapter (which it lacks, so it adds nothing), and set_adapter reaches every layer."""
    model = get_peft_model(DeepMLP(), make(["layers.0.0", "layers.1.0"])())
    model.add_adapter("other", make(["layers.1.0", "layers.2.0"])(seed=1))
    layers = [block[0] for block in model.base_model.model.layers]
    assert [layer.active_adapters for layer in layers] == [["default"]] * 3
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(layers[2](x), layers[2].get_base_layer()(x))
    model.set_adapter("other")
    assert [layer.active_adapters for layer in layers] == [["other"]] * 3
    with torch.no_grad():
        assert torch.equal(layers[0](x), layers[0].get_base_layer()(x))
        assert not torch.equal(layers[2](x), layers[2].get_base_layer()(x))


@ALL
def test_add_set_and_delete_adapters(case):
    """A second adapter is added inactive and untrained; set_adapter switches (and moves requires_grad);
    delete_adapter removes it from every layer and from peft_config; an unknown name is an error."""
    model = case.peft()
    first = case.out(model)
    model.add_adapter("other", case.config(seed=1))
    assert model.active_adapter == "default" and torch.equal(case.out(model), first)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".other" in n)
    model.set_adapter("other")
    second = case.out(model)
    assert not torch.equal(second, first)
    grads = {n: p.requires_grad for n, p in model.named_parameters() if ".default" in n or ".other" in n}
    assert all(grads[n] == (".other" in n) for n in grads if "modules_to_save" not in n)
    model.set_adapter("default")
    assert torch.equal(case.out(model), first)
    with pytest.raises(ValueError, match="nope"):
        model.delete_adapter("nope")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"] and model.active_adapters == ["default"]
    for layer in tuner_layers(model):
        for attr in layer.adapter_layer_names + layer.other_param_names:
            assert "other" not in getattr(layer, attr)
    assert torch.equal(case.out(model), first)


@ALL
def test_deleting_the_active_adapter_activates_another(case):
    model = case.peft()
    model.add_adapter("other", case.config(seed=1))
    model.set_adapter("other")
    expected = case.out(model)
    model.set_adapter("default")
    with pytest.warns(UserWarning, match="deleted"):
        model.delete_adapter("default")
    assert model.active_adapters == ["other"] and torch.equal(case.out(model), expected)


@ALL
def test_load_adapter_under_a_new_name(case, tmp_path):
    saved = case.peft()
    saved.save_pretrained(tmp_path)
    model = case.base()
    model = get_peft_model(model, case.config(seed=2)).eval()
    model.load_adapter(str(tmp_path), adapter_name="loaded")
    assert not torch.equal(case.out(model), case.out(saved))
    model.set_adapter("loaded")
    assert torch.equal(case.out(model), case.out(saved))


@ALL_WITHOUT_SAVED_MODULES
def test_several_active_adapters_add_their_deltas(case):
    """Two active adapters give neither one's outputs; merging both gives the same outputs as running them
    unmerged, and unmerging restores the base weights."""
    model = case.peft()
    model.add_adapter("other", case.config(seed=1))
    alone = case.out(model)
    model.base_model.set_adapter(["default", "other"])
    both = case.out(model)
    model.set_adapter("other")
    assert not torch.equal(both, alone) and not torch.equal(both, case.out(model))
    model.base_model.set_adapter(["default", "other"])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.merge_adapter(["default", "other"])
    torch.testing.assert_close(case.out(model), both, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(case.out(model), both, rtol=1e-5, atol=1e-5)
    after = dict(model.named_parameters())
    assert all(torch.allclose(after[n], w) for n, w in before.items())
    merged = model.merge_and_unload(adapter_names=["default", "other"])
    torch.testing.assert_close(case.out(merged), both, rtol=1e-5, atol=1e-5)


@RMASK_WITHOUT_SAVED_MODULES
def test_several_active_random_masks_are_one_delta_on_the_union_of_entries(case):
    """Random Masking's several active adapters are exactly ``W0 + delta_1 + delta_2``: the same outputs as
    one base layer whose weight has both deltas added at their own entries (overlaps add up), and
    gradients reach each adapter's values at its own entries."""
    model = case.peft()
    model.add_adapter("other", case.config(seed=1))
    model.base_model.set_adapter(["default", "other"])
    reference = case.base()
    with torch.no_grad():
        for name, layer in masked_layers(model).items():
            weight = reference.get_submodule(name.removeprefix("base_model.model.")).weight
            for adapter in ("default", "other"):
                weight.view(-1)[layer.rmask_masks[adapter].rmask_flat] += layer.rmask_values[adapter]
    torch.testing.assert_close(case.out(model), case.out(reference), rtol=1e-5, atol=1e-6)
    model.train()
    model(case.inputs()).float().pow(2).mean().backward()
    for layer in masked_layers(model).values():
        assert all(layer.rmask_values[a].grad is not None and layer.rmask_values[a].grad.abs().sum() > 0
                   for a in ("default", "other"))  # fmt: skip


@ALL
def test_parameters_are_keyed_by_adapter_name_and_layers_have_in_out_features(case):
    model = case.peft()
    model.add_adapter("other", case.config(seed=1))
    names = [n for n, _ in model.named_parameters() if "base_layer" not in n and ("lora_" in n or "rmask_" in n)]
    assert names and all(n.endswith((".default", ".other")) or ".default." in n or ".other." in n for n in names)
    for layer in tuner_layers(model):
        base = layer.get_base_layer()
        rows, cols = (base.weight.shape[1], base.weight.shape[0]) if isinstance(base, Conv1D) else base.weight.shape
        assert (layer.out_features, layer.in_features) == (rows, cols)


@ALL
def test_peft_config_is_the_config_given(case):
    config = case.config()
    model = get_peft_model(case.base(), config)
    assert model.peft_config["default"] is config


@RMASK
def test_a_base_of_the_same_architecture_is_a_warning_strict_an_error_another_architecture_an_error(case, tmp_path):
    case.peft().save_pretrained(tmp_path)
    other = case.base(seed=1)
    with pytest.warns(DifferentBaseWarning, match="same architecture"):
        loaded = PeftModel.from_pretrained(other, str(tmp_path)).eval()
    assert torch.isfinite(case.out(loaded)).all()
    strict = PeftConfig.from_pretrained(str(tmp_path))
    strict.strict_base = True
    with pytest.raises(RmaskError, match="strict_base"):
        PeftModel.from_pretrained(case.base(seed=1), str(tmp_path), config=strict)
    if isinstance(other, MLP):
        with pytest.raises(RmaskError, match="names or shapes differ"):
            PeftModel.from_pretrained(MLP(width=24), str(tmp_path))


@RMASK_WITHOUT_SAVED_MODULES
def test_the_trainer_path_writes_and_reads_the_same_peft_adapter(case, tmp_path):
    """``apply_random_masking`` (the trainer's way in) injects the same layer class as ``get_peft_model``;
    ``save_adapter`` writes what ``PeftModel.from_pretrained`` loads, and ``load_adapter`` reads what
    ``PeftModel.save_pretrained`` writes."""
    config = case.config()
    plain = case.base()
    apply_random_masking(plain, density=config.density, targets=config.target_modules, seed=config.seed)
    layers = masked_layers(plain)
    assert layers and all(type(layer) is RandomMaskingLinear for layer in layers.values())
    assert all(type(layer) is RandomMaskingLinear for layer in masked_layers(case.peft()).values())
    with torch.no_grad():
        for layer in layers.values():
            layer.values.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    save_adapter(plain, tmp_path / "plain")
    loaded = PeftModel.from_pretrained(case.base(), str(tmp_path / "plain")).eval()
    assert torch.equal(case.out(loaded), case.out(plain))
    via_peft = case.peft()
    via_peft.save_pretrained(tmp_path / "peft")
    fresh = case.base()
    load_adapter(fresh, tmp_path / "peft")
    assert torch.equal(case.out(fresh), case.out(via_peft))


@RMASK
def test_low_cpu_mem_usage_loading_gives_the_same_outputs(case, tmp_path):
    model = case.peft()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(case.base(), str(tmp_path), low_cpu_mem_usage=True).eval()
    assert torch.equal(case.out(loaded), case.out(model))


def test_a_reused_config_makes_a_fresh_adapter_on_another_model():
    """A config this process filled in is a recipe: used again on another model it makes that model's masks."""
    config = RandomMaskingConfig(density=0.3, target_modules=["lin0"])
    get_peft_model(MLP(), config)
    other = copy.deepcopy(config)
    model = get_peft_model(MLP(width=24), other)
    assert model.peft_config["default"].base_fingerprint != config.base_fingerprint


def test_mixed_adapter_batches_are_refused_not_ignored():
    """peft passes ``adapter_names=`` only to methods that implement mixed batches (LoRA's family); a
    Random Masking model refuses it instead of silently using the active adapter."""
    case = CASES[0]
    model = case.peft()
    model.add_adapter("other", case.config(seed=1))
    with pytest.raises(RmaskError, match="mixed adapter batches"):
        model(case.inputs(), adapter_names=["default"] * 3 + ["other"] * 3)


def test_load_adapter_without_a_peft_model_refuses_an_adapter_with_saved_modules(tmp_path):
    """A whole-module copy (``modules_to_save``) lives in peft's wrapper: such an adapter loads through
    ``PeftModel.from_pretrained``, and ``load_adapter`` on the bare model says so."""
    get_peft_model(MLP(), RandomMaskingConfig(density=0.3, target_modules=["lin0"], modules_to_save=["lin1"])
                   ).save_pretrained(tmp_path)
    with pytest.raises(RmaskError, match="PeftModel.from_pretrained"):
        load_adapter(MLP(), tmp_path)
