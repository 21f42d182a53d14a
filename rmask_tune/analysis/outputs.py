"""Inputs and outputs shared by the analysis commands: ratio lists and write-once output folders."""

from __future__ import annotations

import json
from pathlib import Path

from rmask_tune.errors import RmaskError


def parse_ratios(text: str) -> list[float]:
    """``"1e-2,1e-3"`` -> ``[0.01, 0.001]``; each ratio must lie in (0, 1]."""
    ratios = []
    for item in text.split(","):
        try:
            ratio = float(item)
        except ValueError:
            raise RmaskError(f"ratio '{item.strip()}' is not a number (give a comma-separated list)") from None
        if not 0 < ratio <= 1:
            raise RmaskError(f"ratio {item.strip()} is not in (0, 1]")
        ratios.append(ratio)
    return ratios


def output_paths(out: str | Path, names: list[str]) -> list[Path]:
    """The paths ``out/<name>``, creating ``out``; refuses to overwrite any file already there."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise RmaskError(f"--out {folder} exists and is not a folder")
    paths = [folder / name for name in names]
    for path in paths:
        if path.exists():
            raise RmaskError(f"{path} already exists; refusing to overwrite it (choose another --out)")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=1) + "\n")
