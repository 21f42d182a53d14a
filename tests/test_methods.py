"""The method registry: exact trainable counts, two real AdamW steps per method, and option errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rmask_tune.errors import RmaskError
from rmask_tune.methods import METHODS, prepare_method
from rmask_tune.models import tiny_model
from paths import DATA



def random_ids(model):
    return torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


def lm_batch(model):
    ids = random_ids(model)
    return {"input_ids": ids, "labels": ids}


def classification_batch(model):
    return {"input_ids": random_ids(model), "labels": torch.tensor([0, 1])}


def qv_shapes(model):
    """(in, out) of every attention query and value projection, read off the model config."""
    c = model.config
    kv_dim = getattr(c, "num_key_value_heads", c.num_attention_heads) * (c.hidden_size // c.num_attention_heads)
    return [(c.hidden_size, c.hidden_size), (c.hidden_size, kv_dim)] * c.num_hidden_layers


def train_and_check(setup, batch, steps=2):
    """Run AdamW steps as the trainer does; trainable tensors must change, frozen ones stay bit-identical."""
    model = setup.model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, steps + 1):
        loss = model(**batch).loss
        assert math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
        if setup.on_step_end is not None:
            setup.on_step_end(step)
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def assert_counts(setup, base_total, expected_trainable):
    assert setup.total_params == base_total
    assert setup.trainable_params == expected_trainable
    assert setup.trainable_params == sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    assert setup.trainable_fraction == expected_trainable / base_total
    json.dumps(setup.details)


def peft_trainable(setup):
    return setup.model.get_nb_trainable_parameters()[0]


def test_registry_lists_every_method():
    expected = {
        "random_masking", "structured_masking", "full", "none", "bitfit", "lora", "adalora", "prefix", "shira",
        "adapter",
    }  # fmt: skip
    assert set(METHODS) == expected


def test_full_trains_everything():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "full")
    assert_counts(setup, total, total)
    assert setup.on_step_end is None
    train_and_check(setup, lm_batch(model))


def test_none_freezes_everything():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "none")
    assert_counts(setup, total, 0)
    with torch.no_grad():
        assert math.isfinite(setup.model(**lm_batch(model)).loss.item())


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-bert"])
def test_bitfit_trains_only_biases(name):
    model = tiny_model(name)
    c = model.config
    h = c.hidden_size
    # Per layer: q, k, v, attention output, second MLP linear and two layer norms (7 * h), first MLP linear.
    if name == "tiny-opt":  # + the final layer norm
        expected = c.num_hidden_layers * (7 * h + c.ffn_dim) + h
        batch = lm_batch(model)
    else:  # + the embedding layer norm, the pooler and the classifier
        expected = c.num_hidden_layers * (7 * h + c.intermediate_size) + h + h + c.num_labels
        batch = classification_batch(model)
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "bitfit")
    assert_counts(setup, total, expected)
    assert all(n.endswith(".bias") for n, p in setup.model.named_parameters() if p.requires_grad)
    train_and_check(setup, batch)


def test_bitfit_on_a_model_without_biases_says_so():
    with pytest.raises(RmaskError, match="bitfit: LlamaForCausalLM has no bias parameters, so BitFit would train"):
        prepare_method(tiny_model("tiny-llama"), "bitfit")


def test_lora_on_query_value():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "lora")
    expected = sum(8 * (i + o) for i, o in qv_shapes(model))
    assert_counts(setup, total, expected)
    assert peft_trainable(setup) == expected
    assert setup.details["r"] == 8 and setup.details["alpha"] == 16 and setup.details["task_type"] == "CAUSAL_LM"
    assert len(setup.details["targets"]) == 2 * model.config.num_hidden_layers
    train_and_check(setup, lm_batch(model))


def test_lora_on_a_sequence_classifier_also_trains_the_head():
    model = tiny_model("tiny-bert")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "lora", r=4)
    head = model.config.hidden_size * model.config.num_labels + model.config.num_labels
    expected = sum(4 * (i + o) for i, o in qv_shapes(model)) + head
    assert_counts(setup, total, expected)
    assert peft_trainable(setup) == expected
    assert setup.details["task_type"] == "SEQ_CLS"
    train_and_check(setup, classification_batch(model))


def test_adalora_allocates_ranks_across_steps():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "adalora", total_step=2)
    expected = sum(8 * (i + o) + 8 for i, o in qv_shapes(model))  # A, B and the singular values E at init_r=8
    assert_counts(setup, total, expected)
    assert peft_trainable(setup) == expected
    train_and_check(setup, lm_batch(model))
    # Step 2 = total_step finalizes the budget: on average target_r=5 of the 8 ranks per matrix survive.
    rank_pattern = setup.model.peft_config["default"].rank_pattern
    assert sum(sum(kept) for kept in rank_pattern.values()) == 5 * len(qv_shapes(model))


def test_adalora_trains_loras_budget_plus_its_singular_values():
    lora = prepare_method(tiny_model("tiny-llama"), "lora")
    adalora = prepare_method(tiny_model("tiny-llama"), "adalora", total_step=10)
    matrices = len(lora.details["targets"])
    # Same A and B sizes as LoRA r=8; the only excess is E, one vector of init_r=8 values per matrix.
    assert adalora.trainable_params == lora.trainable_params + 8 * matrices
    e_values = sum(p.numel() for n, p in adalora.model.named_parameters() if ".lora_E." in n)
    assert adalora.trainable_params - e_values == lora.trainable_params
    # peft's own defaults (init_r 12, target_r 8) remain the named variant at 1.5x LoRA's A and B.
    peft_defaults = prepare_method(tiny_model("tiny-llama"), "adalora", total_step=10, init_r=12, target_r=8)
    assert peft_defaults.trainable_params == 1.5 * lora.trainable_params + 12 * matrices


def adalora_factors(setup):
    """Each AdaLoRA matrix's A and B, read off peft's layers."""
    from peft.tuners.adalora import AdaLoraLayer

    layers = [m for m in setup.model.modules() if isinstance(m, AdaLoraLayer)]
    return [(m.lora_A["default"], m.lora_B["default"]) for m in layers]


def reference_orthogonality(setup):
    """Mean over all A and B of ||A A^T - I||_F and ||B^T B - I||_F, written out matrix by matrix."""
    terms = []
    for a, b in adalora_factors(setup):
        terms.append(torch.linalg.norm(a @ a.T - torch.eye(a.shape[0])))
        terms.append(torch.linalg.norm(b.T @ b - torch.eye(b.shape[1])))
    return sum(terms) / len(terms)


def test_adalora_loss_from_logits_plus_extra_loss_equals_peft_loss_with_labels():
    model = tiny_model("tiny-llama")
    setup = prepare_method(model, "adalora", total_step=10, orth_reg_weight=0.3)
    train_and_check(setup, lm_batch(model), steps=1)  # move A and B off their initialization
    ids = random_ids(model)
    with torch.no_grad():
        peft_loss = setup.model(input_ids=ids, labels=ids).loss  # peft adds 0.3 x its regularizer here
        logits = setup.model(input_ids=ids).logits
        plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        extra = setup.extra_loss()
        reference = reference_orthogonality(setup)
    assert (plain + extra).item() == pytest.approx(peft_loss.item(), rel=1e-6)
    assert (peft_loss - plain).item() == pytest.approx(0.3 * reference.item(), rel=1e-5)
    assert extra.item() == pytest.approx(0.3 * reference.item(), rel=1e-6) and reference.item() > 0.1
    assert setup.details["orth_reg_weight"] == 0.3


def test_adalora_regularizer_gradient_reaches_a_and_b_only():
    setup = prepare_method(tiny_model("tiny-llama"), "adalora", total_step=10)
    setup.extra_loss().backward()
    for a, b in adalora_factors(setup):
        assert a.grad is not None and a.grad.abs().sum() > 0
        assert b.grad is not None and b.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in setup.model.named_parameters() if ".lora_E." in n)


def test_adalora_without_the_regularizer_has_no_extra_loss():
    setup = prepare_method(tiny_model("tiny-llama"), "adalora", total_step=10, orth_reg_weight=0)
    assert setup.extra_loss is None


@pytest.mark.needs_data
def test_trial_loss_adds_and_records_the_methods_extra_loss():
    from rmask_tune.trainer import prepare_trial, train_trial

    config = dict(model="tiny-llama", task="SST-2", method="adalora", lr=1e-3, data_dir=str(DATA), epochs=1,
                  batch_size=4, train_examples=8, dev_examples=2, test_examples=2, quiet=True)  # fmt: skip
    trial = prepare_trial(config)
    batch = next(trial.train_batches())
    with torch.no_grad():
        total = trial.loss(batch)
        family = trial.family.loss(trial.model, batch)
        extra = trial.setup.extra_loss()
    assert total.item() == pytest.approx((family + extra).item(), rel=1e-6) and extra.item() > 0
    assert trial.take_extra_loss() == pytest.approx(extra.item()) and trial.take_extra_loss() is None
    records = []
    train_trial(trial, hooks=[records.append])
    assert records[-1]["extra_loss"] > 0 and records[-1]["train_loss"] > records[-1]["extra_loss"]


def test_adalora_step_after_zero_grad_is_an_error():
    model = tiny_model("tiny-llama")
    setup = prepare_method(model, "adalora", total_step=10)
    setup.model.train()
    setup.model(**lm_batch(model)).loss.backward()
    setup.model.zero_grad()
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        setup.on_step_end(1)


def test_prefix_on_a_causal_lm():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "prefix")
    kv_dim = qv_shapes(model)[1][1]
    expected = 5 * model.config.num_hidden_layers * 2 * kv_dim  # a key and a value per virtual token and layer
    assert_counts(setup, total, expected)
    assert peft_trainable(setup) == expected
    train_and_check(setup, lm_batch(model))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_prefix_real_words_init_acts_as_those_tokens_in_front(name):
    setup = prepare_method(tiny_model(name), "prefix", seed=3)
    tokens = torch.tensor([setup.details["init_tokens"]])
    assert setup.details["init"] == "real-words" and tokens.shape == (1, 5)
    base = setup.model.get_base_model()
    ids = random_ids(base)
    with torch.no_grad():
        prefixed = setup.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        cache = base(input_ids=tokens, use_cache=True).cache  # the frozen model's keys and values of the tokens
        cache.batch_repeat_interleave(len(ids))
        mask = torch.ones(len(ids), 5 + ids.shape[1], dtype=torch.long)
        expected = base(input_ids=ids, cache=cache, attention_mask=mask).logits
        in_front = base(input_ids=torch.cat([tokens.expand(len(ids), -1), ids], dim=1)).logits[:, 5:]
        without = base(input_ids=ids).logits
    assert torch.equal(prefixed, expected)
    torch.testing.assert_close(prefixed, in_front, atol=1e-4, rtol=1e-4)  # one sequence, other kernel shapes
    assert not torch.allclose(prefixed, without, atol=1e-2)


def test_prefix_real_words_are_drawn_from_the_seed():
    draws = [prepare_method(tiny_model("tiny-opt"), "prefix", seed=s).details["init_tokens"] for s in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]
    assert all(0 <= t < 2048 for t in draws[0] + draws[2])


def test_prefix_random_init_keeps_pefts():
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    ours = prepare_method(tiny_model("tiny-llama"), "prefix", init="random").model  # tiny_model reseeds torch
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5)
    peft_own = get_peft_model(tiny_model("tiny-llama"), config)
    weight = lambda m: m.prompt_encoder["default"].embedding.weight  # noqa: E731
    assert torch.equal(weight(ours), weight(peft_own))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init": "zeros"}, "prefix: unknown init 'zeros'; choose one of real-words, random"),
        ({"virtual_tokens": 0}, "prefix: virtual_tokens must be at least 1, got 0"),
    ],
)
def test_prefix_bad_options(options, message):
    with pytest.raises(RmaskError, match=message):
        prepare_method(tiny_model("tiny-llama"), "prefix", **options)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_prefix_needs_a_causal_lm(name):
    with pytest.raises(RmaskError, match="prefix: prefix tuning needs a causal language model"):
        prepare_method(tiny_model(name), "prefix")


def test_shira_default_rank():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    setup = prepare_method(model, "shira")
    expected = sum(32 * (i + o) for i, o in qv_shapes(model))  # peft's default r=32, sized like LoRA
    assert_counts(setup, total, expected)
    assert peft_trainable(setup) == expected
    train_and_check(setup, lm_batch(model))


def test_shira_ratio_picks_the_nearest_rank():
    model = tiny_model("tiny-llama")
    total = sum(p.numel() for p in model.parameters())
    per_rank = sum(i + o for i, o in qv_shapes(model))
    setup = prepare_method(model, "shira", ratio=0.01, seed=3)
    r = round(0.01 * total / per_rank)
    assert setup.details["r"] == r
    assert_counts(setup, total, r * per_rank)
    assert abs(setup.trainable_fraction - 0.01) <= per_rank / total / 2


def test_masking_methods_train_only_their_entries():
    for method in ("random_masking", "structured_masking"):
        model = tiny_model("tiny-llama")
        total = sum(p.numel() for p in model.parameters())
        setup = prepare_method(model, method, ratio=0.01, seed=1)
        assert setup.total_params == total
        assert setup.trainable_params == setup.details["trainable_params"]
        assert abs(setup.trainable_fraction - 0.01) < 0.002
        json.dumps(setup.details)
        # Training behaviour (masked-out entries bit-identical, gradients) is tested in test_masking.py.


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("dora", {}, "unknown method 'dora'; choose one of random_masking, structured_masking, full"),
        ("lora", {"rank": 4}, "unknown option 'rank' for method 'lora' \\(its options: r, alpha"),
        ("full", {"r": 4}, "unknown option 'r' for method 'full' \\(it takes no options\\)"),
        ("adalora", {}, "method 'adalora' needs the option 'total_step'"),
        ("adalora", {"total_step": 1}, "adalora: total_step - tfinal must be at least 2 .* got total_step 1 and"),
        ("adalora", {"total_step": 10, "orth_reg_weight": -1}, "adalora: `orth_reg_weight` should be greater than"),
        ("shira", {"r": 4, "ratio": 0.01}, "shira: give r or ratio, not both"),
        ("shira", {"ratio": 1e-6}, "shira: ratio 1e-06 is below the smallest ShiRA"),
        ("shira", {"r": 1000}, "shira: The set rank 1000 results in more shira params"),
    ],
)
def test_bad_method_or_option(method, options, message):
    with pytest.raises(RmaskError, match=message):
        prepare_method(tiny_model("tiny-llama"), method, **options)
