"""``probes.json``: the Hessian probe's measurements (top eigenvalue at initialization per model, task and ratio)
kept as data of their own, beside a report's law.json.

``analyze calibrate`` adds to it and ``report`` reads it, so a re-run report calibrates ``lr = c / lambda_max``
against its own optima instead of losing the calibration. An entry is one (model, task, ratio) probed with one
set of probe settings (``ProbeSettings.record()``); probing it again with the same settings replaces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.files.atomic import write_atomic
from rmask_tune.law_record import LawPoint

PROBES_FILE = "probes.json"
PROBES_FORMAT = "rmask-tune probes v1"
# A sweep cell's settings that shape its training loss, hence the Hessian a probe of the cell must measure: the
# report stores them with each optimum in law.json (``loss_settings``) and ``analyze calibrate`` probes with them.
LOSS_SETTINGS = ("objective", "scoring", "max_length", "targets", "head", "train_head", "tokenizer")
_FIELDS = ("model", "task", "ratio", "lambda_max", "lambda_max_repeats", "step_range", "probe")


def loss_settings(params: dict[str, str]) -> dict:
    """The ``LOSS_SETTINGS`` a trial's MLflow params give (as ``sweep.callbacks.param_text`` wrote them), those
    left unset (None) omitted."""
    settings = {}
    for key in LOSS_SETTINGS:
        text = params.get(key)
        if text is None or text in ("None", "none", ""):
            continue
        if text in ("True", "False"):
            settings[key] = text == "True"
            continue
        try:
            settings[key] = json.loads(text)
        except ValueError:
            settings[key] = text
    return settings


def probe_loss_settings(points: list[LawPoint], model: str, task: str) -> tuple[dict, str]:
    """The ``LOSS_SETTINGS`` a probe of ``model`` on ``task`` should use, from law.json's optimum ``points``, and
    which points gave them: those of this model and task, else this model, else this task, else all points.

    Raises when the points chosen disagree, since the Hessian depends on the loss."""
    groups = [
        (f"{model} on {task}", lambda p: p.model == model and p.task == task),
        (model, lambda p: p.model == model),
        (task, lambda p: p.task == task),
        ("all", lambda p: True),
    ]  # fmt: skip
    for name, chosen in groups:
        found = [p.loss_settings or {} for p in points if chosen(p)]
        if not found:
            continue
        distinct = {json.dumps(s, sort_keys=True) for s in found}
        if len(distinct) > 1:
            raise RmaskError(f"the law's points ({name}) were trained with different losses "
                             f"({'; '.join(sorted(distinct))}); give the probe's loss explicitly")
        return found[0], f"the law's points ({name})"
    return {}, "the trainer's defaults"


def probe_entry(pair: dict, settings_record: dict, loss_settings: dict | None = None) -> dict:
    """The probes.json entry of a calibration pair (``predict.calibration_pair``), measured with ``settings_record``
    on the training loss ``loss_settings`` chose (recorded when given)."""
    entry = {**{k: pair[k] for k in _FIELDS[:-1]}, "probe": settings_record}
    return {**entry, "loss_settings": loss_settings} if loss_settings else entry


def _cell(entry: dict) -> tuple:
    return entry["model"], entry["task"], entry["ratio"]


def _identity(entry: dict) -> tuple:
    return *_cell(entry), json.dumps(entry["probe"], sort_keys=True)


def merge_probes(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with ``new`` added; an old entry of the same cell and probe settings is replaced (new ones last)."""
    replaced = {_identity(e) for e in new}
    return [e for e in old if _identity(e) not in replaced] + list(new)


def load_probes(path: str | Path) -> list[dict]:
    """The entries of a probes.json, checked."""
    path = Path(path)
    if not path.is_file():
        raise RmaskError(f"probes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RmaskError(f"probes file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != PROBES_FORMAT or not isinstance(data.get("probes"), list):
        raise RmaskError(f"{path} is not an rmask-tune probes file (expected format {PROBES_FORMAT!r})")
    for entry in data["probes"]:
        missing = [k for k in _FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise RmaskError(f"{path}: a probe entry lacks {', '.join(missing)}")
        repeats = entry["lambda_max_repeats"]
        if not repeats or not all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in repeats):
            raise RmaskError(f"{path}: {' '.join(map(str, _cell(entry)))} has no positive lambda_max per repeat")
    return data["probes"]


def probes_json(entries: list[dict]) -> bytes:
    """The text of a probes file holding ``entries``."""
    return (json.dumps({"format": PROBES_FORMAT, "probes": entries}, indent=1) + "\n").encode()


def save_probes(path: str | Path, entries: list[dict]) -> None:
    write_atomic(Path(path), probes_json(entries))


def add_probes(path: str | Path, entries: list[dict]) -> None:
    """Merge ``entries`` into the probes file at ``path`` (created when absent)."""
    path = Path(path)
    save_probes(path, merge_probes(load_probes(path) if path.exists() else [], entries))


@dataclass
class ProbeMatch:
    """The probes of one probe setting, matched to a law's optima."""

    settings: dict  # ProbeSettings.record() of the chosen probes
    probes: list[dict]  # every probe made with those settings
    at_points: list[tuple[LawPoint, dict]]  # (optimum, its probe)
    without_probe: int  # optima the chosen probes miss
    other_settings: int  # probes made with other settings, not used


def match_probes(probes: list[dict], points: list[LawPoint]) -> ProbeMatch | None:
    """The probes of the setting that covers the most of ``points`` (ties: the setting probed last); None without
    probes. One setting only: ``c`` from a mix of settings would fit none of them."""
    if not probes:
        return None
    wanted = {(p.model, p.task, p.ratio) for p in points}
    score: dict[str, tuple[int, int]] = {}  # settings -> (optima covered, last position)
    for position, entry in enumerate(probes):
        key = json.dumps(entry["probe"], sort_keys=True)
        score[key] = (score.get(key, (0, 0))[0] + (_cell(entry) in wanted), position)
    chosen = max(score, key=score.get)
    mine = [e for e in probes if json.dumps(e["probe"], sort_keys=True) == chosen]
    by_cell = {_cell(e): e for e in mine}
    at_points = [(p, by_cell[cell]) for p in points if (cell := (p.model, p.task, p.ratio)) in by_cell]
    return ProbeMatch(json.loads(chosen), mine, at_points, len(points) - len(at_points), len(probes) - len(mine))
