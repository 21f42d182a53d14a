"""A linear layer with sparse trainable deltas: merged effective weight, sparse value gradient.

The layer's own ``weight`` stays frozen and always holds ``W0 + delta`` at the masked entries, so the
forward pass costs what the frozen layer costs. The trainable state is ``rmask_values`` (fp32, one per
masked entry); the pretrained entries under the mask are kept in ``rmask_base`` so that the effective
weight is recomputed from them (never accumulated) whenever the values change.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

# Above this density a dense weight gradient followed by a gather beats the sampled product;
# below GATHER_MAX_WORK (rows x masked entries) a plain gather of the two factors is fastest.
DENSE_GRAD_DENSITY = 0.1
GATHER_MAX_WORK = 1 << 18


def value_gradient(grad_out: torch.Tensor, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """d loss / d values: (grad_out^T x) at the masked entries only, in fp32."""
    g = grad_out.reshape(-1, grad_out.shape[-1])
    a = x.reshape(-1, x.shape[-1])
    flat, k = layer.rmask_flat, layer.rmask_flat.numel()
    if layer.rmask_density >= DENSE_GRAD_DENSITY:
        return (g.t() @ a).reshape(-1)[flat].float()
    if g.shape[0] * k <= GATHER_MAX_WORK:
        return (g[:, layer.rmask_rows].float() * a[:, layer.rmask_cols].float()).sum(0)
    if g.device.type == "cpu" and g.dtype not in (torch.float32, torch.float64):
        g, a = g.float(), a.float()
    pattern = torch.sparse_csr_tensor(
        layer.rmask_crow, layer.rmask_cols, torch.zeros(k, dtype=g.dtype, device=g.device), layer.weight.shape
    )
    return torch.sparse.sampled_addmm(pattern, g.t(), a, beta=0.0).values().float()


class _MaskedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return F.linear(x, layer.weight, layer.bias)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_out @ layer.weight if ctx.needs_input_grad[0] else None
        grad_values = value_gradient(grad_out, x, layer) if ctx.needs_input_grad[1] else None
        return grad_x, grad_values, None


@torch.no_grad()
def sync_weight(layer: nn.Linear) -> None:
    """Write ``W0 + values`` into the masked entries of the layer's weight (from the stored W0)."""
    merged = (layer.rmask_base.float() + layer.rmask_values).to(layer.weight.dtype)
    layer.weight.view(-1)[layer.rmask_flat] = merged
    layer.rmask_synced_version = layer.rmask_values._version


def _masked_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # Optimizers update parameters in place, which bumps their version counter: resync only then.
    if self.rmask_values._version != self.rmask_synced_version:
        sync_weight(self)
    if torch.is_grad_enabled() and self.rmask_values.requires_grad:
        return _MaskedLinearFunction.apply(x, self.rmask_values, self)
    return F.linear(x, self.weight, self.bias)


def attach(layer: nn.Linear, flat: torch.Tensor, density: float) -> None:
    """Make ``layer`` carry sparse trainable deltas at the sorted flat indices ``flat`` (start at zero)."""
    rows_n, cols_n = layer.weight.shape
    device = layer.weight.device
    flat = flat.to(device)
    rows, cols = flat // cols_n, flat % cols_n
    layer.weight.requires_grad_(False)
    layer.register_buffer("rmask_flat", flat, persistent=False)
    layer.register_buffer("rmask_rows", rows, persistent=False)
    layer.register_buffer("rmask_cols", cols, persistent=False)
    crow = torch.zeros(rows_n + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.bincount(rows, minlength=rows_n).cumsum(0)
    layer.register_buffer("rmask_crow", crow, persistent=False)
    layer.register_buffer("rmask_base", layer.weight.detach().reshape(-1)[flat].clone(), persistent=False)
    layer.rmask_values = nn.Parameter(torch.zeros(flat.numel(), dtype=torch.float32, device=device))
    layer.rmask_density = density
    layer.rmask_synced_version = layer.rmask_values._version
    layer.forward = types.MethodType(_masked_forward, layer)


def detach(layer: nn.Linear, merge: bool) -> None:
    """Remove the sparse deltas; ``merge`` keeps ``W0 + delta`` in the weight, otherwise W0 is restored."""
    with torch.no_grad():
        if merge:
            sync_weight(layer)
        else:
            layer.weight.view(-1)[layer.rmask_flat] = layer.rmask_base
    for name in ("rmask_flat", "rmask_rows", "rmask_cols", "rmask_crow", "rmask_base"):
        delattr(layer, name)
    del layer.rmask_values, layer.rmask_density, layer.rmask_synced_version, layer.forward


def is_masked(module: nn.Module) -> bool:
    """True for a layer that carries Random Masking deltas."""
    return hasattr(module, "rmask_values")
