"""The bottleneck Adapter baseline (the paper's Table 5), built by AdapterHub's ``adapters`` library.

adapters 1.3.0, the newest release, supports transformers ~=4.57.6 only and cannot even be imported under
this project's transformers 5 (huggingface_hub 1.x lacks its ``HfFolder``). It therefore runs from a side
environment put in front of the project's own, which still provides torch, accelerate, peft and numpy:

    pip install --no-deps --target DIR adapters==1.3.0 transformers==4.57.6 "huggingface_hub>=0.34,<1.0" \
        "tokenizers>=0.22,<=0.23.0"        # side_environment_install(DIR) gives this command
    PYTHONPATH=DIR rmask-tune ...

Under transformers 4.57 the ``smollm2-135m`` alias does not load (no ``GgufConfig``; its cached conversion
has a transformers-5 tokenizer), so tiny models there borrow the ``minilm-l6`` tokenizer.

The defaults follow the paper authors' adapter (facts from their public code): two adapters per layer,
after the attention block and after the feed-forward block, each added to its sublayer's output before the
residual connection (Houlsby et al.'s placement: the library's ``double_seq_bn``); a bottleneck of 8 with
ReLU; a zero up-projection, so training starts from the pretrained model (the library's ``mam_adapter``
initialisation). The library's own Houlsby defaults (reduction factor 16, swish, BERT init) stay available
as options.
"""

from __future__ import annotations

import sys

from torch import nn

from rmask_tune.errors import RmaskError
from rmask_tune.masking.targets import count_parameters
from rmask_tune.methods.setup import MethodSetup

# The side environment that runs adapters 1.3.0 (pip install --no-deps --target DIR ...).
SIDE_ENVIRONMENT = (
    "adapters==1.3.0",
    "transformers==4.57.6",
    "huggingface_hub>=0.34,<1.0",
    "tokenizers>=0.22,<=0.23.0",
)
ADAPTER_NAME = "rmask"
PAPER_BOTTLENECK = 8
# Models adapters 1.3 has no built-in support for, described to its plugin interface (AdapterModelInterface)
# by their module names. OPT: the adapters hook onto the attention's out_proj and the MLP's fc2 outputs,
# before the layer's own dropout and residual connection, as in the paper authors' adapter.
INTERFACES = {
    "opt": dict(
        adapter_methods=["bottleneck"], model_embeddings="decoder.embed_tokens", model_layers="decoder.layers",
        layer_self_attn="self_attn", layer_cross_attn=None, attn_k_proj="k_proj", attn_q_proj="q_proj",
        attn_v_proj="v_proj", attn_o_proj="out_proj", layer_intermediate_proj="fc1", layer_output_proj="fc2",
        layer_pre_self_attn="self_attn_layer_norm", layer_pre_ffn="final_layer_norm", layer_ln_1=None, layer_ln_2=None,
    ),
}  # fmt: skip


def side_environment_install(target: str) -> list[str]:
    """The pip command that installs ``SIDE_ENVIRONMENT`` into the folder ``target`` (for PYTHONPATH)."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, *SIDE_ENVIRONMENT]


def import_adapters():
    """The ``adapters`` module; a one-line RmaskError saying what is needed when it is missing or cannot load."""
    from importlib import metadata

    transformers_version = metadata.version("transformers")
    try:
        import adapters
    except ImportError as error:
        try:
            installed = f"adapters {metadata.version('adapters')}"
            needs = [r for r in metadata.requires("adapters") or [] if r.startswith("transformers")]
        except metadata.PackageNotFoundError:
            installed, needs = "AdapterHub's adapters is not installed", []
        supported = needs[0].replace(" ", "") if needs else "transformers~=4.57.6 (adapters 1.3.0)"
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise RmaskError(
            f"adapter: {installed}, which needs {supported}, and this environment has transformers "
            f"{transformers_version} ({reason}); put a side environment in front: pip install --no-deps "
            f"--target DIR {' '.join(repr(p) for p in SIDE_ENVIRONMENT)}, then PYTHONPATH=DIR"
        ) from error
    return adapters


def adapter(
    model: nn.Module,
    *,
    config: str = "double_seq_bn",
    bottleneck: int | None = None,
    reduction_factor: float | None = None,
    non_linearity: str = "relu",
    init_weights: str = "mam_adapter",
) -> MethodSetup:
    """Bottleneck adapters from AdapterHub's library; all else is frozen (the trainer trains a classifier head).

    ``config`` names one of the library's bottleneck architectures (``double_seq_bn``: Houlsby, two per
    layer; ``seq_bn``: Pfeiffer, one after the feed-forward block; ``par_bn``: parallel). The bottleneck
    width is ``bottleneck``, or hidden size / ``reduction_factor`` (the library's knob); neither gives the
    paper's 8.
    """
    import_adapters()
    from adapters import __version__
    from adapters.configuration import ADAPTER_CONFIG_MAP, AdapterConfig, BnConfig

    bottlenecks = sorted(name for name, known in ADAPTER_CONFIG_MAP.items() if isinstance(known, BnConfig))
    if config not in bottlenecks:
        raise RmaskError(f"adapter: unknown bottleneck config '{config}'; choose one of {', '.join(bottlenecks)}")
    hidden = model.config.hidden_size
    if bottleneck is not None and reduction_factor is not None:
        raise RmaskError("adapter: give bottleneck or reduction_factor, not both")
    if reduction_factor is None:
        bottleneck = PAPER_BOTTLENECK if bottleneck is None else bottleneck
        if not 1 <= bottleneck <= hidden:
            raise RmaskError(f"adapter: bottleneck must be in [1, {hidden}] (the hidden size), got {bottleneck}")
        # The library's width is floor(hidden / factor); aiming half-way up keeps float error off the edge.
        reduction_factor = hidden / (bottleneck + 0.5)
    elif not reduction_factor > 0:
        raise RmaskError(f"adapter: reduction_factor must be positive, got {reduction_factor}")
    width = max(1, int(hidden // reduction_factor))

    total = count_parameters(model)
    settings = dict(reduction_factor=reduction_factor, non_linearity=non_linearity, init_weights=init_weights)
    try:
        init_adapters(model)
        model.add_adapter(ADAPTER_NAME, config=AdapterConfig.load(config, **settings))
    except (ValueError, KeyError) as error:
        raise RmaskError(f"adapter: {' '.join(str(error).split())}") from error
    model.train_adapter(ADAPTER_NAME)
    # The library freezes only the base model: an untied LM head or a classifier head would stay trainable.
    layers = model.get_adapter(ADAPTER_NAME).values()
    own = {id(p) for modules in layers for module in modules.values() for p in module.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in own)
    (summary,) = [row for row in model.adapter_summary(as_dict=True) if row["name"] == ADAPTER_NAME]
    details = {
        "config": config,
        "bottleneck": width,
        "reduction_factor": reduction_factor,
        "non_linearity": non_linearity,
        "init_weights": init_weights,
        "library": f"adapters {__version__}",
        "library_params": summary["#param"],
    }
    return MethodSetup.measure("adapter", model, total, details)


def init_adapters(model: nn.Module) -> None:
    """Make ``model`` take adapters: the library's built-in support, or its plugin interface (``INTERFACES``)."""
    adapters = import_adapters()
    known = INTERFACES.get(model.config.model_type)
    adapters.init(model, interface=None if known is None else adapters.AdapterModelInterface(**known))
