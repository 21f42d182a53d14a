"""Any optimizer, and any direct edit of ``rmask_values``, changes what a masked model computes.

The masked layers build ``W0 + delta`` from their values on every forward (nothing cached), so fused,
foreach and 8-bit optimizers, Adafactor, ``.data`` / ``copy_`` / ``load_state_dict`` edits and the HF
``Trainer`` (bf16 autocast, gradient checkpointing) all train it. Each case checks that the values moved,
that the logits moved, and that logits and value gradients equal those of a plain dense model whose
target weights have the values added at ``rmask_flat``.

bitsandbytes 0.50.2 (pinned in the ``test`` extra) installs from PyPI with a CPU backend, and its
``AdamW8bit`` steps CPU fp32 parameters, with uint8 state for tensors of 4096 entries or more.
"""

import bitsandbytes as bnb
import pytest
import torch
import transformers
from transformers.optimization import Adafactor

from rmask_tune.masking import apply_random_masking, masked_layers
from rmask_tune.models import tiny_model

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2),
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=1e-2, foreach=True),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=1e-1, momentum=0.9),
    "adafactor": lambda params: Adafactor(
        params, lr=1e-2, scale_parameter=False, relative_step=False, warmup_init=False
    ),
    "adamw-8bit": lambda params: bnb.optim.AdamW8bit(params, lr=1e-2),
}
CASES = [("tiny-llama", opt) for opt in OPTIMIZERS] + [("tiny-gpt2", "adamw-fused")]  # gpt2: Conv1D, fused c_attn
PATHS = pytest.mark.parametrize("path", ["dense", "sparse", "inplace"])  # how the layers apply the delta; both hold all of this


def lm_batch(model, batch=2, seq=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids, "labels": ids}


def masked_model(name, path):
    model = tiny_model(name)
    apply_random_masking(model, ratio=1e-2, seed=0, path=path)
    assert {layer.mask.rmask_path for layer in masked_layers(model).values()} == {path}
    return model


def values_of(model):
    return {name: layer.values.detach().clone() for name, layer in masked_layers(model).items()}


def dense_reference(name, model):
    """A fresh plain model (same seed, same weights) with the masked values added to its target weights,
    which alone require grad."""
    reference = tiny_model(name)
    for p in reference.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for module_name, layer in masked_layers(model).items():
            weight = reference.get_submodule(module_name).weight
            weight.view(-1)[layer.mask.rmask_flat] += layer.values
            weight.requires_grad_(True)
    return reference


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def assert_matches_dense_reference(name, model, batch):
    """Logits (no-grad path and autograd path) and value gradients equal the dense reference's."""
    reference = dense_reference(name, model)
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), rtol=1e-6, atol=1e-6)
    model.zero_grad(set_to_none=True)
    out, ref_out = model(**batch), reference(**batch)
    torch.testing.assert_close(out.logits, ref_out.logits, rtol=1e-6, atol=1e-6)
    out.loss.backward()
    ref_out.loss.backward()
    for module_name, layer in masked_layers(model).items():
        dense = reference.get_submodule(module_name).weight.grad.view(-1)[layer.mask.rmask_flat]
        assert dense.abs().sum() > 0, module_name
        torch.testing.assert_close(layer.values.grad, dense, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)


def assert_moved(model, start, before, batch):
    for name, values in values_of(model).items():
        assert not torch.equal(values, start[name]), f"{name}: values did not move"
    assert (logits(model, batch) - before).abs().max() > 1e-3, "the logits did not change"


@PATHS
@pytest.mark.parametrize(("name", "optimizer"), CASES)
@pytest.mark.slow
def test_every_optimizer_changes_the_outputs_and_matches_a_dense_reference(name, optimizer, path):
    model = masked_model(name, path)
    batch = lm_batch(model)
    start, before = values_of(model), logits(model, batch)  # a forward first: a cached weight would go stale
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(layer.values) for layer in masked_layers(model).values()}
    opt = OPTIMIZERS[optimizer](params)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    if optimizer == "adamw-8bit":  # the 8-bit state path ran (q_proj values have >= 4096 entries), not only fp32
        assert any(state["state1"].dtype == torch.uint8 for state in opt.state.values())
    assert_moved(model, start, before, batch)
    assert_matches_dense_reference(name, model, batch)


def _add_data(model):
    for layer in masked_layers(model).values():
        layer.values.data.add_(0.05)


def _copy(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in masked_layers(model).values():
            layer.values.copy_(0.05 * torch.randn(layer.values.shape, generator=gen))


def _load_state_dict(model):
    state = model.state_dict()
    gen = torch.Generator().manual_seed(2)
    changed = {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items() if ".rmask_values." in k}
    assert len(changed) == len(masked_layers(model))
    model.load_state_dict({**state, **changed})
    assert all(torch.equal(model.get_parameter(k), v) for k, v in changed.items())


@PATHS
@pytest.mark.parametrize("edit", [_add_data, _copy, _load_state_dict], ids=["data-add", "copy", "load-state-dict"])
def test_direct_edits_of_the_values_change_the_outputs(edit, path):
    model = masked_model("tiny-llama", path)
    batch = lm_batch(model)
    start, before = values_of(model), logits(model, batch)
    model.train()
    model(**batch).loss.backward()  # the autograd path too has run before the edit
    model.zero_grad(set_to_none=True)
    edit(model)
    assert_moved(model, start, before, batch)
    assert_matches_dense_reference("tiny-llama", model, batch)


def train_with_trainer(model, tmp_path, **overrides):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (6, 16), generator=gen).tolist()
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = dict(
        optim="adamw_torch_fused", use_cpu=True, max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
        save_strategy="no", report_to=[], bf16=True, output_dir=str(tmp_path),
    )
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**{**args, **overrides}),
                                   train_dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.accelerator.mixed_precision == ("bf16" if trainer.args.bf16 else "no")
    # Accelerate leaves the bf16 autocast wrapper on model.forward; drop it to evaluate in plain fp32.
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


@PATHS
def test_trainer_fused_adamw_bf16_trains_and_evaluates_like_the_dense_reference(tmp_path, path):
    model = masked_model("tiny-llama", path)
    batch = lm_batch(model)
    start, before = values_of(model), logits(model, batch)
    model = train_with_trainer(model, tmp_path)
    assert all(layer.values.dtype == torch.float32 for layer in masked_layers(model).values())
    assert_moved(model, start, before, batch)
    assert_matches_dense_reference("tiny-llama", model, batch)


@PATHS
def test_trainer_gradient_checkpointing_trains_the_same_values(tmp_path, path):
    trained = {}
    for checkpointing in (False, True):
        model = masked_model("tiny-llama", path)
        model.config.use_cache = False
        batch = lm_batch(model)
        start, before = values_of(model), logits(model, batch)
        model = train_with_trainer(
            model, tmp_path / str(checkpointing), bf16=False, gradient_checkpointing=checkpointing
        )
        assert model.model.gradient_checkpointing is checkpointing
        assert_moved(model, start, before, batch)
        trained[checkpointing] = values_of(model)
    assert_matches_dense_reference("tiny-llama", model, batch)
    for name, values in trained[False].items():
        torch.testing.assert_close(trained[True][name], values, rtol=1e-4, atol=1e-6)
