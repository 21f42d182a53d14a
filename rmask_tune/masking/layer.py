"""Random Masking's kernels and one adapter's mask (``RandomMask``); no peft here.

``RandomMaskingLinear`` (``tuner_layer``) is the one layer class of Random Masking, used by
``get_peft_model`` and by the trainer alike: a peft tuner layer that owns a frozen linear layer
(``base_layer``: ``nn.Linear``, or HF's ``Conv1D`` whose weight is stored (in, out)) and any number of
named adapters. Each adapter has its own mask (``rmask_masks[name]``, a ``RandomMask``) and its own
trainable values (``rmask_values[name]``, one value per masked entry, fp32 unless peft's
``autocast_adapter_dtype=False`` keeps the base dtype). The base weight keeps ``W0`` unless an adapter is
merged (or, on the ``inplace`` path, within one call). Every call applies ``W0 + delta`` (the active
adapters' deltas added up) in the compute dtype (the autocast dtype when autocast is on, else the base
weight's) along one of three paths (``rmask_path``; ``auto`` picks per call by ``choose_path``):

- ``dense``: build the effective weight ``W0 + delta`` (one copy of the weight) and run one matmul;
- ``sparse``: ``y = x W0^T + x delta^T`` and ``grad_x = grad_y W0 + grad_y delta``, the delta applied
  from the indices (a gather, a product and a scatter over rows x masked entries), never a dense copy;
- ``inplace``: write ``W0 + delta`` into the masked entries of the base weight for the one matmul of the
  call and put the ``W0`` entries back right after it (in forward, and again in backward): no copy of
  the weight, only the masked entries move. Between calls the base weight holds exactly ``W0``.

On every path:

- any optimizer trains it (fused or foreach AdamW, SGD, Adafactor, 8-bit optimizers) and so do direct
  edits of the values (``.data``, ``copy_``, ``load_state_dict``): nothing is cached between calls;
- it is safe under ``torch.autocast`` (bf16, fp16) and on fp32, bf16 or fp16 base weights, with
  gradients and outputs in the dtypes autocast would give a plain linear layer;
- the value gradient ``(grad_out^T x)`` is computed only at the masked entries (on CPU with numba one
  compiled loop; else a gather of the two factors for very few entries, a sampled product on a CSR pattern
  at low density; a dense product then a gather at high density), always accumulated in fp32.

The kernels below read one adapter's mask (a ``RandomMask``): ``rmask_rows`` / ``rmask_cols``, the CSR
pattern and ``rmask_shape`` are in (out, in) terms for both layer kinds; ``rmask_flat`` indexes the base
weight as stored.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function

from rmask_tune.errors import RmaskError
from rmask_tune.masking.backends import spops_sampled_product
from rmask_tune.masking.cpu_kernels import numba_sampled_product
from rmask_tune.masking.targets import is_conv1d, out_in_shape

# Above this density a dense weight gradient followed by a gather beats the sampled product;
# below GATHER_MAX_WORK (rows x masked entries) a plain gather of the two factors is fastest.
DENSE_GRAD_DENSITY = 0.1
GATHER_MAX_WORK = 1 << 18
# Compute dtypes the sampled product runs in directly; others go through fp32.
_SDDMM_DTYPES = (torch.float32, torch.float64)
PATHS = ("auto", "dense", "sparse", "inplace")
# The cost model of ``auto`` (``choose_path``): when the compute dtype differs from the weight's, the cast
# copies the weight anyway and the dense path adds the delta to that copy (nearly free). Otherwise the
# inplace path moves 3 x k elements and copies nothing, and it was the fastest of the three at every
# rows x density measured (0.005-0.5, docs/speed.md), so it is taken unless the base weight is shared with
# another module (which must never see the delta). There the dense path would copy the weight (out x in
# elements) only to add the delta and the sparse path gathers, multiplies and scatters rows x k elements
# (a gathered element costs about 1 / SPARSE_CROSSOVER copied ones): sparse below the crossover, dense
# above it. Measured on CPU in fp32 (``rmask-tune bench --profile`` prints the per-layer curve of the three
# paths, ``python -m rmask_tune.gpu_check`` times them on a GPU).
SPARSE_CROSSOVER = 0.05

_plain_autograd = False


@contextlib.contextmanager
def plain_autograd():
    """Within the block masked layers differentiate through ordinary torch ops on the dense path instead of
    their autograd Function: slower, but twice differentiable (exact Hessian-vector products)."""
    global _plain_autograd
    saved, _plain_autograd = _plain_autograd, True
    try:
        yield
    finally:
        _plain_autograd = saved


def _stage(name: str):
    """A profiler label for one stage of a masked layer; free when no profiler is recording."""
    return record_function(name) if torch.autograd.profiler._is_profiler_enabled else contextlib.nullcontext()


def value_gradient(grad_out: torch.Tensor, x: torch.Tensor, layer: RandomMask) -> torch.Tensor:
    """d loss / d values: (grad_out^T x) at the masked (out, in) entries only, in fp32."""
    g = grad_out.reshape(-1, grad_out.shape[-1])
    a = x.reshape(-1, x.shape[-1])
    k = layer.rmask_flat.numel()
    if layer.rmask_density >= DENSE_GRAD_DENSITY:
        return (g.t() @ a)[layer.rmask_rows, layer.rmask_cols].float()
    if layer.rmask_backend == "numba" and g.device.type == "cpu":
        return numba_sampled_product(g, a, layer.rmask_rows, layer.rmask_cols)
    if g.shape[0] * k <= GATHER_MAX_WORK:
        return (g[:, layer.rmask_rows].float() * a[:, layer.rmask_cols].float()).sum(0)
    if layer.rmask_backend == "spops":
        return spops_sampled_product(layer.rmask_crow, layer.rmask_cols, g, a)
    if g.dtype not in _SDDMM_DTYPES:
        g, a = g.float(), a.float()
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on first use; the pattern is ours and valid
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        pattern = torch.sparse_csr_tensor(
            layer.rmask_crow, layer.rmask_cols, torch.zeros(k, dtype=g.dtype, device=g.device), layer.rmask_shape,
            check_invariants=False,
        )
    return torch.sparse.sampled_addmm(pattern, g.t(), a, beta=0.0).values().float()


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a plain linear layer would compute in: autocast's when it is on, else the weight's."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def masked_entries(w0: torch.Tensor, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W0 + values`` at the masked entries, summed in fp32 and rounded once to ``dtype`` (zero values give
    back ``W0`` exactly)."""
    return (w0.float() + values).to(dtype)


def effective_weight(layer: RandomMask, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W0 + delta`` as stored by the base layer, in ``dtype``: a new tensor (the base weight is untouched).

    The masked entries are ``W0 + values`` summed in fp32 and rounded once to ``dtype``, so zero values
    give back ``W0`` exactly.
    """
    w0 = layer.base_layer.weight.detach()
    merged = masked_entries(w0.reshape(-1)[layer.rmask_flat], values, dtype)
    weight = w0.to(dtype, copy=True).reshape(-1)  # the one copy, also when the cast makes one anyway
    return weight.index_put_((layer.rmask_flat,), merged).view_as(w0)


def choose_path(layer: RandomMask, rows: int, dtype: torch.dtype) -> str:
    """The ``auto`` path's cost model (see ``SPARSE_CROSSOVER``): dense when a cast to ``dtype`` copies the
    weight anyway, else inplace; for a shared base weight sparse below the crossover and dense above it."""
    if layer.weight.dtype != dtype:
        return "dense"
    if not layer.rmask_weight_shared:
        return "inplace"
    return "sparse" if rows * layer.rmask_density < SPARSE_CROSSOVER else "dense"


@contextlib.contextmanager
def delta_written_in(layer: RandomMask, values: torch.Tensor):
    """Within the block the base weight holds ``W0 + delta`` at the masked entries (summed in fp32 and
    rounded once to the weight's dtype, as ``effective_weight`` does); after it, ``W0`` again, bit for bit."""
    weight = layer.base_layer.weight.detach()
    flat = weight.view(-1)
    with _stage("rmask.delta"):
        w0 = flat.index_select(0, layer.rmask_flat)
        flat.index_put_((layer.rmask_flat,), masked_entries(w0, values.detach(), flat.dtype))
    try:
        yield weight
    finally:
        with _stage("rmask.delta"):
            flat.index_put_((layer.rmask_flat,), w0)


def add_sparse_product(out: torch.Tensor, source: torch.Tensor, values: torch.Tensor, take: torch.Tensor,
                       put: torch.Tensor) -> torch.Tensor:
    """``out[..., put] += source[..., take] * values`` (repeated ``put`` entries add up), in place."""
    return out.index_add_(-1, put, source.index_select(-1, take) * values.to(out.dtype))


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layer: RandomMask,
                  dtype: torch.dtype) -> torch.Tensor:
    """``x W0^T + b + x delta^T`` with the delta applied from the indices; ordinary (differentiable) torch ops."""
    y = _linear(x, layer.base_layer.weight.detach().to(dtype), bias, layer.rmask_transposed)
    with _stage("rmask.delta"):
        return add_sparse_product(y, x, values, layer.rmask_cols, layer.rmask_rows)


def inplace_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layer: RandomMask,
                   dtype: torch.dtype) -> torch.Tensor:
    """One matmul with the base weight itself, the delta written into it for the call."""
    with delta_written_in(layer, values) as weight:
        return _linear(x, weight.to(dtype), bias, layer.rmask_transposed)


def dense_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, layer: RandomMask,
                 dtype: torch.dtype) -> torch.Tensor:
    """One matmul with the effective weight ``W0 + delta``."""
    with _stage("rmask.delta"):
        weight = effective_weight(layer, values, dtype)
    return _linear(x, weight, bias, layer.rmask_transposed)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """``x W^T + b`` for a weight stored (out, in), ``x W + b`` for one stored (in, out) (HF Conv1D)."""
    return F.linear(x, weight.t() if transposed else weight, bias)


LINEARS = {"dense": dense_linear, "sparse": sparse_linear, "inplace": inplace_linear}


def _input_gradient(grad_out: torch.Tensor, values: torch.Tensor, layer: RandomMask, path: str):
    """``grad_out (W0 + delta)`` as stored in (out, in) terms, on the path the forward took."""
    if path == "inplace":
        with delta_written_in(layer, values) as weight:
            weight = weight.to(grad_out.dtype)
            return grad_out @ (weight.t() if layer.rmask_transposed else weight)
    if path == "sparse":
        w0 = layer.base_layer.weight.detach().to(grad_out.dtype)
        grad_x = grad_out @ (w0.t() if layer.rmask_transposed else w0)
        with _stage("rmask.delta"):
            return add_sparse_product(grad_x, grad_out, values, layer.rmask_rows, layer.rmask_cols)
    with _stage("rmask.delta"):
        weight = effective_weight(layer, values, grad_out.dtype)
    return grad_out @ (weight.t() if layer.rmask_transposed else weight)


class _MaskedLinearFunction(torch.autograd.Function):
    """The layer on either path; backward takes the same path and samples the value gradient."""

    @staticmethod
    def forward(ctx, x, values, bias, layer, dtype, path):
        ctx.layer, ctx.path = layer, path
        ctx.save_for_backward(x, values)
        return LINEARS[path](x, values, bias, layer, dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            with _stage("rmask.input_grad"):
                grad_x = _input_gradient(grad_out, values, layer, ctx.path)
        if ctx.needs_input_grad[1]:
            with _stage("rmask.value_grad"):
                grad_values = value_gradient(grad_out, x, layer)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).float().sum(0).to(grad_out.dtype)
        return grad_x, grad_values, grad_bias, None, None, None


class RandomMask(nn.Module):
    """One adapter's mask on one base layer: what the kernels read, as non-persistent buffers (rebuilt from
    the seed, never saved) and plain attributes.

    ``flat`` holds sorted row-major indices into the (out, in) matrix; ``density`` is their share of it;
    ``backend`` (``torch``, ``numba`` or ``spops``) computes the sampled value gradient; ``path`` (``auto``,
    ``dense``, ``sparse`` or ``inplace``, see the module docstring) applies the delta. ``base_layer`` is the
    owning layer's base layer, held as a plain reference (the layer owns it, so it is not registered twice).
    ``weight_shared``: another module uses the same base weight, so ``auto`` never writes into it.
    """

    def __init__(self, base_layer: nn.Module, flat: torch.Tensor, density: float, backend: str = "torch",
                 path: str = "auto", weight_shared: bool = False):
        super().__init__()
        self.rmask_weight_shared = weight_shared
        if path not in PATHS:
            raise RmaskError(f"unknown path '{path}'; choose one of {', '.join(PATHS)}")
        object.__setattr__(self, "base_layer", base_layer)
        rows_n, cols_n = out_in_shape(base_layer)
        device = base_layer.weight.device
        flat = flat.to(device)
        rows, cols = flat // cols_n, flat % cols_n
        self.rmask_shape = (rows_n, cols_n)
        self.rmask_transposed = is_conv1d(base_layer)
        self.rmask_density = density
        self.rmask_backend = backend
        self.rmask_path = path
        self.register_buffer("rmask_flat", cols * rows_n + rows if self.rmask_transposed else flat, persistent=False)
        self.register_buffer("rmask_rows", rows, persistent=False)
        self.register_buffer("rmask_cols", cols, persistent=False)
        crow = torch.zeros(rows_n + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.bincount(rows, minlength=rows_n).cumsum(0)
        self.register_buffer("rmask_crow", crow, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight."""
        return self.base_layer.weight

    @property
    def index(self) -> torch.Tensor:
        """The masked entries as sorted row-major indices into the (out, in) matrix (what it was made from)."""
        return self.rmask_rows * self.rmask_shape[1] + self.rmask_cols

    def path_for(self, rows: int, dtype: torch.dtype) -> str:
        """The path a call on ``rows`` input rows computing in ``dtype`` takes."""
        return choose_path(self, rows, dtype) if self.rmask_path == "auto" else self.rmask_path

    def uses_sparse_path(self, rows: int, dtype: torch.dtype) -> bool:
        """Whether a call on ``rows`` input rows computing in ``dtype`` takes the sparse path."""
        return self.path_for(rows, dtype) == "sparse"

    def extra_repr(self) -> str:
        return (f"entries={self.rmask_flat.numel()}, density={self.rmask_density:.3g}, "
                f"backend={self.rmask_backend}, path={self.rmask_path}")


def masked_linear(x: torch.Tensor, mask: RandomMask, values: torch.Tensor) -> torch.Tensor:
    """``x (W0 + delta)^T + b``, the delta ``values`` at ``mask``'s entries, on the path the mask picks."""
    dtype = compute_dtype(x, mask.weight)
    bias = mask.base_layer.bias
    bias = bias.to(dtype) if bias is not None else None
    x = x.to(dtype)
    path = mask.path_for(x.numel() // x.shape[-1], dtype)
    with torch.autocast(x.device.type, enabled=False), _stage("rmask.forward"):
        if _plain_autograd:
            return dense_linear(x, values, bias, mask, dtype)
        if not torch.is_grad_enabled():
            return LINEARS[path](x, values, bias, mask, dtype)
        return _MaskedLinearFunction.apply(x, values, bias, mask, dtype, path)
