"""Training-step benchmark: every method side by side in one run, as ratios to the frozen floor."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from rmask_tune.errors import RmaskError
from rmask_tune.masking import apply_random_masking, masked_layers, remove_random_masking
from rmask_tune.methods import prepare_method
from rmask_tune.precision import POLICIES, PrecisionPolicy, resolve_precision

RM_RATIOS = (1e-2, 1e-3, 1e-4, 1e-5)


def bench_cases(ratio_for_structured: float = 1e-2) -> list[tuple[str, dict]]:
    """(method, options) pairs benchmarked against the frozen floor."""
    cases = [("floor", {})]
    cases += [("random_masking", {"ratio": r}) for r in RM_RATIOS]
    cases += [("structured_masking", {"ratio": ratio_for_structured}), ("lora", {}), ("shira", {}), ("full", {})]
    cases += [("dense_mask", {"ratio": 1e-3})]
    return cases


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of trainable state: trainable values, their grads and the optimizer's moments."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(2 * p.numel() * p.element_size() for p in params)
    if optimizer is not None:
        total += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                     if torch.is_tensor(t) and t.dim() > 0)
    return total


class _DenseMaskedDelta(nn.Module):
    """A weight parametrization ``W + delta * mask`` with a full-size trainable ``delta``."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.delta = nn.Parameter(torch.zeros_like(mask))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta * self.mask


def _apply_dense_mask(model: nn.Module, ratio: float) -> int:
    """The naive implementation: a full-size trainable delta times a 0/1 mask on each q/v matrix."""
    info = apply_random_masking(model, ratio=ratio)
    masks = {}
    for name, layer in masked_layers(model).items():
        masks[name] = torch.zeros(layer.weight.numel(), dtype=layer.weight.dtype, device=layer.weight.device)
        masks[name][layer.rmask_flat] = 1.0
    remove_random_masking(model, merge=False)
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        parametrize.register_parametrization(layer, "weight", _DenseMaskedDelta(mask.view_as(layer.weight)))
    return info.trainable_params


def _is_classifier(model: nn.Module) -> bool:
    from transformers.models.auto import modeling_auto as auto

    name = type(model).__name__
    mappings = (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    return any(name in mapping.values() for mapping in mappings)


def bench_batch(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Random inputs and labels for ``model``'s head, with the inputs as the float tensor the floor's
    gradient flows back to: token embeddings for text models, pixels for vision models.

    Labels are class indices for sequence / image classifiers and the input tokens for language models.
    """
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    if model.main_input_name == "pixel_values":
        vision = getattr(config, "vision_config", config)  # CLIP keeps the image shape in its vision config
        shape = (batch_size, vision.num_channels, vision.image_size, vision.image_size)
        inputs = {"pixel_values": torch.randn(shape, generator=gen).to(model.dtype)}
        labels = None
    else:
        labels = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)
        inputs = {"inputs_embeds": model.get_input_embeddings()(labels).detach()}
    if _is_classifier(model):
        labels = torch.randint(0, config.num_labels, (batch_size,), generator=gen)
    return {**inputs, "labels": labels}


class _Case:
    def __init__(
        self, method: str, options: dict, base: nn.Module, batch: dict, precision: PrecisionPolicy = POLICIES["fp32"]
    ):
        self.method, self.options, self.precision = method, options, precision
        model = copy.deepcopy(base).train()
        if method == "dense_mask":
            self.trainable = _apply_dense_mask(model, options["ratio"])
            self.model = model
        else:  # the floor is the frozen model ("none") with gradients flowing back to its inputs
            setup = prepare_method(model, "none" if method == "floor" else method, **options)
            self.model, self.trainable = setup.model, setup.trainable_params
        precision.cast_model(self.model)
        self.device_type = next(self.model.parameters()).device.type
        self.scaler = precision.grad_scaler(self.device_type)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
        # Only the floor's inputs require grad: its backward runs through the whole frozen model to them.
        dtype = precision.weight_dtype
        self.inputs = {k: v.detach().to(dtype).requires_grad_(method == "floor") if v.is_floating_point() else v
                       for k, v in batch.items()}
        self.times: list[float] = []

    def measure_memory(self) -> int:
        """Peak bytes of one step: CUDA allocator peak on GPU; on CPU, weights + trainable state +
        the activations autograd saves for backward (each storage counted once)."""
        device = next(self.model.parameters()).device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.step()
            return torch.cuda.max_memory_allocated(device)
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.layout == torch.strided:
                storage = t.untyped_storage()
                saved[storage.data_ptr()] = storage.nbytes()
            else:  # sparse (SHiRA): values plus one int64 index per dimension
                saved[id(t)] = t._nnz() * (t.element_size() + 8 * t.sparse_dim())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.step()
        weights = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                   for p in list(self.model.parameters()) + list(self.model.buffers())}
        activations = sum(n for ptr, n in saved.items() if ptr not in weights)
        return sum(weights.values()) + _state_bytes(self.model, self.optimizer) + activations

    def step(self) -> None:
        start = time.perf_counter()
        with self.precision.autocast(self.device_type):
            loss = self.model(**self.inputs).loss
        self.scaler.scale(loss).backward()
        if self.optimizer is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)


def run_bench(
    base: nn.Module, batch_size: int = 8, seq_len: int = 64, rounds: int = 5, steps: int = 3, precision: str = "fp32"
) -> list[dict]:
    """Time one training step per method, interleaving methods in rounds so machine noise hits all alike.

    ``base`` is a model with a loss: a causal LM, a sequence classifier or an image classifier (see
    ``bench_batch``); ``seq_len`` is unused for image models. Each method's copy is cast by the
    ``precision`` policy and steps under its autocast. A method that refuses the model gets a
    row with the reason under ``skipped`` instead of measurements.
    """
    batch = bench_batch(base, batch_size, seq_len)
    policy = resolve_precision(precision, next(base.parameters()).device.type)
    cases, skipped = [], []
    for method, options in bench_cases():
        try:
            cases.append(_Case(method, options, base, batch, policy))
        except RmaskError as error:
            skipped.append({"method": method, "ratio": options.get("ratio"), "skipped": str(error)})
    peak = {}
    for case in cases:  # warm-up (also creates optimizer state), then one step measured for memory
        case.step()
        peak[case] = case.measure_memory()
        case.times.clear()
    for _ in range(rounds):
        for case in cases:
            for _ in range(steps):
                case.step()
    floor = statistics.median(cases[0].times)
    rows = []
    for case in cases:
        t = statistics.median(case.times)
        rows.append({
            "method": case.method,
            "ratio": case.options.get("ratio"),
            "trainable_params": case.trainable,
            "step_time_s": t,
            "trainable_state_bytes": _state_bytes(case.model, case.optimizer),
            "peak_mem_bytes": peak[case],
            "vs_floor": t / floor,
        })
    return rows + skipped


def format_table(rows: list[dict]) -> str:
    """A plain-text table of benchmark rows."""
    lines = [f"{'method':<20}{'ratio':>10}{'trainable':>12}{'step ms':>10}{'x floor':>9}{'state MiB':>11}"
             f"{'peak MiB':>10}"]
    for r in rows:
        ratio = f"{r['ratio']:.0e}" if r["ratio"] else "-"
        if "skipped" in r:
            lines.append(f"{r['method']:<20}{ratio:>10}  skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['method']:<20}{ratio:>10}{r['trainable_params']:>12}{r['step_time_s'] * 1e3:>10.1f}"
            f"{r['vs_floor']:>9.2f}{r['trainable_state_bytes'] / 2**20:>11.2f}{r['peak_mem_bytes'] / 2**20:>10.1f}"
        )
    return "\n".join(lines)
