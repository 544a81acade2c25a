"""python -m diet.report: paper-style tables (report.md, report.csv), plots and the failed runs, from many sweeps.

    python -m diet.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--wandb ENTITY/PROJECT/GROUP] [--baseline METHOD]

Every results.json under the folders (recursively) is one run (`collect`); runs that differ only in `seed` are one row
of the table, mean ± standard deviation over seeds with n (`tables`); the rows are (model, method, target, sparsity)
plus every config key whose value differs between the runs (read from each job's .hydra/config.yaml and
overrides.yaml). Columns are the evaluated tasks, each with the metric it contributes (results.json's
`paper_metric`), and `average.paper`; `--baseline generic` adds each row's difference to that method at the same
achieved sparsity. Jobs without results are listed under "Failed or missing runs", never dropped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diet import DietError, cache
from diet.report.collect import (Collected, Missing, Run, collect, expand_sweep, expected_jobs, run_from_results,
                                 run_from_wandb, wandb_runs)
from diet.report.plots import write_plots
from diet.report.tables import Row, Stat, build_table, csv_text, markdown

__all__ = ["Collected", "Missing", "Row", "Run", "Stat", "build_table", "collect", "expand_sweep", "expected_jobs",
           "main", "report", "run_from_results", "run_from_wandb"]


def report(folders: list[Path], out: Path | None = None, wandb: str | None = None,
           baseline: str | None = None) -> dict:
    """Write report.md, report.csv and the plots; returns their paths, the collected runs and the table rows."""
    if not folders and not wandb:
        raise DietError("sweep dir: none given; allowed: one or more folders holding results.json files, "
                        "or --wandb ENTITY/PROJECT/GROUP")
    found = collect(folders) if folders else Collected()
    sources = [str(f) for f in folders]
    if wandb:
        remote = wandb_runs(wandb)
        found.runs += remote.runs
        found.missing += remote.missing
        sources.append(f"W&B {wandb}")
    if not found.runs:
        where = ", ".join(sources)
        detail = (f"; {len(found.missing)} jobs have none (first: {found.missing[0].where}: "
                  f"{found.missing[0].reason})" if found.missing else "")
        raise DietError(f"sweep dir: no results.json under {where}{detail}; allowed: folders of finished runs")
    methods = sorted({r.method for r in found.runs})
    if baseline is not None and baseline not in methods:
        raise DietError(f"--baseline: {baseline!r} has no runs here; allowed: {', '.join(methods)}")
    out = out or (folders[0] if folders else Path("outputs") / "reports" / wandb.split("/")[-1])
    out.mkdir(parents=True, exist_ok=True)
    tasks, metric, extras, rows = build_table(found.runs, baseline)
    cache.atomic_write_text(out / "report.md", markdown(tasks, metric, extras, rows, found, sources, baseline))
    cache.atomic_write_text(out / "report.csv", csv_text(tasks, metric, extras, rows))
    plots = write_plots(rows, extras, out)
    return {"markdown": out / "report.md", "csv": out / "report.csv", "plots": plots, "runs": found.runs,
            "missing": found.missing, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diet.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first folder)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT/GROUP", default=None,
                        help="also read the runs of a W&B group through the public API")
    parser.add_argument("--baseline", metavar="METHOD", default=None,
                        help="add each row's average minus METHOD's at the same achieved sparsity (e.g. generic)")
    args = parser.parse_args(argv)
    try:
        written = report(args.folders, args.out, args.wandb, args.baseline)
    except DietError as err:
        from diet import config  # imports torch (through diet.vote): only on the error path

        config.exit_on_error(err)
    print(f"report: {len(written['runs'])} runs, {len(written['missing'])} failed or missing -> {written['markdown']}, "
          f"{written['csv'].name}, " + ", ".join(p.name for p in written["plots"]))
    print(written["markdown"].read_text().split("\n\n", 2)[2], end="")
