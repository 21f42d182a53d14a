"""A linear layer with sparse trainable deltas: merged effective weight, sparse value gradient.

The layer's own ``weight`` stays frozen and always holds ``W0 + delta`` at the masked entries, so the
forward pass costs what the frozen layer costs. The trainable state is ``rmask_values`` (fp32, one per
masked entry); the pretrained entries under the mask are kept in ``rmask_base`` so that the effective
weight is recomputed from them (never accumulated) whenever the values change.

Both ``nn.Linear`` (``y = x W^T + b``, weight stored (out, in)) and HF's ``Conv1D`` (``y = x W + b``,
weight stored (in, out)) are supported. Masks, ``rmask_rows`` / ``rmask_cols`` and the CSR pattern are
in (out, in) terms for both; ``rmask_flat`` indexes the weight as stored.
"""

from __future__ import annotations

import types
import warnings

import torch
from torch import nn

from rmask_tune.masking.backends import spops_sampled_product
from rmask_tune.masking.targets import is_conv1d, out_in_shape

# Above this density a dense weight gradient followed by a gather beats the sampled product;
# below GATHER_MAX_WORK (rows x masked entries) a plain gather of the two factors is fastest.
DENSE_GRAD_DENSITY = 0.1
GATHER_MAX_WORK = 1 << 18


def value_gradient(grad_out: torch.Tensor, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
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
    if g.device.type == "cpu" and g.dtype not in (torch.float32, torch.float64):
        g, a = g.float(), a.float()
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on first use; the pattern is ours and valid
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        pattern = torch.sparse_csr_tensor(
            layer.rmask_crow, layer.rmask_cols, torch.zeros(k, dtype=g.dtype, device=g.device), out_in_shape(layer),
            check_invariants=False,
        )
    return torch.sparse.sampled_addmm(pattern, g.t(), a, beta=0.0).values().float()


def _frozen_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's own class forward with its current (merged) weight."""
    return type(layer).forward(layer, x)


class _MaskedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return _frozen_forward(layer, x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        weight = layer.weight.t() if layer.rmask_transposed else layer.weight  # (out, in)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grad_values = value_gradient(grad_out, x, layer) if ctx.needs_input_grad[1] else None
        return grad_x, grad_values, None


@torch.no_grad()
def sync_weight(layer: nn.Module) -> None:
    """Write ``W0 + values`` into the masked entries of the layer's weight (from the stored W0)."""
    merged = (layer.rmask_base.float() + layer.rmask_values).to(layer.weight.dtype)
    layer.weight.view(-1)[layer.rmask_flat] = merged
    layer.rmask_synced_version = layer.rmask_values._version


def _masked_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Optimizers update parameters in place, which bumps their version counter: resync only then.
    if self.rmask_values._version != self.rmask_synced_version:
        sync_weight(self)
    if torch.is_grad_enabled() and self.rmask_values.requires_grad:
        return _MaskedLinearFunction.apply(x, self.rmask_values, self)
    return _frozen_forward(self, x)


def attach(layer: nn.Module, flat: torch.Tensor, density: float, backend: str = "torch") -> None:
    """Make ``layer`` carry sparse trainable deltas (starting at zero) at ``flat``.

    ``flat`` holds sorted row-major indices into the (out, in) matrix; ``backend`` (``torch`` or
    ``spops``) computes the sampled value gradient.
    """
    rows_n, cols_n = out_in_shape(layer)
    device = layer.weight.device
    flat = flat.to(device)
    rows, cols = flat // cols_n, flat % cols_n
    layer.rmask_transposed = is_conv1d(layer)
    layer.weight.requires_grad_(False)
    layer.register_buffer("rmask_flat", cols * rows_n + rows if layer.rmask_transposed else flat, persistent=False)
    layer.register_buffer("rmask_rows", rows, persistent=False)
    layer.register_buffer("rmask_cols", cols, persistent=False)
    crow = torch.zeros(rows_n + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.bincount(rows, minlength=rows_n).cumsum(0)
    layer.register_buffer("rmask_crow", crow, persistent=False)
    layer.register_buffer("rmask_base", layer.weight.detach().reshape(-1)[layer.rmask_flat].clone(), persistent=False)
    layer.rmask_values = nn.Parameter(torch.zeros(flat.numel(), dtype=torch.float32, device=device))
    layer.rmask_density = density
    layer.rmask_backend = backend
    layer.rmask_synced_version = layer.rmask_values._version
    layer.forward = types.MethodType(_masked_forward, layer)


def detach(layer: nn.Module, merge: bool) -> None:
    """Remove the sparse deltas; ``merge`` keeps ``W0 + delta`` in the weight, otherwise W0 is restored."""
    with torch.no_grad():
        if merge:
            sync_weight(layer)
        else:
            layer.weight.view(-1)[layer.rmask_flat] = layer.rmask_base
    for name in ("rmask_flat", "rmask_rows", "rmask_cols", "rmask_crow", "rmask_base"):
        delattr(layer, name)
    del layer.rmask_values, layer.rmask_density, layer.rmask_backend, layer.rmask_transposed
    del layer.rmask_synced_version, layer.forward


def is_masked(module: nn.Module) -> bool:
    """True for a layer that carries Random Masking deltas."""
    return hasattr(module, "rmask_values")
