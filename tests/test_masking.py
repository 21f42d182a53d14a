"""Random Masking invariants on real transformers models: counts, frozen entries, gradients, seeds.

tiny-gpt2 covers HF Conv1D targets (weight stored (in, out), fused q/k/v ``c_attn``).
"""

import sys

import pytest
import torch

from rmask_tune.errors import RmaskError
from rmask_tune.masking import apply_random_masking, masked_layers, merge, remove_random_masking
from rmask_tune.masking.targets import count_parameters
from rmask_tune.models import load_model, tiny_model
from paths import REPO

RATIOS = [0.1, 0.05, 0.01, 0.005, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5]


def lm_batch(model, batch=2, seq=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2", "tiny-bert", "tiny-vit"])
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.slow
def test_trainable_count_matches_the_request(name, ratio):
    model = tiny_model(name)
    total = count_parameters(model)
    info = apply_random_masking(model, ratio=ratio, seed=0)
    wanted = round(ratio * total)
    assert info.trainable_params == count_parameters(model, trainable_only=True)
    assert abs(info.trainable_params - wanted) <= max(0.01 * wanted, len(info.targets))
    assert info.total_params == total


def test_count_on_real_minilm():
    model = load_model("minilm-l6", head="base")
    total = count_parameters(model)
    for ratio in (0.01, 1e-5):
        m = load_model("minilm-l6", head="base")
        info = apply_random_masking(m, ratio=ratio)
        assert abs(info.trainable_params - round(ratio * total)) <= max(0.01 * ratio * total, len(info.targets))
        assert all(t.endswith(("query", "value")) for t in info.targets)


PATHS = pytest.mark.parametrize("path", ["dense", "sparse", "inplace"])


@PATHS
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.slow
def test_masked_out_entries_bit_identical_after_adamw_and_deltas_start_at_zero(name, path):
    from rmask_tune.masking.layer import effective_weight

    model = tiny_model(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_random_masking(model, ratio=1e-3, seed=3, path=path)
    batch = lm_batch(model)
    with torch.no_grad():
        reference = tiny_model(name)(**batch).logits
        assert torch.equal(model(**batch).logits, reference)  # deltas start at zero
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    layers = masked_layers(model)
    for name, p in model.named_parameters():
        if ".rmask_values." in name:
            continue
        assert torch.equal(p, before[name.replace(".base_layer.", ".")]), name  # the base model is never written
    for name, layer in layers.items():
        weight = effective_weight(layer.mask, layer.values.detach(), torch.float32).reshape(-1)
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[layer.mask.rmask_flat] = False
        assert torch.equal(weight[keep], before[name + ".weight"].reshape(-1)[keep])
        expected = before[name + ".weight"].reshape(-1)[layer.mask.rmask_flat] + layer.values.detach()
        assert torch.equal(weight[layer.mask.rmask_flat], expected)
        assert layer.values.abs().sum() > 0


@PATHS
@pytest.mark.parametrize("structure", ["random", "head"])
@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
@pytest.mark.parametrize("density", [0.0005, 0.05, 0.3])  # torch: gather, sampled CSR and dense kernels
@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.slow
def test_value_gradients_equal_a_dense_masked_reference(name, density, structure, path, backend):
    model = tiny_model(name)
    reference = tiny_model(name)
    apply_random_masking(model, density=density, seed=5, structure=structure, path=path, backend=backend)
    batch = lm_batch(model, batch=8, seq=32)  # 256 rows: the 5% case takes the sampled CSR path
    model(**batch).loss.backward()
    ref_params = dict(reference.named_parameters())
    for p in reference.parameters():
        p.requires_grad_(False)
    for name in masked_layers(model):
        ref_params[name + ".weight"].requires_grad_(True)
    reference(**batch).loss.backward()
    for name, layer in masked_layers(model).items():
        # rmask_flat indexes the weight as stored; rows and cols the (out, in) matrix: the same entries.
        out_in = layer.weight.t() if name.endswith("c_attn") else layer.weight
        mask = layer.mask
        assert torch.equal(layer.weight.reshape(-1)[mask.rmask_flat], out_in[mask.rmask_rows, mask.rmask_cols])
        dense = ref_params[name + ".weight"].grad.reshape(-1)[layer.mask.rmask_flat]
        torch.testing.assert_close(layer.values.grad, dense, rtol=1e-4, atol=1e-6)


def test_masks_are_deterministic_from_seed_and_module_name():
    a, b, c = (tiny_model("tiny-llama") for _ in range(3))
    apply_random_masking(a, ratio=1e-3, seed=7)
    apply_random_masking(b, ratio=1e-3, seed=7)
    apply_random_masking(c, ratio=1e-3, seed=8)
    la, lb, lc = masked_layers(a), masked_layers(b), masked_layers(c)
    assert all(torch.equal(la[n].mask.rmask_flat, lb[n].mask.rmask_flat) for n in la)
    assert not all(torch.equal(la[n].mask.rmask_flat, lc[n].mask.rmask_flat) for n in la)
    names = list(la)
    assert not torch.equal(la[names[0]].mask.rmask_flat, la[names[2]].mask.rmask_flat)


def test_bernoulli_sampling_count_is_binomial():
    model = tiny_model("tiny-llama")
    info = apply_random_masking(model, density=0.01, sampling="bernoulli", seed=0)
    expected = 0.01 * sum(masked_layers(model)[n].weight.numel() for n in info.targets)
    assert abs(info.trainable_params - expected) < 5 * expected**0.5


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_structured_masking_trains_whole_columns(name):
    model = tiny_model(name)
    info = apply_random_masking(model, ratio=0.01, structure="columns")
    for layer in masked_layers(model).values():
        rows = layer.mask.rmask_shape[0]  # a column of the (out, in) matrix: one input feature's fan-out
        per_col = torch.bincount(layer.mask.rmask_cols)
        assert set(per_col[per_col > 0].tolist()) == {rows}
    assert abs(info.ratio - 0.01) / 0.01 < 0.1


def head_mask(shape: tuple[int, int], count: int) -> torch.Tensor:
    """The paper's structured mask of an (out, in) matrix: its first ``count`` entries in column-major order."""
    mask = torch.zeros(shape[1], shape[0], dtype=torch.bool)  # (in, out): row-major here is column-major there
    mask.view(-1)[:count] = True
    return mask.t()


def out_in_mask(layer) -> torch.Tensor:
    """The masked entries of ``layer``, read off the weight as stored through ``rmask_flat``, in (out, in) terms."""
    stored = torch.zeros(layer.weight.numel(), dtype=torch.bool)
    stored[layer.mask.rmask_flat] = True
    stored = stored.view_as(layer.weight)
    return stored.t() if layer.mask.rmask_transposed else stored


@pytest.mark.parametrize("ratio", [1e-5, 1e-3, 1e-2])
def test_structured_masking_gives_every_opt_matrix_the_same_density_as_leading_columns(ratio):
    from rmask_tune.methods import prepare_method

    model = tiny_model("tiny-opt")
    total = count_parameters(model)
    setup = prepare_method(model, "structured_masking", ratio=ratio)
    info = setup.details
    layers = masked_layers(model)
    assert info["structure"] == "head" and sorted(layers) == sorted(info["targets"])  # every q/v matrix trains
    target_size = sum(layer.weight.numel() for layer in layers.values())
    per_matrix = max(1, round(round(ratio * total) / target_size * 256 * 256))  # all tiny-opt q/v are 256 x 256
    assert info["counts"] == {name: per_matrix for name in layers}
    assert info["trainable_params"] == setup.trainable_params == count_parameters(model, trainable_only=True)
    assert abs(info["trainable_params"] - round(ratio * total)) <= len(layers) / 2
    for layer in layers.values():
        assert layer.mask.rmask_shape == (256, 256)
        assert torch.equal(out_in_mask(layer), head_mask(layer.mask.rmask_shape, per_matrix))
        full, partial = divmod(per_matrix, 256)
        assert set(layer.mask.rmask_cols.tolist()) == set(range(full + (partial > 0)))  # leading columns only
        assert torch.bincount(layer.mask.rmask_cols)[full:].tolist() == ([partial] if partial else [])


def test_structured_masking_under_one_column_fills_the_top_of_the_first_column():
    model = tiny_model("tiny-opt")
    info = apply_random_masking(model, density=10 / (256 * 256), structure="head")
    assert set(info.counts.values()) == {10} and len(info.counts) == 8
    for layer in masked_layers(model).values():
        assert layer.mask.rmask_cols.tolist() == [0] * 10 and layer.mask.rmask_rows.tolist() == list(range(10))
    tiny = apply_random_masking(tiny_model("tiny-opt"), density=1e-9, structure="head")
    assert set(tiny.counts.values()) == {1}  # at least one entry per matrix


def test_structured_masking_on_conv1d_lays_columns_out_in_the_out_in_view():
    model = tiny_model("tiny-gpt2")
    info = apply_random_masking(model, ratio=1e-3, structure="head", seed=4)
    layers = masked_layers(model)
    assert sorted(layers) == sorted(info.targets) and len(set(info.counts.values())) == 1
    for name, layer in layers.items():
        count = info.counts[name]
        out_features, in_features = layer.weight.shape[1], layer.weight.shape[0]  # Conv1D stores (in, out)
        mask = layer.mask
        assert mask.rmask_transposed and mask.rmask_shape == (out_features, in_features) and count > out_features
        assert torch.equal(out_in_mask(layer), head_mask(layer.mask.rmask_shape, count))
        # (out, in) columns are stored rows: the mask is the stored weight's first entries, contiguous
        assert torch.equal(layer.mask.rmask_flat.sort().values, torch.arange(count))
        stored = layer.weight.reshape(-1)[layer.mask.rmask_flat]
        assert torch.equal(layer.weight.t()[layer.mask.rmask_rows, layer.mask.rmask_cols], stored)


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_structured_masked_forward_equals_a_dense_model_with_the_delta_in_the_head_entries(name):
    model = tiny_model(name)
    info = apply_random_masking(model, ratio=1e-3, structure="head")
    gen = torch.Generator().manual_seed(0)
    reference = tiny_model(name)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for layer_name, layer in masked_layers(model).items():
            layer.values.copy_(torch.randn(layer.values.shape, generator=gen))
            weight = modules[layer_name].weight
            out_in = weight.t() if layer.mask.rmask_transposed else weight
            # values follow the (out, in) entries in row-major order, as boolean indexing reads them
            out_in[head_mask(out_in.shape, info.counts[layer_name])] += layer.values
        batch = lm_batch(model)
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(**batch).logits, tiny_model(name)(**batch).logits)


def test_random_columns_layout_keeps_the_earlier_structured_masks():
    from rmask_tune.methods import prepare_method

    for ratio, seed in ((1e-2, 0), (1e-3, 3)):
        named = tiny_model("tiny-opt")
        setup = prepare_method(named, "structured_masking", ratio=ratio, seed=seed, layout="random-columns")
        plain = tiny_model("tiny-opt")
        apply_random_masking(plain, ratio=ratio, seed=seed, structure="columns")
        assert setup.details["structure"] == "columns"
        ours, theirs = masked_layers(named), masked_layers(plain)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[n].mask.rmask_flat, theirs[n].mask.rmask_flat) for n in ours)
        for layer in ours.values():
            per_col = torch.bincount(layer.mask.rmask_cols)
            assert set(per_col[per_col > 0].tolist()) == {256}  # random whole columns
            assert not torch.equal(out_in_mask(layer), head_mask((256, 256), layer.mask.rmask_flat.numel()))
    sparse = prepare_method(tiny_model("tiny-opt"), "structured_masking", ratio=1e-4, layout="random-columns")
    assert len(sparse.details["counts"]) < len(sparse.details["targets"])  # whole columns: few matrices train
    with pytest.raises(RmaskError, match="columns masking at this ratio selects nothing"):
        prepare_method(tiny_model("tiny-opt"), "structured_masking", ratio=1e-5, layout="random-columns")
    with pytest.raises(RmaskError, match="unknown structured_masking layout 'rows'; choose one of head, random-col"):
        prepare_method(tiny_model("tiny-opt"), "structured_masking", ratio=1e-3, layout="rows")
    with pytest.raises(RmaskError, match="sampling 'bernoulli' applies to structure 'random' only, not 'head'"):
        apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, structure="head", sampling="bernoulli")


def test_structured_sweep_file_passes_dry_run_and_its_layout_reaches_the_trials(capsys, tmp_path):
    from rmask_tune.cli import main
    from rmask_tune.methods import prepare_method
    from rmask_tune.sweep import load_space
    from rmask_tune.trainer.config import TrialConfig
    from rmask_tune.trainer.trial import method_settings

    path = REPO / "search_spaces" / "opt125m-structured.yaml"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    space = load_space(path)
    grids = space.file.methods
    assert set(grids) == {"structured_masking", "random_masking"} and space.file.seeds == [0, 1, 2]
    assert grids["structured_masking"].ratios == grids["random_masking"].ratios
    assert len(grids["random_masking"].ratios) == 9
    per_seed = sum(len(grid.ratios) * len(grid.lr) for grid in grids.values()) * len(space.file.tasks)
    assert space.num_trials() == per_seed * 3 and f"{space.num_trials()} trials" in out
    assert "structured_masking 0.001%" in out and "random_masking 0.001%" in out
    columns = tmp_path / "columns.yaml"
    columns.write_text(path.read_text().replace("layout: head", "layout: random-columns"))
    for file, structure in ((path, "head"), (columns, "columns")):  # the file's options reach the trial
        swept = load_space(file)
        trial = next(t for t in swept.grid_trials() if t["method"] == "structured_masking" and t["ratio"] == 1e-3)
        config = TrialConfig.from_dict({**swept.trial_config(trial), "model": "tiny-opt"})
        setup = prepare_method(tiny_model("tiny-opt"), config.method, **method_settings(config, 8))
        assert setup.details["structure"] == structure


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0}, "ratio must be in"),
        ({"ratio": 2}, "ratio must be in"),
        ({"ratio": 0.5}, "the target matrices hold only"),
        ({"ratio": 1e-9}, "less than one trainable parameter"),
        ({"ratio": 0.01, "targets": ["nope"]}, "target 'nope' matches no linear layer"),
        ({"ratio": 0.01, "structure": "rows"}, "unknown structure 'rows'"),
        ({"ratio": 0.01, "density": 0.1}, "exactly one of ratio"),
    ],
)
def test_bad_requests_are_clear_errors(kwargs, message):
    with pytest.raises(RmaskError, match=message):
        apply_random_masking(tiny_model("tiny-llama"), **kwargs)


@PATHS
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_merge_gives_a_plain_model_that_saves_and_reloads(name, tmp_path, path):
    """The dense path computes with the merged weight itself (bit-identical outputs); the sparse path adds
    ``x delta^T`` to ``x W0^T``, equal up to fp32 rounding."""
    import transformers

    model = tiny_model(name)
    apply_random_masking(model, ratio=1e-3, targets="all-linear", path=path)
    with torch.no_grad():
        for layer in masked_layers(model).values():
            layer.values.add_(0.5)
    batch = lm_batch(model)
    with torch.no_grad():
        trained = model(**batch).logits
    merge(model)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        merged = reloaded(**batch).logits
    if path == "dense":
        assert torch.equal(merged, trained)
    torch.testing.assert_close(merged, trained, rtol=1e-5, atol=1e-5)
    restored = tiny_model(name)
    apply_random_masking(restored, ratio=1e-3)
    remove_random_masking(restored, merge=False)
    assert all(torch.equal(p, q) for p, q in zip(restored.parameters(), tiny_model(name).parameters()))


@pytest.mark.parametrize(("name", "structure"), [("tiny-llama", "random"), ("tiny-gpt2", "random"),
                                               ("tiny-llama", "head"), ("tiny-gpt2", "head")])
def test_adapter_round_trip_size_and_mismatch_refusal(name, structure, tmp_path):
    from rmask_tune.masking import DifferentBaseWarning, load_adapter, save_adapter

    model = tiny_model(name)
    info = apply_random_masking(model, ratio=1e-3, seed=11, structure=structure)
    batch = lm_batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    path = save_adapter(model, tmp_path / "adapter")
    assert (path / "adapter_model.safetensors").stat().st_size < 4 * info.trainable_params + 8192
    with pytest.raises(RmaskError, match="already exists"):
        save_adapter(model, path)
    fresh = tiny_model(name)
    loaded = load_adapter(fresh, path)
    assert loaded["trainable_params"] == info.trainable_params and loaded["structure"] == structure
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, trained)
    with pytest.warns(DifferentBaseWarning, match="different base model"):  # same architecture, other weights
        load_adapter(tiny_model(name, seed=1), path)
    with pytest.raises(RmaskError, match="different base model"):
        load_adapter(tiny_model(name, seed=1), path, strict_base=True)
    with pytest.raises(RmaskError, match="different base model"):
        load_adapter(tiny_model("tiny-opt"), path)


def test_auto_path_follows_the_cost_model_and_the_choice_is_recorded():
    from rmask_tune.masking.layer import SPARSE_CROSSOVER

    model = tiny_model("tiny-llama")
    info = apply_random_masking(model, ratio=1e-4, seed=0)
    assert info.path == "auto" and info.to_dict()["path"] == "auto"  # recorded with the method's metrics
    layer = next(iter(masked_layers(model).values()))
    density = layer.mask.rmask_density
    few, many = int(0.5 * SPARSE_CROSSOVER / density), int(2 * SPARSE_CROSSOVER / density) + 1
    # the delta written into the weight for the call: the cheapest path at every size measured
    assert layer.mask.path_for(few, torch.float32) == layer.mask.path_for(many, torch.float32) == "inplace"
    # a cast to the compute dtype copies the weight anyway: adding the delta to that copy is nearly free
    assert layer.mask.path_for(few, torch.bfloat16) == "dense"
    forced = tiny_model("tiny-llama")
    apply_random_masking(forced, ratio=1e-4, seed=0, path="dense")
    assert not any(l.uses_sparse_path(1, torch.float32) for l in masked_layers(forced).values())
    with pytest.raises(RmaskError, match="unknown path 'fast'"):
        apply_random_masking(tiny_model("tiny-llama"), ratio=1e-4, path="fast")


def test_a_shared_base_weight_is_never_written_auto_takes_sparse_or_dense_there():
    from rmask_tune.masking.layer import SPARSE_CROSSOVER

    tied = tiny_model("tiny-llama")
    tied.config.tie_word_embeddings = True
    tied.tie_weights()
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    apply_random_masking(tied, density=0.01, targets=["lm_head"], seed=0)
    head = masked_layers(tied)["lm_head"].mask
    few, many = int(0.5 * SPARSE_CROSSOVER / head.rmask_density), int(2 * SPARSE_CROSSOVER / head.rmask_density) + 1
    assert head.rmask_weight_shared
    assert head.path_for(few, torch.float32) == "sparse" and head.path_for(many, torch.float32) == "dense"
    model = tiny_model("tiny-llama")
    apply_random_masking(model, ratio=1e-3, seed=0)
    assert not any(l.mask.rmask_weight_shared for l in masked_layers(model).values())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_inplace_path_leaves_w0_in_the_base_weight_between_calls_and_after_a_failed_call(name):
    from rmask_tune.masking.layer import effective_weight

    model = tiny_model(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_random_masking(model, ratio=1e-2, seed=3, path="inplace")
    layers = masked_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.values.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    seen = {}

    def during_forward(layer, inputs, output):  # after the call: the delta is out of the base weight again
        seen[layer] = torch.equal(layer.base_layer.weight, before[_base_name(model, layer)])

    hooks = [layer.register_forward_hook(during_forward) for layer in layers.values()]
    batch = lm_batch(model)
    reference = tiny_model(name)
    with torch.no_grad():  # the reference: W0 + delta merged into plain weights
        for layer_name, layer in layers.items():
            weight = effective_weight(layer.mask, layer.values, torch.float32)
            reference.get_submodule(layer_name).weight.copy_(weight)
    model(**batch).loss.backward()
    assert len(seen) == len(layers) and all(seen.values())
    for hook in hooks:
        hook.remove()
    for n, p in model.named_parameters():
        if ".rmask_values." not in n:
            assert torch.equal(p, before[n.replace(".base_layer.", ".")]), n
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    layer = next(iter(layers.values()))
    with pytest.raises(RuntimeError):  # the matmul fails with the delta written in: W0 comes back all the same
        layer(torch.ones(3, layer.in_features + 1))
    assert torch.equal(layer.base_layer.weight, before[_base_name(model, layer)])


def _base_name(model, layer) -> str:
    name = next(n for n, m in model.named_modules() if m is layer)
    return name + ".weight"


def test_bf16_model_trains_fp32_values_on_cpu():
    model = tiny_model("tiny-llama", dtype=torch.bfloat16)
    reference = tiny_model("tiny-llama", dtype=torch.float32)
    apply_random_masking(model, density=0.02, seed=2)
    apply_random_masking(reference, density=0.02, seed=2)
    batch = lm_batch(model, batch=8, seq=32)
    model(**batch).loss.backward()
    reference(**batch).loss.backward()
    for name, layer in masked_layers(model).items():
        assert layer.values.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
        ref = masked_layers(reference)[name].values.grad
        cos = torch.nn.functional.cosine_similarity(layer.values.grad, ref, dim=0)
        assert cos > 0.95, (name, cos)


def test_gpt2_default_targets_are_the_fused_c_attn_and_its_mask_spans_q_k_and_v():
    model = tiny_model("tiny-gpt2")
    info = apply_random_masking(model, density=0.05, seed=0)
    assert info.targets == [f"transformer.h.{i}.attn.c_attn" for i in range(4)]
    for layer in masked_layers(model).values():
        hidden = layer.weight.shape[0]
        per_part = torch.bincount(layer.mask.rmask_rows // hidden, minlength=3)  # output rows: q, k, v blocks
        assert per_part.numel() == 3
        assert (abs(per_part / layer.mask.rmask_rows.numel() - 1 / 3) < 0.05).all(), per_part


def test_tiny_gemma_resolves_q_v_targets_with_exact_counts():
    import transformers

    if not hasattr(transformers, "Gemma3TextConfig"):
        pytest.skip("this transformers has no Gemma 3")
    config = transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, vocab_size=256, max_position_embeddings=64, sliding_window=16,
    )
    for ratio in (1e-2, 1e-3):
        torch.manual_seed(0)
        model = transformers.Gemma3ForCausalLM(config).eval()
        total = count_parameters(model)
        info = apply_random_masking(model, ratio=ratio)
        assert info.targets == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
        assert info.trainable_params == count_parameters(model, trainable_only=True) == round(ratio * total)
    model(**lm_batch(model)).loss.backward()
    assert all(layer.values.grad.abs().sum() > 0 for layer in masked_layers(model).values())


@pytest.fixture
def spops_package(tmp_path, monkeypatch):
    """Put a package named ``spops`` with the given source first on sys.path (forgotten afterwards)."""

    def install(source: str) -> None:
        (tmp_path / "spops").mkdir(exist_ok=True)
        (tmp_path / "spops" / "__init__.py").write_text(source)
        sys.modules.pop("spops", None)
        monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.delitem(sys.modules, "spops", raising=False)
    yield install
    sys.modules.pop("spops", None)


def test_backend_selection_torch_auto_and_missing_spops(spops_package, monkeypatch):
    # auto takes the compiled CPU loop on CPU where numba is installed (the test extra installs it)
    for backend, resolved in (("torch", "torch"), ("auto", "numba"), ("numba", "numba")):
        model = tiny_model("tiny-opt")
        info = apply_random_masking(model, ratio=1e-3, backend=backend)
        assert info.backend == resolved
        assert {layer.mask.rmask_backend for layer in masked_layers(model).values()} == {resolved}
    with monkeypatch.context() as without_numba:
        without_numba.setattr("rmask_tune.masking.backends.numba_available", lambda: False)
        assert apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="auto").backend == "torch"
        with pytest.raises(RmaskError, match="backend 'numba' needs numba, which is not installed"):
            apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="numba")
    with pytest.raises(RmaskError, match="unknown backend 'cuda'"):
        apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="cuda")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    model = tiny_model("tiny-opt")
    with pytest.raises(RmaskError, match="spops kernels, which are not installed; .*github.com/IST-DASLab/spops"):
        apply_random_masking(model, ratio=1e-3, backend="spops")
    assert not masked_layers(model) and count_parameters(model, trainable_only=True) == count_parameters(model)


def test_the_numba_backend_keeps_to_the_trials_threads():
    # A Ray Tune trial trains in a worker thread with PyTorch on its CPUs (1 here). numba's OpenMP pool shares
    # PyTorch's libgomp: launched from such a thread it used to set the thread's OpenMP count to numba's pool size,
    # so PyTorch ran the rest of the trial on every core beside the other trials (4x slower sweeps on 2 cores).
    import threading

    seen = []

    def train_step():
        torch.set_num_threads(1)
        model = tiny_model("tiny-opt")
        apply_random_masking(model, ratio=1e-2, backend="numba")
        ids = torch.randint(0, model.config.vocab_size, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=train_step)
    worker.start()
    worker.join()
    assert seen == [1]


def test_backend_spops_refuses_the_unrelated_pypi_spops_and_cpu_weights(spops_package):
    spops_package('"""A different project that happens to be called spops."""\n')
    with pytest.raises(RmaskError, match="is not IST-DASLab's .*no sddmm/csr_add"):
        apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="spops")
    spops_package("def sddmm(*args, **kwargs): ...\n\n\ndef csr_add(*args, **kwargs): ...\n")
    with pytest.raises(RmaskError, match="runs on CUDA only and the target weights are on cpu"):
        apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="spops")
    # auto never takes spops on CPU (it takes the CPU loop, numba being installed)
    assert apply_random_masking(tiny_model("tiny-opt"), ratio=1e-3, backend="auto").backend == "numba"


SPOPS_REFERENCE = '''
import torch


def sddmm(mask_row_offsets, mask_row_indices, mask_col_indices, A, BT, backend=None, return_type=None):
    """spops' documented contract (its tests' dense reference): out[k] = <A[i], BT[j]> for the k-th (i, j)."""
    assert backend in (None, "sputnik", "structure_aware") and mask_row_offsets.dtype == torch.int32
    assert sorted(mask_row_indices.tolist()) == list(range(A.shape[0]))
    rows = torch.repeat_interleave(torch.arange(A.shape[0]), torch.diff(mask_row_offsets.long()))
    return (A[rows].float() * BT[mask_col_indices.long()].float()).sum(1)


def csr_add(*args, **kwargs):
    raise NotImplementedError
'''


def test_spops_call_passes_the_factors_in_spops_orientation(spops_package):
    from rmask_tune.masking.backends import spops_sampled_product
    from rmask_tune.masking import RandomMaskingLinear
    from rmask_tune.masking.layer import value_gradient

    spops_package(SPOPS_REFERENCE)
    layer = tiny_model("tiny-gpt2").transformer.h[0].attn.c_attn  # (out, in) = (768, 256), stored (256, 768)
    gen = torch.Generator().manual_seed(0)
    layer = RandomMaskingLinear(layer, torch.randperm(layer.weight.numel(), generator=gen)[:3000].sort().values, 0.02)
    grad_out, x = torch.randn(64, 768, generator=gen), torch.randn(64, 256, generator=gen)
    expected = value_gradient(grad_out, x, layer.mask)  # torch's own kernel
    got = spops_sampled_product(layer.mask.rmask_crow, layer.mask.rmask_cols, grad_out, x)
    torch.testing.assert_close(got, expected)
