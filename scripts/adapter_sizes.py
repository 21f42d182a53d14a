"""Print the saved adapter sizes of Random Masking, SHiRA and LoRA on SmolLM2-135M (offline alias).

Random Masking trains 0.1% of all parameters on the attention q/v projections; SHiRA (random mask)
and LoRA get the rank whose trainable count is nearest to it, and Random Masking is also saved at
exactly their count. Random Masking stores the fp32 values only (indices are rebuilt from the seed);
SHiRA stores its indices with the values; LoRA stores its two factors.

    python scripts/adapter_sizes.py [--ratio 1e-3] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from peft import LoraConfig, ShiraConfig, get_peft_model

from rmask_tune import RandomMaskingConfig
from rmask_tune.masking.targets import linear_modules, out_in_shape, resolve_targets
from rmask_tune.models import load_model


def saved_size(model_name: str, config, folder: Path) -> tuple[int, int]:
    """(trainable count, bytes of adapter_model.safetensors) of ``config`` on a fresh ``model_name``."""
    model = get_peft_model(load_model(model_name), config)
    model.save_pretrained(folder)
    return model.get_nb_trainable_parameters()[0], (folder / "adapter_model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=1e-3)
    args = parser.parse_args()

    base = load_model(args.model)
    linears = linear_modules(base)
    targets = resolve_targets(base, "qv")
    shapes = [out_in_shape(linears[name]) for name in targets]
    per_rank = sum(rows + cols for rows, cols in shapes)  # LoRA's and SHiRA's count per unit of rank
    target_params = sum(rows * cols for rows, cols in shapes)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in targets})
    rank = max(1, round(args.ratio * sum(p.numel() for p in base.parameters()) / per_rank))
    configs = {
        f"Random Masking, ratio {args.ratio:g}": RandomMaskingConfig(ratio=args.ratio, seed=0),
        "Random Masking, the same count": RandomMaskingConfig(density=rank * per_rank / target_params),
        f"SHiRA (random mask), r={rank}": ShiraConfig(r=rank, mask_type="random", random_seed=0, target_modules=leaves),
        f"LoRA, r={rank}": LoraConfig(r=rank, target_modules=leaves),
    }
    print(f"{args.model}, targets {', '.join(leaves)}")
    print(f"{'adapter':<40} {'trainable':>10} {'bytes':>10} {'bytes/value':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, config) in enumerate(configs.items()):
            count, size = saved_size(args.model, config, Path(tmp) / str(index))
            print(f"{label:<40} {count:>10,} {size:>10,} {size / count:>12.2f}")


if __name__ == "__main__":
    main()
