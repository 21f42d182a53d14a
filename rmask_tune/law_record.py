"""What law.json records beside its fits, typed: the optimal-LR points and the cells left out, the held-out
validation, and the Hessian probe's calibration.

Each record reads itself from law.json's JSON (``from_json``, on a file ``rmask_tune.law.load_law`` has checked
against its schema, ``rmask_tune.files.law``) and writes itself back (``to_json``) key for key, so a law.json
keeps its content through a load and a save. An optional field that is None is not written (law.json files from
before it lack the key) unless the JSON it was read from held it as null. Keys rmask-tune does not know are kept
in ``extra`` and written back.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, ClassVar

from rmask_tune.errors import RmaskError


@dataclass(frozen=True)
class _Record:
    """A law.json section: its fields in file order, then ``extra``; ``nulls`` names the optional fields its JSON
    held as null (written back as null)."""

    _WRITE_NONE: ClassVar[frozenset[str]] = frozenset()  # fields written as null rather than left out
    _KEYS: ClassVar[dict[str, str]] = {}  # a field's JSON key where it differs from its name

    nulls: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False, compare=False)

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            if f.name in ("extra", "nulls"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name not in self._WRITE_NONE and f.name not in self.nulls:
                continue
            out[self._KEYS.get(f.name, f.name)] = _plain(value)
        return {**out, **getattr(self, "extra", {})}

    @classmethod
    def from_json(cls, d: dict) -> Any:
        names = {cls._KEYS.get(f.name, f.name): f.name for f in fields(cls)}
        names = {key: name for key, name in names.items() if name not in ("extra", "nulls")}
        values = {names[k]: cls._read(names[k], v) for k, v in d.items() if k in names}
        nulls = frozenset(names[k] for k, v in d.items() if k in names and v is None)
        try:
            return cls(**values, extra={k: v for k, v in d.items() if k not in names}, nulls=nulls)
        except TypeError as e:
            raise RmaskError(f"law.json: a {cls.__name__} entry is malformed ({e})") from None

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        """A field's value from JSON (records and tuples where the field holds one)."""
        return value


def _plain(value: Any) -> Any:
    """A field's value as JSON."""
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class LawPoint(_Record):
    """One cell's optimal LR as the report estimated it (``rmask_tune.resampling.OptimumEstimate``): the law's
    fits are made on these, ``steps`` its training budget. ``se`` is the error of ``log10_lr``; ``interval`` the optimum's 95% interval (LRs);
    ``signal`` the cell's signal test; ``loss_settings`` the training loss it was trained with."""

    model: str | None = None
    task: str | None = None
    ratio: float = 0.0
    steps: int | None = None  # the budget (optimizer steps) the cell trained for; None in law.json from before it
    lr: float | None = None
    log10_lr: float | None = None
    se: float | None = None
    interval: tuple[float, float] | None = None
    estimate: str | None = None
    best_grid_lr: float | None = None
    edge_share: float | None = None
    resampled: str | None = None
    seeds: int | None = None
    grid: tuple[float, ...] | None = None
    signal: dict | None = None  # rmask_tune.resampling.SignalTest.to_dict()
    loss_settings: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pair(self) -> str:
        return f"{self.model}/{self.task}"

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        return tuple(value) if key in ("interval", "grid") and value is not None else value


@dataclass(frozen=True)
class ExcludedCell(_Record):
    """A law-method cell the law's rules left out, and why; ``point`` is its estimate when it has one, ``steps``
    its budget when it has none."""

    model: str | None
    task: str | None
    ratio: float
    reason: str
    point: LawPoint | None = None
    steps: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.point is None:
            budget = {} if self.steps is None else {"steps": self.steps}
            return {"model": self.model, "task": self.task, "ratio": self.ratio, **budget, "reason": self.reason,
                    **self.extra}
        return {**self.point.to_json(), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict) -> ExcludedCell:
        rest = {k: v for k, v in d.items() if k != "reason"}
        if set(rest) <= {"model", "task", "ratio", "steps"}:
            return cls(d.get("model"), d.get("task"), d["ratio"], d["reason"], steps=d.get("steps"))
        point = LawPoint.from_json(rest)
        return cls(point.model, point.task, point.ratio, d["reason"], point, point.steps)


@dataclass(frozen=True)
class HeldOutRow(_Record):
    """One held-out cell scored (``rmask_tune.validation``): the LR predicted for it (from ``source``, JSON key
    ``from``) against its measured curve: distance from the best grid LR in half-decade ``error_steps``, ``regret``
    in points, ``beyond_grid`` when the prediction lies outside the swept LRs; ``in_law`` whether the cell is one
    of the law's points. ``steps`` its budget (None: no budget); ``c`` and ``lambda_max`` for the Hessian
    predictor's rows."""

    _KEYS: ClassVar[dict[str, str]] = {"source": "from"}

    model: str
    task: str
    ratio: float
    _: KW_ONLY
    steps: int | None = None
    source: str | None = None
    c: float | None = None
    lambda_max: float | None = None
    in_law: bool | None = None  # None in law.json from before it
    predicted_lr: float
    best_grid_lr: float
    error_steps: float
    regret: float
    beyond_grid: bool
    extra: dict = field(default_factory=dict)


def _rows(value: list[dict] | None) -> list[HeldOutRow] | None:
    return None if value is None else [HeldOutRow.from_json(row) for row in value]


@dataclass(frozen=True)
class HeldOutStats(_Record):
    """Mean and worst error (grid steps) and regret (points) over held-out cells (``rmask_tune.validation``)."""

    cells: int
    mean_error_steps: float
    max_error_steps: float
    mean_regret: float
    max_regret: float
    beyond_grid: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationSummary(HeldOutStats):
    """A validation's summary: over every held-out cell, and (``law_cells``) over those that are law points
    (None when none is)."""

    _WRITE_NONE: ClassVar[frozenset[str]] = frozenset({"law_cells"})

    law_cells: HeldOutStats | None = None

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        return HeldOutStats.from_json(value) if key == "law_cells" and value is not None else value


@dataclass(frozen=True)
class HessianValidation(_Record):
    """The Hessian predictor ``lr = c / lambda_max`` scored on the probed cells (rows as in ``validation``)."""

    probes: int
    held_out: bool
    rows: list[HeldOutRow]
    within_model_rows: list[HeldOutRow]
    extra: dict = field(default_factory=dict)

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        return _rows(value) if key in ("rows", "within_model_rows") else value


def _summaries(value: dict) -> dict[str, ValidationSummary | None]:
    return {k: None if v is None else ValidationSummary.from_json(v) for k, v in value.items()}


@dataclass(frozen=True)
class Validation(_Record):
    """How far the law's (and the Hessian predictor's) LRs land on held-out cells: the rows per held-out cell
    (``HeldOutRow``), and their summaries by kind (``leave_one_task_out``, ...)."""

    _WRITE_NONE: ClassVar[frozenset[str]] = frozenset({"hessian_predictor"})

    leave_one_task_out: list[HeldOutRow]
    leave_one_ratio_out: list[HeldOutRow]
    summary: dict[str, ValidationSummary | None]
    leave_one_budget_out: list[HeldOutRow] | None = None  # only with optima at two or more budgets
    leave_one_budget_out_budget_ignored: list[HeldOutRow] | None = None  # its baseline: three or more budgets
    hessian_predictor: HessianValidation | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        if key == "summary":
            return _summaries(value)
        if key.startswith("leave_one_"):
            return _rows(value)
        return HessianValidation.from_json(value) if key == "hessian_predictor" and value is not None else value


@dataclass(frozen=True)
class CalibrationPoint(_Record):
    """An optimum the probe's ``c`` was calibrated on (``rmask_tune.analysis.predict.calibration_pair``): its
    ``lr`` and the ``lambda_max`` its probe repeats measured (their geometric mean, each repeat, their spread, the
    finite-difference steps taken; None for exact HVPs), and ``c / lambda_max``'s distance from ``lr`` in grid
    steps, with ``c`` from every point (``error_steps``) and without this one (``loo_error_steps``)."""

    model: str | None = None
    task: str | None = None
    ratio: float | None = None
    _: KW_ONLY
    lr: float
    lambda_max: float
    lambda_max_repeats: list[float] | None = None
    lambda_max_sd: float | None = None
    lambda_max_range: list[float] | None = None
    step_range: list[float] | None = None
    predicted_lr: float | None = None
    error_steps: float | None = None
    loo_error_steps: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeCalibration(_Record):
    """The Hessian probe's constant ``c`` (``lr = c / lambda_max``, ``rmask_tune.analysis.predict``): ``c`` over
    every calibration point, per model, the points' log10 scatter around it, its spread over probe repeats,
    the probe settings it was measured with (``probe``, reused by a prediction) and the points."""

    c: float
    n: int | None = None
    c_by_model: dict[str, float] | None = None
    source: str | None = None
    points_without_probe: int | None = None
    probes_with_other_settings: int | None = None
    log10_sd: float | None = None
    mean_abs_error_steps: float | None = None
    mean_abs_loo_error_steps: float | None = None
    repeats: int | None = None
    c_repeats: list[float] | None = None
    c_sd: float | None = None
    c_range: list[float] | None = None
    probe: dict | None = None
    points: list[CalibrationPoint] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _read(cls, key: str, value: Any) -> Any:
        return [CalibrationPoint.from_json(p) for p in value] if key == "points" and value is not None else value


@dataclass(frozen=True)
class LawSource(_Record):
    """Where and how a law was fitted: the experiment and its store, when, the bootstrap's ``samples`` and
    ``seed``, and the rules in words (the optimum's estimator, the signal test)."""

    experiment: str | None = None
    tracking_uri: str | None = None
    created: str | None = None
    bootstrap: dict | None = None
    estimator: str | None = None
    signal_test: str | None = None
    extra: dict = field(default_factory=dict)

    def head(self) -> dict:
        """The keys law.json holds before its points."""
        return {k: v for k, v in self.to_json().items() if k in ("experiment", "tracking_uri", "created")}

    def tail(self) -> dict:
        """The keys law.json holds after its points and excluded cells, before its validation."""
        return {k: v for k, v in self.to_json().items() if k in ("bootstrap", "estimator", "signal_test")}
