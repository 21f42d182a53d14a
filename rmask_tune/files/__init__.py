"""The files rmask-tune reads back, one schema each (law.json, sweep exports, sweep.json; the sweep file's own
lives in ``rmask_tune.sweep.schema``), and how they are written (``atomic``).

``validated`` turns the first problem pydantic finds into one line that names the file and the field. The
number types reject NaN and infinities (JSON as Python writes it allows them) and text where a number belongs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rmask_tune.errors import RmaskError

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Ratio = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)]
Count = Annotated[int, Field(strict=True, ge=0)]

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """A part of a file: the fields rmask-tune reads are checked, anything else is kept as it is."""

    model_config = ConfigDict(extra="allow")


def field_path(loc: tuple) -> str:
    """``('shared', 'offsets', 2)`` as ``shared.offsets[2]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validated(schema: type[T], data: object, path: str | Path, what: str) -> T:
    """``data`` (read from ``path``, a ``what`` such as "law file") as ``schema``, or one RmaskError line naming
    the file and the first field that is wrong."""
    if not isinstance(data, dict):
        raise RmaskError(f"{what} {path} is not a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise RmaskError(f"{what} {path}: {problem(error)}") from None


def problem(error: ValidationError) -> str:
    """The first problem of a ``ValidationError`` in a few words: ``field: message, got value``."""
    first = error.errors()[0]
    loc = tuple(part for part in first["loc"] if not (isinstance(part, str) and part.startswith("function-")))
    message = first["msg"][0].lower() + first["msg"][1:]
    value = first.get("input")
    if first["type"] == "missing":
        message = "is missing"
    elif first["type"] not in ("value_error", "assertion_error") and not isinstance(value, (dict, list)):
        shown = repr(value)
        message += f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    elif first["type"] == "value_error":
        message = str((first.get("ctx") or {}).get("error", message))
    return f"{field_path(loc) or 'top level'}: {message}"
