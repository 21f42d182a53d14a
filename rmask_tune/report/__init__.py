"""Sweep reports: results table, LR sensitivity, the optimal-LR-vs-sparsity law, compute.

``build_report(source)`` reads a sweep's MLflow runs (or its export) and writes ``index.html``
(self-contained), ``README.md``, the PNG figures, ``law.json`` and the sweep's export
(``sweep-export.json.gz``, from which the report regenerates) into one folder. The folder's ``probes.json``
(the Hessian probe's measurements, written by ``analyze calibrate``) is an input: it is kept, and the
a-priori predictor ``lr = c / lambda_max`` is recalibrated from it against the new law's optima and validated.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from pathlib import Path

from rmask_tune.analysis.predict import calibration_entry, calibration_pair
from rmask_tune.analysis.probes import PROBES_FILE, load_probes, match_probes, merge_probes, probes_json
from rmask_tune.errors import RmaskError
from rmask_tune.files.atomic import check_writable, replace_folder
from rmask_tune.law import Law
from rmask_tune.law_record import HessianValidation
from rmask_tune.runstore import reader
from rmask_tune.runstore.export import EXPORT_FILE, encode_export
from rmask_tune.runstore.reader import Trial, load_records, load_trials, trial_of
from rmask_tune.runstore.record import Source
from rmask_tune.report.gaps import method_gaps
from rmask_tune.report.summary import Summary, law_curves, slug, summarize
from rmask_tune.validation import probe_leave_one_task_out, summarize_validation


def resolve_source(source: str, tracking_uri: str | None = None) -> Source:
    """Where ``source``'s runs live: a sweep file (YAML) names its store through the sweep's own loader;
    an experiment name, a sweep folder or an export resolves as the run store resolves it."""
    path = Path(source)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from rmask_tune.sweep import load_space

        space = load_space(path)
        return Source(tracking_uri or space.tracking_uri, space.experiment_name)
    return reader.resolve_source(source, tracking_uri)


def _summary(where: Source, bootstrap: int, seed: int, loaded: tuple[list[Trial], int] | None = None) -> Summary:
    trials, unreadable = loaded or load_trials(where)
    return summarize(trials, where.experiment, where.tracking_uri, unreadable=unreadable,
                     bootstrap=bootstrap, seed=seed)


def load_summary(source: str, tracking_uri: str | None = None, *, bootstrap: int = 1000, seed: int = 0) -> Summary:
    """Resolve ``source`` (experiment name, sweep folder, sweep YAML or export) and summarise its trials."""
    return _summary(resolve_source(source, tracking_uri), bootstrap, seed)


def law_of(summary: Summary) -> Law:
    """The summary's law, stamped with where and when it was fitted."""
    law = summary.law
    law.source = replace(law.source, experiment=summary.experiment, tracking_uri=summary.tracking_uri,
                         created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return law


def _hessian_predictor(law: Law, probes: list[dict] | None, curves: dict[tuple, tuple[list, list]]) -> None:
    """Set the law's ``probe_calibration`` from ``probes`` (None: no probes.json) at its own optima and add the
    predictor's held-out validation on ``curves`` to its ``validation`` (``hessian_predictor``)."""
    match = match_probes(probes or [], law.points)
    rows, within, held_out = [], [], False
    if match and match.at_points:
        pairs = [calibration_pair(point, probe["lambda_max_repeats"], probe["step_range"])
                 for point, probe in match.at_points]
        law.probe_calibration = calibration_entry(
            pairs, match.settings, f"{PROBES_FILE} at the law's optimal-LR points",
            points_without_probe=match.without_probe, probes_with_other_settings=match.other_settings,
        )
        rows, held_out = probe_leave_one_task_out(pairs, match.probes, curves)
        within, _ = probe_leave_one_task_out(pairs, match.probes, curves, within_model=True)
    law.validation = replace(
        law.validation,
        hessian_predictor=None if probes is None else HessianValidation(len(probes), held_out, rows, within),
        summary={**law.validation.summary, "hessian_predictor": summarize_validation(rows),
                 "hessian_predictor_within_model": summarize_validation(within)},
    )


@dataclass(frozen=True)
class Report:
    """A written report: its folder and the law it wrote there as law.json."""

    folder: Path
    law: Law


def build_report(source: str, tracking_uri: str | None = None, out: str | Path | None = None, *,
                 overwrite: bool = False, bootstrap: int = 1000, seed: int = 0, versus: str | None = None,
                 export: bool = True, also: list[str] = (), probes: str | Path | None = None) -> Report:
    """Write the report folder (default ``reports/<experiment>``) and return it with its law. A folder that already
    holds files is refused unless ``overwrite``, which replaces the report's own files as a whole (written
    beside it, then swapped in: no page, plot, law or export of the old report stays, while what the report
    does not write, such as probes.json, a FINDINGS.md or a folder of parts, is kept); everything is computed
    before anything is written.
    ``versus`` (another sweep: name, folder, YAML or export) adds a comparison of shared cells.
    ``also`` adds the trials of more sweeps (folders, YAMLs or exports, e.g. cells run in another
    sitting on another machine) to ``source``'s, as one experiment; a configuration run in several keeps
    its newest result. ``export`` writes the (combined) export into the folder too. The Hessian probes come
    from the folder's probes.json when it has one; ``probes`` (another probes.json) is merged into it."""
    from rmask_tune.report.figures import figures
    from rmask_tune.report.render import blocks, to_html, to_markdown

    where = resolve_source(source, tracking_uri)
    extras = [resolve_source(extra) for extra in also]  # every input is read and checked before any work
    other_source = resolve_source(versus) if versus is not None else None
    out = Path(out) if out is not None else Path("reports") / slug(where.experiment)
    if out.exists() and not out.is_dir():
        raise RmaskError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(f.name != PROBES_FILE for f in out.iterdir()) and not overwrite:
        raise RmaskError(f"report folder {out} already holds files; pass --overwrite or choose another --out")
    check_writable(out, "report folder")
    kept = out / PROBES_FILE
    probe_entries = load_probes(kept) if kept.is_file() else None
    if probes is not None:
        probe_entries = merge_probes(probe_entries or [], load_probes(probes))
    records, unreadable = load_records(where)
    for extra in extras:
        more, skipped = load_records(extra)
        records, unreadable = records + more, unreadable + skipped
    if also:
        where = Source(f"{where.tracking_uri} + {len(also)} more source(s)", where.experiment)
    summary = _summary(where, bootstrap, seed, ([trial_of(r) for r in records], unreadable))
    exported = encode_export(where.experiment, where.tracking_uri, records, unreadable) if export else None
    other = _summary(other_source, bootstrap, seed) if other_source is not None else None
    pngs = figures(summary)
    law = law_of(summary)
    _hessian_predictor(law, probe_entries, law_curves(summary.curves.values()))
    title = f"rmask-tune report: {summary.experiment}"
    content = blocks(summary, set(pngs), method_gaps(summary, samples=bootstrap, seed=seed), other)
    page, markdown = to_html(title, content, pngs), to_markdown(title, content)
    files = {**pngs, "law.json": law.to_json(out / "law.json"), "README.md": markdown.encode(),
             "index.html": page.encode()}
    if probes is not None:
        files[PROBES_FILE] = probes_json(probe_entries)
    if exported is not None:
        files[EXPORT_FILE] = exported
    replace_folder(out, files, keep=lambda entry: not _written_by_report(entry.name))
    return Report(out, law)


def _written_by_report(name: str) -> bool:
    """Whether a report folder's entry is one a report writes (``--overwrite`` replaces those, keeps the rest)."""
    return name in ("README.md", "index.html", "law.json", EXPORT_FILE) or name.endswith(".png")
