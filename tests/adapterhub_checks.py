"""Run inside the AdapterHub side environment (transformers 4.57) by tests/test_adapter_baseline.py.

Usage: python tests/adapterhub_checks.py DATA_DIR OUT_DIR MODEL... It trains each MODEL with the
``adapter`` method through the project's trainer, saves the result with the trainer's own saving code,
reloads the adapter into a fresh model with the library, and prints the measured facts as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(data_dir: str, out_dir: str, *models: str) -> dict:
    import adapters
    import transformers

    from rmask_tune.errors import RmaskError
    from rmask_tune.methods import prepare_method
    from rmask_tune.models import tiny_model

    try:
        prepare_method(tiny_model("tiny-llama"), "adapter", config="lora")
        bad_config_error = None
    except RmaskError as error:
        bad_config_error = str(error)
    facts = {name: train_save_reload(data_dir, Path(out_dir) / name, name) for name in models}
    versions = {"transformers": transformers.__version__, "adapters": adapters.__version__}
    return {**versions, "bad_config_error": bad_config_error, "models": facts}


def train_save_reload(data_dir: str, out: Path, model_name: str) -> dict:
    """Facts of one model trained with the adapter method, saved, and reloaded into a fresh model."""
    from safetensors.torch import load_file

    from rmask_tune.methods.adapter_method import ADAPTER_NAME, init_adapters
    from rmask_tune.trainer import TrialConfig, prepare_trial, train_trial
    from rmask_tune.trainer.output import save_trained_state

    task = "SST-2" if model_name == "tiny-llama" else "RTE"
    settings = dict(
        model=model_name, task=task, tokenizer="minilm-l6", data_dir=data_dir, lr=1e-2, epochs=2, batch_size=4,
        train_examples=8, dev_examples=4, test_examples=4, quiet=True,
    )  # fmt: skip
    trial = prepare_trial(TrialConfig(method="adapter", **settings))
    plain = prepare_trial(TrialConfig(method="none", **settings)).model  # the same base weights, no adapter
    probe = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))

    def logits(model):
        model.eval()
        with torch.no_grad():
            return model(input_ids=probe).logits

    starts_at_base = torch.equal(logits(trial.model), logits(plain))
    before = {name: t.clone() for name, t in trial.model.state_dict().items()}
    result = train_trial(trial)
    after = trial.model.state_dict()
    changed = sorted(name for name, t in after.items() if not torch.equal(t, before[name]))
    adapter_keys = sorted(name for name in after if f".{ADAPTER_NAME}." in name)
    base_untouched = all(torch.equal(t, plain.state_dict()[n]) for n, t in after.items() if n in plain.state_dict()
                         and n not in trial.head_params)  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    artifacts, _ = save_trained_state(trial, out, result["best_epoch"])
    init_adapters(plain)
    loaded = plain.load_adapter(str(out / "adapter"), set_active=True, use_safetensors=True)
    if (out / "trainable.safetensors").exists():  # the classification head trained next to the adapter
        plain.load_state_dict(load_file(out / "trainable.safetensors"), strict=False)
    reloaded_equal = torch.equal(logits(trial.model), logits(plain))

    modules = [m for layer in trial.model.get_adapter(ADAPTER_NAME).values() for m in layer.values()]
    return {
        "starts_at_base": starts_at_base,
        "train_losses": [epoch["train_loss"] for epoch in result["epochs"]],
        "status": result["status"],
        "changed": changed,
        "adapter_keys": adapter_keys,
        "head_params": trial.head_params,
        "base_untouched": base_untouched,
        "setup_trainable": trial.setup.trainable_params,
        "trial_trainable": trial.trainable_params,
        "head_size": sum(after[name].numel() for name in trial.head_params),
        "details": trial.setup.details,
        "library_count": sum(p.numel() for m in modules for p in m.parameters()),
        "widths": [m.adapter_down[0].out_features for m in modules],
        "adapter_modules": len(modules),
        "layers": trial.model.config.num_hidden_layers,
        "artifacts": artifacts,
        "saved_files": sorted(p.name for p in (out / "adapter").iterdir()),
        "loaded_as": loaded,
        "reloaded_equal": reloaded_equal,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
