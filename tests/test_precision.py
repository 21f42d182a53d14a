"""Mixed precision on CPU: the GPU paths (autocast bf16/fp16, half-precision weights and checkpoints),
against dense fp32 references, through the masked layer and through the real trainer for every method."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmask_tune.masking import apply_random_masking, masked_layers
from rmask_tune.models import load_model, load_tokenizer, tiny_model
from rmask_tune.precision import POLICIES, resolve_precision
from rmask_tune.trainer import TrialConfig, prepare_trial, train_trial
from paths import DATA

HALF = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative error (of the whole tensor) allowed against the fp32 reference, by compute dtype.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def lm_batch(vocab: int, batch: int = 4, seq: int = 24) -> dict:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def dense_reference(name: str, masked: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of the base model with each masked delta written into a trainable dense weight."""
    reference = tiny_model(name)
    reference.requires_grad_(False)
    for layer_name, layer in masked_layers(masked).items():
        weight = reference.get_submodule(layer_name).weight
        with torch.no_grad():
            weight.view(-1)[layer.mask.rmask_flat] += layer.values.detach()
        weight.requires_grad_(True)
    return reference


# (weights stored in, autocast dtype): fp32 weights under any autocast, half weights alone or under their own
# dtype. Half weights under the other half dtype fail in the unmasked model already (CPU layer_norm).
STORAGE_AND_AUTOCAST = [("fp32", None), ("fp32", "bf16"), ("fp32", "fp16"), ("bf16", None), ("bf16", "bf16"),
                        ("fp16", None), ("fp16", "fp16")]  # fmt: skip


def autocast(dtype):
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


@pytest.mark.parametrize("path", ["dense", "sparse", "inplace"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("structure", ["random", "columns"])
@pytest.mark.parametrize(("weights", "compute"), STORAGE_AND_AUTOCAST)
@pytest.mark.slow
def test_masked_layer_agrees_with_a_dense_fp32_reference(name, structure, weights, compute, path):
    """Before the wrapper layer, backward under autocast crashed: bf16 gradient times an fp32 weight."""
    model = tiny_model(name, dtype=HALF[weights])
    apply_random_masking(model, ratio=1e-2, seed=1, structure=structure, path=path)
    with torch.no_grad():  # deltas of a trained size, so that they matter in the comparison
        for layer in masked_layers(model).values():
            layer.values.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    reference = dense_reference(name, model)
    batch = lm_batch(model.config.vocab_size)
    compute_dtype = HALF[compute] if compute else HALF[weights]
    with autocast(HALF[compute] if compute else None):
        out = model(**batch)
    out.loss.backward()  # outside autocast, as training loops do
    expected = reference(**batch)
    expected.loss.backward()
    tolerance = max(TOLERANCE[compute_dtype], TOLERANCE[HALF[weights]])
    assert relative_error(out.logits, expected.logits) < tolerance
    for layer_name, layer in masked_layers(model).items():
        assert layer.values.dtype == torch.float32 and layer.values.grad.dtype == torch.float32
        assert layer.weight.dtype == HALF[weights]  # the base layer keeps its storage dtype
        dense = reference.get_submodule(layer_name).weight.grad.reshape(-1)[layer.mask.rmask_flat]
        assert relative_error(layer.values.grad, dense) < 10 * tolerance, layer_name


@pytest.mark.parametrize("path", ["dense", "sparse", "inplace"])
@pytest.mark.parametrize("density", [0.0005, 0.05, 0.3])  # torch: gather, sampled CSR and dense value-gradient kernels
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.slow
def test_every_value_gradient_kernel_under_autocast(density, compute, path, backend):
    model = tiny_model("tiny-opt")
    apply_random_masking(model, density=density, seed=5, path=path, backend=backend)
    reference = dense_reference("tiny-opt", model)
    batch = lm_batch(model.config.vocab_size, batch=8, seq=32)  # 256 rows: 5% takes the sampled CSR path
    with torch.autocast("cpu", dtype=compute):
        loss = model(**batch).loss
    loss.backward()
    reference(**batch).loss.backward()
    for layer_name, layer in masked_layers(model).items():
        dense = reference.get_submodule(layer_name).weight.grad.reshape(-1)[layer.mask.rmask_flat]
        assert relative_error(layer.values.grad, dense) < 10 * TOLERANCE[compute], layer_name
    with torch.no_grad(), torch.autocast("cpu", dtype=compute):  # the no-grad (evaluation) call takes the path too
        assert relative_error(model(**batch).logits, reference(**batch).logits) < TOLERANCE[compute]


def test_half_precision_forward_keeps_small_deltas_in_the_master_values():
    """Values are fp32 masters: an update far below bf16's resolution of W0 accumulates and is never lost."""
    model = tiny_model("tiny-llama", dtype=torch.bfloat16)
    apply_random_masking(model, ratio=1e-2, seed=0)
    layer = next(iter(masked_layers(model).values()))
    with torch.no_grad():
        for _ in range(1000):
            layer.values.add_(1e-6)
    assert torch.allclose(layer.values, torch.full_like(layer.values, 1e-3), rtol=1e-3)


def test_precision_policies_say_what_they_store_compute_and_train_in():
    assert POLICIES["bf16"].to_dict() == {
        "precision": "bf16", "weight_dtype": "bfloat16", "autocast_dtype": "bfloat16", "master_dtype": "float32",
        "loss_scaling": False,
    }  # fmt: skip
    assert POLICIES["fp16"].loss_scaling and not POLICIES["fp32"].loss_scaling
    assert resolve_precision("auto", "cpu").name == "fp32" and resolve_precision(None, "cpu").name == "fp32"
    model = tiny_model("tiny-opt", dtype=torch.float16)
    model.requires_grad_(False)
    model.model.decoder.layers[0].self_attn.q_proj.requires_grad_(True)
    counts = POLICIES["bf16"].cast_model(model)
    master = {n for n, p in model.named_parameters() if p.requires_grad or "layer_norm" in n}
    assert {n for n, p in model.named_parameters() if p.dtype == torch.float32} == master
    assert {p.dtype for n, p in model.named_parameters() if n not in master} == {torch.bfloat16}
    assert counts["float32"] == sum(p.numel() for n, p in model.named_parameters() if n in master)


SMALL = dict(data_dir=str(DATA), epochs=2, batch_size=4, train_examples=8, dev_examples=4, test_examples=4, quiet=True)
METHODS = {
    "random_masking": {"ratio": 1e-2, "lr": 1e-2},
    "structured_masking": {"ratio": 1e-2, "lr": 1e-2},
    "lora": {"lr": 1e-3},
    "adalora": {"lr": 1e-3},
    "prefix": {"lr": 1e-2},
    "shira": {"ratio": 1e-2, "lr": 1e-3},
    "bitfit": {"lr": 1e-3},
    "full": {"lr": 1e-4},
}


def trained_state(trial) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in trial.model.named_parameters() if p.requires_grad}


@pytest.mark.needs_data
@pytest.mark.parametrize("precision", ["bf16", "fp16"])  # fp32 training of each method: test_trainer, test_methods
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.slow
def test_every_method_trains_under_every_precision_through_the_trainer(method, precision):
    trial = prepare_trial(
        TrialConfig(model="tiny-opt", task="SST-2", method=method, precision=precision, **METHODS[method], **SMALL)
    )
    for name, param in trial.model.named_parameters():
        master = param.requires_grad or "layer_norm" in name  # trained tensors and norms are fp32 masters
        assert param.dtype == (torch.float32 if master else HALF[precision]), (name, param.dtype)
    before = trained_state(trial)
    result = train_trial(trial)
    assert result["status"] == "finished" and not result["diverged"], result["status"]
    assert result["precision"]["precision"] == precision
    dtypes = result["precision"]["param_dtypes"]
    assert sum(dtypes.values()) == sum(p.numel() for p in trial.model.parameters())
    half = dtypes.get(str(HALF[precision]).removeprefix("torch."), 0)
    assert half == 0 if method == "full" else half > dtypes["float32"]  # full fine-tuning trains every weight
    after = trained_state(trial)
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0 and all(torch.isfinite(t).all() for t in after.values())


def fp16_checkpoint(folder: Path) -> Path:
    """A tiny OPT saved in fp16 with the SmolLM2 tokenizer, as OPT's hub checkpoints are stored."""
    tokenizer = load_tokenizer("smollm2-135m")
    model = tiny_model("tiny-opt")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.half().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.needs_data
@pytest.mark.parametrize("method", ["full", "bitfit"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_fp16_checkpoint_trains_fp32_masters_so_small_updates_are_not_rounded_away(tmp_path, method, precision):
    """Loaded as stored, AdamW on fp16 weights rounded a 1e-6 update of ~0.02-sized weights to nothing."""
    folder = fp16_checkpoint(tmp_path / "opt-fp16")
    assert load_model(str(folder)).dtype == torch.float16  # the checkpoint as stored
    trial = prepare_trial(TrialConfig(model=str(folder), task="SST-2", method=method, lr=1e-6, precision=precision,
                                      **{**SMALL, "epochs": 1}))  # fmt: skip
    assert {p.dtype for p in trial.model.parameters() if p.requires_grad} == {torch.float32}
    before = trained_state(trial)
    result = train_trial(trial)
    assert result["status"] == "finished"
    after = trained_state(trial)
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0.9 * sum(t.numel() for t in before.values())


@pytest.mark.needs_data
@pytest.mark.slow
def test_train_cli_takes_precision_and_optimizer_and_records_them(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rmask_tune.cli", "train", "--model", "tiny-llama", "--task", "SST-2",
               "--ratio", "1e-2", "--lr", "1e-2", "--epochs", "1", "--batch-size", "4", "--train-examples", "8",
               "--dev-examples", "4", "--eval-examples", "4", "--data-dir", str(DATA), "--quiet", "--precision",
               "bf16", "--optimizer", "adamw_fused", "--output", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "precision=bf16" in done.stdout
    result = json.loads((out / "metrics.json").read_text())
    assert result["precision"]["autocast_dtype"] == "bfloat16" and result["config"]["optimizer"] == "adamw_fused"
    bad = subprocess.run(command[:-2] + ["--precision", "fp8"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].endswith(
        "unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16"
    )


@pytest.mark.parametrize(("saved_in", "loaded_in"), [("bf16", "fp32"), ("fp32", "fp16"), ("fp16", "bf16")])
def test_an_adapter_trained_in_one_precision_loads_on_the_base_in_another(tmp_path, saved_in, loaded_in):
    from rmask_tune.masking import load_adapter, save_adapter

    model = tiny_model("tiny-llama", dtype=HALF[saved_in])
    info = apply_random_masking(model, ratio=1e-3, seed=4)
    with torch.no_grad():
        for layer in masked_layers(model).values():
            layer.values.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    path = save_adapter(model, tmp_path / "adapter")
    fresh = tiny_model("tiny-llama", dtype=HALF[loaded_in])
    assert load_adapter(fresh, path)["trainable_params"] == info.trainable_params
    assert all(torch.equal(fresh_layer.values, layer.values)
               for fresh_layer, layer in zip(masked_layers(fresh).values(), masked_layers(model).values()))  # fmt: skip
    with pytest.raises(Exception, match="different base model"):
        load_adapter(tiny_model("tiny-llama", seed=1, dtype=HALF[loaded_in]), path, strict_base=True)


def write_legacy_adapter(model, info, path, version):
    """An ``adapter.safetensors`` file of format ``version`` (1 or 2) as earlier versions wrote it."""
    import json

    from safetensors.torch import save_file

    from rmask_tune.masking.legacy import FORMATS
    from rmask_tune.masking.signature import base_fingerprint, base_signature, index_checksum

    layers = masked_layers(model)
    settings = ("requested_ratio", "requested_density", "seed", "structure", "sampling", "targets")
    structure, sample = base_signature(model)
    meta = {
        "format": FORMATS[version - 1],
        "masking": json.dumps({key: info.to_dict()[key] for key in settings}),
        "fingerprint": structure if version == 2 else base_fingerprint(model),
        "index_checksums": json.dumps({n: index_checksum(layer.mask.rmask_flat) for n, layer in layers.items()}),
    }
    if version == 2:
        meta["base_sample"] = json.dumps([float(f"{v:.6g}") for v in sample.tolist()])
    values = {name: layer.values.detach().float().contiguous() for name, layer in layers.items()}
    save_file(values, str(path), metadata=meta)
    return path


def test_a_format_1_adapter_still_loads_on_its_exact_base(tmp_path):
    """Adapters written before the dtype-tolerant signature carry a hash of names, shapes and values."""
    from rmask_tune.masking import load_adapter

    model = tiny_model("tiny-llama")
    info = apply_random_masking(model, ratio=1e-3, seed=4)
    write_legacy_adapter(model, info, tmp_path / "old.safetensors", 1)
    assert load_adapter(tiny_model("tiny-llama"), tmp_path / "old.safetensors")["seed"] == 4
    with pytest.raises(Exception, match="different base model"):
        load_adapter(tiny_model("tiny-llama", dtype=torch.bfloat16), tmp_path / "old.safetensors")


@pytest.mark.parametrize("loaded_in", ["fp32", "bf16"])
def test_a_format_2_adapter_still_loads_on_its_base_in_any_precision(tmp_path, loaded_in):
    """The single-file adapters of earlier versions (format 2) load their values, on their own base only."""
    from rmask_tune.masking import load_adapter

    model = tiny_model("tiny-llama")
    info = apply_random_masking(model, ratio=1e-3, seed=4)
    with torch.no_grad():
        for layer in masked_layers(model).values():
            layer.values.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    path = write_legacy_adapter(model, info, tmp_path / "adapter.safetensors", 2)
    fresh = tiny_model("tiny-llama", dtype=HALF[loaded_in])
    assert load_adapter(fresh, path)["trainable_params"] == info.trainable_params
    assert all(torch.equal(fresh_layer.values, layer.values)
               for fresh_layer, layer in zip(masked_layers(fresh).values(), masked_layers(model).values()))  # fmt: skip
    with pytest.raises(Exception, match="different base model"):
        load_adapter(tiny_model("tiny-llama", seed=1), path)
