"""Value-gradient kernels: PyTorch's own, a compiled CPU loop (numba), or, on CUDA, the SDDMM of IST-DASLab's spops.

``auto`` (the default) takes spops on CUDA where it is installed and numba on CPU where it is installed
(``rmask_tune.masking.cpu_kernels``), else PyTorch's.

spops (https://github.com/IST-DASLab/spops, the kernels of the RoSA paper) is installed from source
only. The PyPI package named ``spops`` is an unrelated project; it is told apart by its lack of
``sddmm`` / ``csr_add``. The spops call used is ``spops.sddmm(row_offsets, row_order, col_indices, A, BT,
backend="sputnik")``: ``(A @ BT.T)`` at the CSR pattern's entries, ``row_order`` the rows by descending
entry count; the general-pattern ``sputnik`` kernel suits uniformly random masks.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from rmask_tune.errors import RmaskError
from rmask_tune.masking.cpu_kernels import numba_available

BACKENDS = ("torch", "spops", "numba", "auto")
SPOPS_INSTALL = (
    "install it from source with a CUDA toolkit: pip install git+https://github.com/IST-DASLab/spops "
    "(the PyPI package named 'spops' is an unrelated project)"
)


def load_spops():
    """The IST-DASLab spops module; an RmaskError saying how to install it when it is missing or another one."""
    if importlib.util.find_spec("spops") is None:
        raise RmaskError(f"backend 'spops' needs IST-DASLab's spops kernels, which are not installed; {SPOPS_INSTALL}")
    try:
        spops = importlib.import_module("spops")
    except Exception as error:  # a source build whose compiled extension does not load
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RmaskError(f"spops is installed but does not import ({first}); {SPOPS_INSTALL}") from error
    if not all(callable(getattr(spops, name, None)) for name in ("sddmm", "csr_add")):
        raise RmaskError(
            f"the installed 'spops' ({getattr(spops, '__file__', '?')}) is not IST-DASLab's (no sddmm/csr_add); "
            f"{SPOPS_INSTALL}"
        )
    return spops


def resolve_backend(backend: str, device: torch.device) -> str:
    """``torch``, ``numba`` or ``spops`` for weights on ``device``.

    ``auto`` takes spops where it is installed and the weights are on CUDA, numba where it is installed and
    they are on CPU, else torch; an explicit ``spops`` or ``numba`` that cannot run is an error.
    """
    if backend not in BACKENDS:
        raise RmaskError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    if backend == "numba" or (backend == "auto" and device.type == "cpu"):
        if device.type != "cpu":
            raise RmaskError(f"backend 'numba' runs on CPU only and the target weights are on {device}")
        if numba_available():
            return "numba"
        if backend == "numba":
            raise RmaskError("backend 'numba' needs numba, which is not installed: pip install 'rmask-tune[cpu]'")
        return "torch"
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            load_spops()
        except RmaskError:
            return "torch"
        return "spops"
    load_spops()
    if device.type != "cuda":
        raise RmaskError(
            f"backend 'spops' runs on CUDA only and the target weights are on {device}; "
            "move the model to the GPU before applying Random Masking"
        )
    return "spops"


def spops_sampled_product(crow: torch.Tensor, cols: torch.Tensor, left: torch.Tensor, right: torch.Tensor):
    """``(left^T @ right)`` at the CSR pattern (``crow``, ``cols``) with spops' sputnik SDDMM, in fp32."""
    order = torch.argsort(-torch.diff(crow)).int()
    sddmm = importlib.import_module("spops").sddmm  # checked by resolve_backend when the mask was applied
    out = sddmm(crow.int(), order, cols.int(), left.t().contiguous(), right.t().contiguous(), backend="sputnik")
    return out.float()
