"""Writing so that a crash leaves either the old file (or folder) or the new one, never a part of one."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from rmask_tune.errors import RmaskError


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` through a temporary sibling renamed into place (file mode from the umask)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict, indent: int | None = 1) -> None:
    """Write ``data`` as JSON; non-finite floats become null (strict JSON has no NaN)."""
    write_atomic(path, (json.dumps(finite(data), indent=indent, allow_nan=False) + "\n").encode())


def finite(value):
    """``value`` with NaN and infinities replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work, a ``folder`` (or the nearest existing folder above it) this process cannot write."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RmaskError(f"{what} {folder}: {existing} is not a folder")
    probe = existing / f".rmask-write-check-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
    except OSError as error:
        raise RmaskError(f"{what} {folder} is not writable ({error.strerror or error})") from None
    probe.unlink()


def replace_folder(folder: Path, files: dict[str, bytes], keep: Callable[[Path], bool] = lambda entry: False) -> None:
    """Make ``folder`` hold ``files`` (name -> bytes) and those of its own entries that ``keep`` accepts (copied
    over, folders too): the new folder is written beside it, then swapped in by renames, so a crash leaves the
    old folder or the new one."""
    folder = Path(folder).resolve()
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    new, old = parent / f".{folder.name}.{tag}.new", parent / f".{folder.name}.{tag}.old"
    try:
        new.mkdir()
        for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
            if entry.name not in files and keep(entry):
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        for name, data in files.items():
            (new / name).write_bytes(data)
        if folder.exists():
            os.replace(folder, old)
        os.replace(new, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
