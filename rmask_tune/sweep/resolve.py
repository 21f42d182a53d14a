"""The sweep one sitting runs: a validated file plus the ``sweep`` command's options, resolved once into the
frozen :class:`SweepSpace` that nothing changes afterwards.

``--prior`` makes the search a law search from a law.json; ``--lr-from`` reads the law whose narrow grids
(``--lr-points`` LRs each) replace its method's; ``--skip-done`` leaves out the trials earlier sittings ended;
``--resume`` continues the sweep saved in the storage folder, leaving out what it left out. A problem with
any of them is one RmaskError before Ray starts and before anything is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from rmask_tune.errors import RmaskError
from rmask_tune.sweep.plan import SweepSpace
from rmask_tune.sweep.schema import LawGuidedSearch, OptunaSearch

LR_POINTS = 5  # LRs in each --lr-from grid unless --lr-points says otherwise


@dataclass(frozen=True)
class SweepOptions:
    """What the ``sweep`` command adds to its file; options that contradict each other are refused at once."""

    lr_from: str | None = None
    lr_points: int | None = None
    prior: str | None = None
    skip_done: tuple[str, ...] = ()
    resume: bool = False

    def __post_init__(self) -> None:
        if self.skip_done and self.resume:
            raise RmaskError(
                "--skip-done applies when a sweep starts; --resume continues it without the trials it left out"
            )
        if self.lr_points is not None and not self.lr_from:
            raise RmaskError("--lr-points sets the size of --lr-from's grids; give --lr-from LAW_JSON too")
        if self.lr_points is not None and self.lr_points < 1:
            raise RmaskError(f"--lr-points must be at least 1, got {self.lr_points}")
        if self.lr_from and self.resume:
            raise RmaskError("--lr-from applies when a sweep starts; --resume continues with the grids it started with")


def resolve_space(space: SweepSpace, options: SweepOptions) -> SweepSpace:
    """``space`` (as ``load_space`` validated it) with ``options`` applied: its search, narrowed grids, prior
    and the trials it leaves out, each read and checked now."""
    search = _search(space, options.prior)
    resolved = replace(
        space,
        file=space.file.model_copy(update={"search": search}),
        law=None if options.lr_from is None else _lr_law(options.lr_from, space),
        law_points=options.lr_points or LR_POINTS,
        prior=_prior(search, space),
        resume=options.resume,
    )
    resolved.cells()  # every cell's grid now: a law that gives no usable LR fails before anything is written
    if options.resume:
        from rmask_tune.sweep.state import SweepState

        return replace(resolved, done=tuple(SweepState.load(resolved).done))
    if options.skip_done:
        from rmask_tune.sweep.done import done_trials

        ended = tuple(done_trials(resolved, list(options.skip_done)))
        return replace(resolved, done=tuple(trial.point for trial in ended), ended=ended)
    return resolved


def _search(space: SweepSpace, prior: str | None):
    """The file's search, or with ``--prior`` a law search from ``prior`` (the file's must be grid or law)."""
    if prior is None:
        return space.file.search
    if isinstance(space.file.search, OptunaSearch):
        raise RmaskError(f"--prior runs a law search, but {space.source} asks for an optuna search; "
                         "use a grid or law search file")
    return LawGuidedSearch(type="law", prior=prior)


def _prior(search, space: SweepSpace):
    """A law search's prior, read from its law.json now (None without one: plain bracketing)."""
    from rmask_tune.law import load_law
    from rmask_tune.law_search import SearchPrior

    if not isinstance(search, LawGuidedSearch) or search.prior is None:
        return None
    law = load_law(search.prior)
    _say_budget(law, search.prior, space, "--prior")
    return SearchPrior.from_law(law, note=f"law {search.prior}")


def _lr_law(path: str, space: SweepSpace):
    """The ``--lr-from`` law: for a method the file sweeps; a model it has never seen is a warning."""
    from rmask_tune.law import load_law

    law = load_law(path)
    if law.method not in space.file.methods:
        raise RmaskError(f"{path} is a law for method '{law.method}', which {space.source} does not sweep")
    unseen = [m for m in space.file.models if m not in law.models_known()]
    if unseen:
        print(f"rmask-tune: warning: {path} has never seen {', '.join(unseen)}; their grids centre on the pooled "
              "law, which can miss an unseen model by several grid steps (calibrate with "
              "`rmask-tune recommend --anchor` first)", file=sys.stderr)
    _say_budget(law, path, space, "--lr-from")
    return law


def _say_budget(law, path: str, space: SweepSpace, option: str) -> None:
    """One line on stderr when the law's budget and the sweep's differ: a law with a budget term extrapolated
    beyond the budgets it was fitted on, or a law without one whose LRs are for another budget than the sweep
    trains (``--lr-from``'s grids centre there; a ``--prior`` search starts there and, from the first ratio it
    locates at the sweep's budget, fits the budget exponent itself)."""
    if law.shared is None:
        return
    budgets = sorted({b for task in space.file.tasks if (b := space.budget(task, law.method)) is not None})
    if law.shared.g is not None:
        outside = [b for b in budgets if not law.steps_in_range(b)]
        if outside:
            low, high = law.shared.steps_range
            print(f"rmask-tune: warning: {option} {path}: this sweep trains {_steps(outside)}, outside the budgets the "
                  f"law was fitted on ({low} to {high} steps); its budget term is extrapolated", file=sys.stderr)
        return
    own = law.budget()
    if own is not None and budgets in ([], [own]):
        return
    at = f"{own} steps" if own is not None else "the budget it was fitted at (its law.json does not say which)"
    if option == "--lr-from":
        then = "the narrow grids centre there and may miss this budget's optima"
    elif own is None:
        then = ("the search starts from those optima and cannot learn a budget exponent (refit the law with "
                "`rmask-tune report` to record its budgets)")
    else:
        then = "the search starts from those optima and fits the budget exponent once it locates one at this budget"
    print(f"rmask-tune: warning: {option} {path} has no budget term: its learning rates are for {at}, and this sweep "
          f"trains {_steps(budgets)}; {then}", file=sys.stderr)


def _steps(budgets: list[int]) -> str:
    return " and ".join(f"{b} steps" for b in budgets)
