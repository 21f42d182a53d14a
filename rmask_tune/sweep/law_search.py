"""The law-guided search as a Ray Tune ``Searcher`` (``search: {type: law, prior: LAW_JSON}``).

Every decision is :class:`rmask_tune.law_search.LawSearch`'s (the replay benchmark drives the same object);
this wrapper turns its proposals into the sweep's trial configs, feeds back each trial's best dev metric,
keeps at most ``max_concurrent`` trials in flight, and saves and restores its state for ``--resume``. Trials
an earlier sitting ended (``--skip-done``) are observed as results before the first proposal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.search import Searcher

from rmask_tune.law_search import CellId, LawSearch, SearchPrior, SearchSettings
from rmask_tune.sweep.plan import METRIC, MODE, Cell, SweepSpace, trial_point


class LawSearcher(Searcher):
    """Proposes the trials :class:`LawSearch` asks for, ``max_concurrent`` at most at a time."""

    def __init__(self, space: SweepSpace, constants: dict, prior: SearchPrior | None, max_concurrent: int):
        super().__init__(metric=METRIC, mode=MODE)
        self.cells: dict[CellId, Cell] = {CellId(c.model, c.task, c.method, c.ratio): c for c in space.cells()}
        settings = space.settings()
        dev = {cid: int({**settings, **space.task_settings(cid.task)}.get("dev_examples") or 0) for cid in self.cells}
        steps = {cid: space.budget(cid.task, cid.method) for cid in self.cells}
        self.search = LawSearch({cid: list(c.lrs) for cid, c in self.cells.items()}, prior,
                                SearchSettings(seeds=tuple(space.file.seeds)), dev, steps)
        for ended in space.ended:
            point = ended.point
            cid = CellId(point["model"], point["task"], point["method"], point["ratio"])
            self.search.observe(cid, point["lr"], point["seed"], ended.best_dev)
        self.constants = constants
        self.max_concurrent = max_concurrent
        self.live: dict[str, tuple[CellId, float | None, int]] = {}

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self.live) >= self.max_concurrent:
            return None
        proposal = self.search.propose()
        if proposal is None:
            return Searcher.FINISHED if self.search.finished() and not self.live else None
        cid, lr, seed = proposal
        self.live[trial_id] = proposal
        return {"trial": trial_point(self.cells[cid], lr, seed), **self.constants}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        cid, lr, seed = self.live.pop(trial_id)
        if error or result is None:
            self.search.unavailable(cid, lr, seed)
            return
        value = result.get("best_dev_metric")
        diverged = result.get("status") == "diverged" or bool(result.get("diverged"))
        dev = None if diverged or value is None or not math.isfinite(value) else float(value)
        self.search.observe(cid, lr, seed, dev)

    def save(self, checkpoint_path: str) -> None:
        live = [[trial_id, [cid.model, cid.task, cid.method, cid.ratio], lr, seed]
                for trial_id, (cid, lr, seed) in self.live.items()]
        Path(checkpoint_path).write_text(json.dumps({"search": self.search.to_dict(), "live": live}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.search = LawSearch.from_dict(state["search"])
        self.live = {}
        for trial_id, cid, lr, seed in state["live"]:  # trials Tune resumes: still pending here
            key = CellId(*cid)
            self.live[trial_id] = (key, lr, seed)
            self.search.resume_pending(key, lr, seed)
