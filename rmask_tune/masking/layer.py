"""``RandomMaskingLinear``: a wrapper that owns a frozen linear layer and trains a sparse delta on it.

The wrapped ``base_layer`` (``nn.Linear``, or HF's ``Conv1D`` whose weight is stored (in, out)) is
never written to: it keeps ``W0``. The trainable state is ``rmask_values``, one fp32 master value per
masked entry. Every forward builds the effective weight ``W0 + delta`` from the values in the compute
dtype (the autocast dtype when autocast is on, else the base weight's) and runs one matmul with it, so:

- any optimizer trains it (fused or foreach AdamW, SGD, Adafactor, 8-bit optimizers) and so do direct
  edits of the values (``.data``, ``copy_``, ``load_state_dict``): nothing is cached between calls;
- it is safe under ``torch.autocast`` (bf16, fp16) and on fp32, bf16 or fp16 base weights, with
  gradients and outputs in the dtypes autocast would give a plain linear layer;
- the value gradient ``(grad_out^T x)`` is computed only at the masked entries (a gather of the two
  factors for very few entries, a sampled product on a CSR pattern at low density, a dense product then
  a gather at high density), always accumulated in fp32.

Masks, ``rmask_rows`` / ``rmask_cols``, the CSR pattern and ``rmask_shape`` are in (out, in) terms for
both layer kinds; ``rmask_flat`` indexes the base weight as stored.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from rmask_tune.masking.backends import spops_sampled_product
from rmask_tune.masking.targets import is_conv1d, out_in_shape

# Above this density a dense weight gradient followed by a gather beats the sampled product;
# below GATHER_MAX_WORK (rows x masked entries) a plain gather of the two factors is fastest.
DENSE_GRAD_DENSITY = 0.1
GATHER_MAX_WORK = 1 << 18
# Compute dtypes the sampled product runs in directly; others go through fp32.
_SDDMM_DTYPES = (torch.float32, torch.float64)

_plain_autograd = False


@contextlib.contextmanager
def plain_autograd():
    """Within the block masked layers differentiate through ordinary torch ops instead of their sparse
    autograd Function: slower and dense, but twice differentiable (exact Hessian-vector products)."""
    global _plain_autograd
    saved, _plain_autograd = _plain_autograd, True
    try:
        yield
    finally:
        _plain_autograd = saved


def value_gradient(grad_out: torch.Tensor, x: torch.Tensor, layer: RandomMaskingLinear) -> torch.Tensor:
    """d loss / d values: (grad_out^T x) at the masked (out, in) entries only, in fp32."""
    g = grad_out.reshape(-1, grad_out.shape[-1])
    a = x.reshape(-1, x.shape[-1])
    k = layer.rmask_flat.numel()
    if layer.rmask_density >= DENSE_GRAD_DENSITY:
        return (g.t() @ a)[layer.rmask_rows, layer.rmask_cols].float()
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


def effective_weight(layer: RandomMaskingLinear, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W0 + delta`` as stored by the base layer, in ``dtype``: a new tensor (the base weight is untouched).

    The masked entries are ``W0 + values`` summed in fp32 and rounded once to ``dtype``, so zero values
    give back ``W0`` exactly.
    """
    w0 = layer.base_layer.weight.detach()
    merged = (w0.reshape(-1)[layer.rmask_flat].float() + values).to(dtype)
    return w0.to(dtype).reshape(-1).index_put((layer.rmask_flat,), merged).view_as(w0)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """``x W^T + b`` for a weight stored (out, in), ``x W + b`` for one stored (in, out) (HF Conv1D)."""
    return F.linear(x, weight.t() if transposed else weight, bias)


class _MaskedLinearFunction(torch.autograd.Function):
    """One matmul with the effective weight; backward recomputes it and samples the value gradient."""

    @staticmethod
    def forward(ctx, x, values, bias, layer, dtype):
        ctx.layer, ctx.dtype = layer, dtype
        ctx.save_for_backward(x, values)
        return _linear(x, effective_weight(layer, values, dtype), bias, layer.rmask_transposed)

    @staticmethod
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = effective_weight(layer, values, grad_out.dtype)
            grad_x = grad_out @ (weight.t() if layer.rmask_transposed else weight)
        if ctx.needs_input_grad[1]:
            grad_values = value_gradient(grad_out, x, layer)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).float().sum(0).to(grad_out.dtype)
        return grad_x, grad_values, grad_bias, None, None


class RandomMaskingLinear(nn.Module):
    """A frozen linear-like ``base_layer`` plus trainable fp32 deltas (starting at zero) at ``flat``.

    ``flat`` holds sorted row-major indices into the (out, in) matrix; ``density`` is their share of it;
    ``backend`` (``torch`` or ``spops``) computes the sampled value gradient. ``rmask_info`` is the
    ``MaskingInfo`` that ``apply_random_masking`` made the layer with (how to rebuild the masks).
    """

    rmask_info = None

    def __init__(self, base_layer: nn.Module, flat: torch.Tensor, density: float, backend: str = "torch"):
        super().__init__()
        self.base_layer = base_layer
        base_layer.weight.requires_grad_(False)
        rows_n, cols_n = out_in_shape(base_layer)
        device = base_layer.weight.device
        flat = flat.to(device)
        rows, cols = flat // cols_n, flat % cols_n
        self.rmask_shape = (rows_n, cols_n)
        self.rmask_transposed = is_conv1d(base_layer)
        self.rmask_density = density
        self.rmask_backend = backend
        self.register_buffer("rmask_flat", cols * rows_n + rows if self.rmask_transposed else flat, persistent=False)
        self.register_buffer("rmask_rows", rows, persistent=False)
        self.register_buffer("rmask_cols", cols, persistent=False)
        crow = torch.zeros(rows_n + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.bincount(rows, minlength=rows_n).cumsum(0)
        self.register_buffer("rmask_crow", crow, persistent=False)
        self.rmask_values = nn.Parameter(torch.zeros(flat.numel(), dtype=torch.float32, device=device))

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's (frozen, pretrained) weight."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, self.weight)
        bias = self.bias.to(dtype) if self.bias is not None else None
        x = x.to(dtype)
        device = x.device.type
        with torch.autocast(device, enabled=False):
            if _plain_autograd or not torch.is_grad_enabled():
                return _linear(x, effective_weight(self, self.rmask_values, dtype), bias, self.rmask_transposed)
            return _MaskedLinearFunction.apply(x, self.rmask_values, bias, self, dtype)

    @torch.no_grad()
    def fold_delta(self) -> torch.Tensor:
        """Write ``W0 + delta`` into the base layer's weight (in its own dtype); returns the ``W0`` entries
        it overwrote, for ``unfold_delta``. The forward must not add the delta again while it is folded."""
        weight = self.base_layer.weight
        original = weight.view(-1)[self.rmask_flat].clone()
        weight.copy_(effective_weight(self, self.rmask_values.detach(), weight.dtype))
        return original

    @torch.no_grad()
    def unfold_delta(self, original: torch.Tensor) -> None:
        """Put back the ``W0`` entries ``fold_delta`` overwrote: the base weight is exactly ``W0`` again."""
        self.base_layer.weight.view(-1)[self.rmask_flat] = original

    def merged_base_layer(self) -> nn.Module:
        """The base layer with ``W0 + delta`` written into its weight (in its own dtype); the wrapper is spent."""
        self.fold_delta()
        return self.base_layer

    def extra_repr(self) -> str:
        return f"trainable={self.rmask_values.numel()}, density={self.rmask_density:.3g}, backend={self.rmask_backend}"


def is_masked(module: nn.Module) -> bool:
    """True for a layer that carries Random Masking deltas."""
    return isinstance(module, RandomMaskingLinear)
