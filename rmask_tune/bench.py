"""Training-step benchmark: every method side by side in one run, as ratios to the frozen floor.

Methods are interleaved round by round (each round times one step of every method back to back, in an
order that rotates from round to round), so machine noise hits all alike; each ratio is taken within a
round and summarised over the rounds by its median and quartiles.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from rmask_tune.errors import RmaskError
from rmask_tune.methods import prepare_method
from rmask_tune.precision import POLICIES, PrecisionPolicy, resolve_precision

RM_RATIOS = (1e-2, 1e-3, 1e-4, 1e-5)
BENCH_METHODS = ("floor", "random_masking", "structured_masking", "lora", "shira", "full", "dense_mask")


def bench_cases(
    ratios: tuple[float, ...] = RM_RATIOS, paths: tuple[str, ...] = ("auto",), methods: tuple[str, ...] = BENCH_METHODS,
    backends: tuple[str, ...] | None = None,
) -> list[tuple[str, dict]]:
    """(method, options) pairs benchmarked against the frozen floor (always first): Random Masking at
    each of ``ratios`` on each of ``paths`` (with each value-gradient backend of ``backends``, when
    given; else the method's default), then the other ``methods``."""
    unknown = sorted(set(methods) - set(BENCH_METHODS))
    if unknown:
        raise RmaskError(f"unknown bench method '{unknown[0]}'; choose from {', '.join(BENCH_METHODS)}")
    cases = [("floor", {})]
    if "random_masking" in methods:
        cases += [("random_masking", {"ratio": r, "path": p, **({"backend": b} if b else {})})
                  for r in ratios for p in paths for b in backends or (None,)]
    others = {"structured_masking": {"ratio": 1e-2}, "lora": {}, "shira": {}, "full": {}, "dense_mask": {"ratio": 1e-3}}
    return cases + [(m, options) for m, options in others.items() if m in methods]


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
    from rmask_tune.masking import apply_random_masking, masked_layers, remove_random_masking  # peft: on use

    info = apply_random_masking(model, ratio=ratio)
    masks = {}
    for name, layer in masked_layers(model).items():
        masks[name] = torch.zeros(layer.weight.numel(), dtype=layer.weight.dtype, device=layer.weight.device)
        masks[name][layer.mask.rmask_flat] = 1.0
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
        self.backend = None  # the value-gradient backend the masked layers resolved to (masking methods)
        model = copy.deepcopy(base).train()
        if method == "dense_mask":
            self.trainable = _apply_dense_mask(model, options["ratio"])
            self.model = model
        else:  # the floor is the frozen model ("none") with gradients flowing back to its inputs
            setup = prepare_method(model, "none" if method == "floor" else method, **options)
            self.model, self.trainable = setup.model, setup.trainable_params
            if method.endswith("_masking"):
                self.backend = setup.details["backend"]
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


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of a per-round ratio."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if len(values) < 2:
            return cls(values[0], values[0], values[0])
        low, median, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, low, high)


@dataclass
class BenchRow:
    """One method's step: median time over the rounds, per-round ratios to the floor (and to LoRA when it
    ran), trainable state and peak memory."""

    method: str
    ratio: float | None
    path: str | None
    trainable_params: int
    backend: str | None
    step_time_s: float
    vs_floor: float
    vs_floor_spread: Spread
    vs_lora: Spread | None
    trainable_state_bytes: int
    peak_mem_bytes: int


@dataclass
class SkippedCase:
    """A method that refused the model, with its reason."""

    method: str
    ratio: float | None
    skipped: str


@dataclass
class BenchResult:
    """The interleaved benchmark of one model."""

    rounds: int
    rows: list[BenchRow]
    skipped: list[SkippedCase]
    profiles: list  # StageProfile (rmask_tune.bench_profile) of each Random Masking case, when asked for

    def row(self, method: str, ratio: float | None = None, path: str | None = None) -> BenchRow:
        """The row of ``method`` (at ``ratio`` and ``path`` for masking methods)."""
        for r in self.rows:
            if r.method == method and r.ratio == ratio and (path is None or r.path == path):
                return r
        raise KeyError((method, ratio, path))

    def to_dict(self) -> dict:
        return asdict(self)


def _round_ratios(case: _Case, reference: _Case) -> list[float]:
    return [t / r for t, r in zip(case.times, reference.times)]


def make_cases(
    base: nn.Module, cases: list[tuple[str, dict]], batch: dict, policy: PrecisionPolicy
) -> tuple[list[_Case], list[SkippedCase]]:
    """Each (method, options) set up on its own copy of ``base``; a method that refuses the model is skipped."""
    made, skipped = [], []
    for method, options in cases:
        try:
            made.append(_Case(method, options, base, batch, policy))
        except RmaskError as error:
            skipped.append(SkippedCase(method, options.get("ratio"), str(error)))
    return made, skipped


def run_bench(
    base: nn.Module,
    batch_size: int = 8,
    seq_len: int = 64,
    rounds: int = 15,
    precision: str = "fp32",
    cases: list[tuple[str, dict]] | None = None,
    profile_steps: int = 0,
) -> BenchResult:
    """Time one training step (forward, backward, AdamW step) per method, interleaved round by round.

    ``base`` is a model with a loss: a causal LM, a sequence classifier or an image classifier (see
    ``bench_batch``); ``seq_len`` is unused for image models. ``cases`` defaults to ``bench_cases()``.
    Each method's copy is cast by the ``precision`` policy and steps under its autocast. Every round
    steps each method once, starting one method later than the round before; ``vs_floor`` and
    ``vs_lora`` are the per-round ratios' median and quartiles. ``profile_steps`` > 0 also profiles that
    many steps of each Random Masking case by stage (``rmask_tune.bench_profile``).
    """
    if rounds < 1:
        raise RmaskError(f"rounds must be at least 1, got {rounds}")
    batch = bench_batch(base, batch_size, seq_len)
    policy = resolve_precision(precision, next(base.parameters()).device.type)
    made, skipped = make_cases(base, cases or bench_cases(), batch, policy)
    peak = {}
    for case in made:  # warm-up (also creates optimizer state), then one step measured for memory
        case.step()
        peak[case] = case.measure_memory()
        case.times.clear()
    for r in range(rounds):
        for i in range(len(made)):
            made[(i + r) % len(made)].step()
    floor = made[0]
    lora = next((case for case in made if case.method == "lora"), None)
    rows = []
    for case in made:
        vs_floor = Spread.of(_round_ratios(case, floor))
        rows.append(BenchRow(
            method=case.method,
            ratio=case.options.get("ratio"),
            path=case.options.get("path"),
            trainable_params=case.trainable,
            backend=case.backend,
            step_time_s=statistics.median(case.times),
            vs_floor=vs_floor.median,
            vs_floor_spread=vs_floor,
            vs_lora=Spread.of(_round_ratios(case, lora)) if lora else None,
            trainable_state_bytes=_state_bytes(case.model, case.optimizer),
            peak_mem_bytes=peak[case],
        ))
    profiles = []
    if profile_steps > 0:
        from rmask_tune.bench_profile import profile_case

        profiles = [profile_case(case, profile_steps) for case in made if case.method == "random_masking"]
    return BenchResult(rounds, rows, skipped, profiles)


def _spread_text(spread: Spread | None) -> str:
    return "-" if spread is None else f"{spread.median:.3f} ({spread.low:.3f}-{spread.high:.3f})"


def format_table(result: BenchResult) -> str:
    """A plain-text table of the benchmark: ratios as median (quartiles) over the rounds."""
    lines = [f"{result.rounds} interleaved rounds; ratios: median (quartiles) over the rounds",
             f"{'method':<20}{'ratio':>7}{'path':>8}{'backend':>8}{'trainable':>11}{'step ms':>9}{'x floor':>22}"
             f"{'x LoRA':>22}{'state MiB':>10}{'peak MiB':>9}"]  # fmt: skip
    for r in result.rows:
        ratio = f"{r.ratio:.0e}" if r.ratio else "-"
        lines.append(
            f"{r.method:<20}{ratio:>7}{r.path or '-':>8}{r.backend or '-':>8}{r.trainable_params:>11}{r.step_time_s * 1e3:>9.1f}"
            f"{_spread_text(r.vs_floor_spread):>22}{_spread_text(r.vs_lora):>22}"
            f"{r.trainable_state_bytes / 2**20:>10.2f}{r.peak_mem_bytes / 2**20:>9.1f}"
        )
    for s in result.skipped:
        ratio = f"{s.ratio:.0e}" if s.ratio else "-"
        lines.append(f"{s.method:<20}{ratio:>7}  skipped: {s.skipped}")
    if result.profiles:
        from rmask_tune.bench_profile import format_profiles

        lines += ["", format_profiles(result.profiles)]
    return "\n".join(lines)
