"""What a trial leaves behind: metrics.json, examples.json and the trained adapter, and its peak-memory measurement."""

from __future__ import annotations

import os
import resource
import shutil
import sys
from pathlib import Path

import torch

from rmask_tune.errors import RmaskError
from rmask_tune.files.atomic import check_writable, write_atomic, write_json_atomic
from rmask_tune.tasks.results import EXAMPLES_FILE, ExampleLog

# Every file or folder a trial writes into its output folder (replaced by an --overwrite run).
OUTPUTS = ("metrics.json", EXAMPLES_FILE, "adapter.safetensors", "trainable.safetensors", "adapter")


def check_output_dir(path: str | os.PathLike | None, overwrite: bool) -> Path | None:
    """The output folder, refused when it already holds something and ``overwrite`` is off."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RmaskError(f"output {path} exists and is not a folder; choose another --output")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RmaskError(f"output folder {path} exists; pass --overwrite or choose another --output")
    check_writable(path, "output folder")  # before any training, not after it
    return path


def write_outputs(trial, result: dict, path: Path, examples: ExampleLog) -> None:
    """Save the trained state, the per-example results (examples.json) and metrics.json (written last,
    atomically) into ``path``.

    The previous run's outputs are removed only now, when the new ones are ready to take their place.
    """
    path.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        old = path / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    result["artifacts"], result["artifacts_note"] = save_trained_state(trial, path, result["best_epoch"])
    write_json_atomic(path / EXAMPLES_FILE, examples.to_dict(), indent=None)
    write_json_atomic(path / "metrics.json", result)


def save_trained_state(trial, path: Path, best_epoch: int | None) -> tuple[list[str], str | None]:
    """The small trained state (the best epoch's): Random Masking, peft or AdapterHub adapter, other trainable tensors.

    Returns the names written and a note on what was deliberately not saved.
    """
    from safetensors.torch import save

    from rmask_tune.masking import masked_layers, save_adapter

    method = trial.config.method
    if method == "none":
        return [], "zero-shot: nothing was trained"
    if best_epoch is None:
        return [], "diverged before any good epoch: nothing saved"
    if method == "full":
        return [], "full fine-tuning: the weights are as large as the model and are not saved"
    model = trial.accelerator.unwrap_model(trial.model)
    written = []
    masked = bool(masked_layers(model))  # peft layers injected into the model itself: its head is not in the adapter
    if masked:
        save_adapter(model, path / "adapter")
        written.append("adapter")
    is_peft = hasattr(model, "peft_config") and not masked
    if is_peft:
        model.save_pretrained(path / "adapter")
        written.append("adapter")
    is_adapterhub = hasattr(model, "adapters_config")  # method adapter: saved in AdapterHub's own format
    if is_adapterhub:
        from rmask_tune.methods.adapter_method import ADAPTER_NAME

        model.save_adapter(str(path / "adapter"), ADAPTER_NAME, with_head=False, use_safetensors=True)
        written.append("adapter")
    # Trainable tensors no adapter format covers: BitFit's biases, a classification head trained alongside.
    by_library = is_peft or is_adapterhub
    extra = {
        name: param.detach().float().contiguous().cpu()
        for name, param in model.named_parameters()
        if param.requires_grad and ".rmask_values." not in name and (not by_library or name in trial.head_params)
    }
    if extra:
        write_atomic(path / "trainable.safetensors", save(extra))
        written.append("trainable.safetensors")
    return written, None


class PeakMemory:
    """Peak memory since construction: the CUDA allocator's peak on GPU, else the growth of peak RSS.

    ``kind`` names which one. On CPU the process's peak resident set is a high-water mark: a second
    trial in the same process measures only what it adds above the first one's peak.
    """

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.kind, self.start = "cuda_max_memory_allocated", 0
        else:
            self.kind, self.start = "cpu_peak_rss_increase", _peak_rss_bytes()

    def peak(self) -> int:
        """Bytes at the peak so far."""
        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return _peak_rss_bytes() - self.start


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports kilobytes
