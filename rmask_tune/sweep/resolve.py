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
        prior=_prior(search),
        resume=options.resume,
    )
    resolved.cells()  # every cell's grid now: a law that gives no usable LR fails before anything is written
    if options.resume:
        from rmask_tune.sweep.state import SweepState

        return replace(resolved, done=tuple(SweepState.load(resolved).done))
    if options.skip_done:
        from rmask_tune.sweep.done import done_trials

        done = done_trials(resolved, list(options.skip_done))
        return replace(resolved, done=tuple(point for point, _ in done), done_dev=tuple(dev for _, dev in done))
    return resolved


def _search(space: SweepSpace, prior: str | None):
    """The file's search, or with ``--prior`` a law search from ``prior`` (the file's must be grid or law)."""
    if prior is None:
        return space.file.search
    if isinstance(space.file.search, OptunaSearch):
        raise RmaskError(f"--prior runs a law search, but {space.source} asks for an optuna search; "
                         "use a grid or law search file")
    return LawGuidedSearch(type="law", prior=prior)


def _prior(search):
    """A law search's prior, read from its law.json now (None without one: plain bracketing)."""
    from rmask_tune.law import load_law
    from rmask_tune.law_search import SearchPrior

    if not isinstance(search, LawGuidedSearch) or search.prior is None:
        return None
    return SearchPrior.from_law(load_law(search.prior), note=f"law {search.prior}")


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
    return law
