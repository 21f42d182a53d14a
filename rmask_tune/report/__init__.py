"""Sweep reports: results table, LR sensitivity, the optimal-LR-vs-sparsity law, compute.

``build_report(source)`` reads a sweep's MLflow runs (or its export) and writes ``index.html``
(self-contained), ``README.md``, the PNG figures, ``law.json`` and the sweep's export
(``sweep-export.json.gz``, from which the report regenerates) into one folder.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.law import Law
from rmask_tune.report.runs import Source, Trial, load_records, load_trials, resolve_source, trial_of
from rmask_tune.report.summary import Summary, slug, summarize


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
    law.data = {"experiment": summary.experiment, "tracking_uri": summary.tracking_uri,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **law.data}
    return law


def build_report(source: str, tracking_uri: str | None = None, out: str | Path | None = None, *,
                 overwrite: bool = False, bootstrap: int = 1000, seed: int = 0, versus: str | None = None,
                 export: bool = True, also: list[str] = ()) -> Path:
    """Write the report folder (default ``reports/<experiment>``) and return it. A folder that already
    holds files is refused unless ``overwrite``; everything is computed before anything is written.
    ``versus`` (another sweep: name, folder, YAML or export) adds a comparison of shared cells.
    ``also`` adds the trials of more sweeps (folders, YAMLs or exports, e.g. cells run in another
    sitting on another machine) to ``source``'s, as one experiment; a configuration run in several keeps
    its newest result. ``export`` writes the (combined) export into the folder too."""
    from rmask_tune.report.export import EXPORT_FILE, encode_export
    from rmask_tune.report.figures import figures
    from rmask_tune.report.render import blocks, to_html, to_markdown

    where = resolve_source(source, tracking_uri)
    out = Path(out) if out is not None else Path("reports") / slug(where.experiment)
    if out.exists() and not out.is_dir():
        raise RmaskError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RmaskError(f"report folder {out} already holds files; pass --overwrite or choose another --out")
    records, unreadable = load_records(where)
    for extra in also:
        more, skipped = load_records(resolve_source(extra))
        records, unreadable = records + more, unreadable + skipped
    if also:
        where = Source(f"{where.tracking_uri} + {len(also)} more source(s)", where.experiment)
    summary = _summary(where, bootstrap, seed, ([trial_of(r) for r in records], unreadable))
    exported = encode_export(where.experiment, where.tracking_uri, records, unreadable) if export else None
    other = load_summary(versus, bootstrap=bootstrap, seed=seed) if versus is not None else None
    pngs = figures(summary)
    law = law_of(summary)
    title = f"rmask-tune report: {summary.experiment}"
    content = blocks(summary, set(pngs), other)
    page, markdown = to_html(title, content, pngs), to_markdown(title, content)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        (out / name).write_bytes(data)
    law.save(out / "law.json")
    if exported is not None:
        (out / EXPORT_FILE).write_bytes(exported)
    (out / "README.md").write_text(markdown)
    (out / "index.html").write_text(page)
    return out
