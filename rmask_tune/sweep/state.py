"""``sweep.json``: what a sweep started with, so ``--resume`` finds its runs and checks that the file is unchanged."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.files import validated
from rmask_tune.files.atomic import write_atomic
from rmask_tune.files.sweep_state import STATE_FORMAT, SweepStateFile
from rmask_tune.sweep.plan import SweepSpace


@dataclass
class SweepState:
    """``sweep.json``: the sweep's id and what it started with, so --resume finds its runs and checks the file;
    ``done``: the grid's trials --skip-done left out, which a resumed sweep leaves out too."""

    sweep_id: str
    name: str
    source: str
    fingerprint: dict
    tracking_uri: str
    experiment: str
    done: list[dict] = field(default_factory=list)

    @classmethod
    def new(cls, space: SweepSpace) -> SweepState:
        """A new sweep's state; a storage folder that already holds a sweep is refused (nothing is written)."""
        if (space.storage / "sweep.json").exists():
            raise RmaskError(
                f"{space.storage} already holds sweep '{space.name}'; add --resume to continue it, or set another storage_path"
            )
        return cls(uuid.uuid4().hex[:12], space.name, str(space.source), space.fingerprint(), space.tracking_uri,
                   space.experiment_name, list(space.done))

    @classmethod
    def load(cls, space: SweepSpace) -> SweepState:
        """The state of the sweep --resume continues; the file must still describe the same trials."""
        path = space.storage / "sweep.json"
        if not path.is_file():
            raise RmaskError(f"nothing to resume: {space.storage} holds no sweep (no sweep.json)")
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise RmaskError(f"cannot resume: sweep state {path} is damaged ({error}); start the sweep again with "
                             "another storage_path") from None
        validated(SweepStateFile, saved, path, "cannot resume: sweep state")
        saved.pop("format")
        state = cls(**saved)
        section = space.changed_section(state.fingerprint)
        if section is not None:
            raise RmaskError(
                f"the sweep file's '{section}' changed since the sweep started; --resume continues the sweep as it began "
                "(restore the file, or start a new sweep with another storage_path)"
            )
        return state

    def forget(self, storage: Path, tracker) -> None:
        """Undo a start that ran no trial: sweep.json, Tune's folder and the parent run go (best effort)."""
        (storage / "sweep.json").unlink(missing_ok=True)
        shutil.rmtree(storage / "tune", ignore_errors=True)
        shutil.rmtree(storage / "trials", ignore_errors=True)
        try:
            tracker.discard()
        except Exception:  # noqa: BLE001 - the store may be what failed; sweep.json is what blocks a restart
            pass

    def save(self, storage: Path) -> None:
        storage.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": STATE_FORMAT, **self.__dict__}, indent=1, allow_nan=False) + "\n"
        write_atomic(storage / "sweep.json", text.encode())
