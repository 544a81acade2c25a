"""python -m diet.report: one paper-style table (report.md, report.csv), plots and the failed runs, from many sweeps.

    python -m diet.report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--wandb ENTITY/PROJECT/GROUP]

Every results.json under the folders (recursively) is one row: (model, method, target, sparsity) plus every config key
whose value differs between the runs (read from each job's .hydra/config.yaml and overrides.yaml). Columns are the
evaluated tasks, each with its conventional metric (results.json's `paper_metric`), and `average.paper`. A job folder
(one with .hydra/ or status.json) that has no results.json, and a job that a sweep's multirun.yaml asked for but that
has no folder, are listed under "Failed or missing runs", never dropped.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from diet import DietError

METHOD_ORDER = ("dense", "magnitude", "random", "generic", "diet", "per_task")
REFERENCES = ("dense", "per_task")  # shown, never ranked: the unpruned model and one model per task
# Config keys that never become a column: where outputs go, how runs are logged, what does not change a number.
IGNORED = ("hydra", "cache_dir", "device", "logger", "stage", "eval.log_samples", "prune.save")
# The table's fixed columns, by their config key.
BASE_CONFIG_KEYS = ("model.name", "method.name", "prune.target", "sparsity")
# What results.json records itself, for runs without a .hydra folder (copied results, W&B).
FROM_RESULTS = {"scoring.name": "scoring", "prune.scope": "scope", "seed": "seed", "tasks.names": "tasks"}
LABELS = {"model.name": "model", "method.name": "method", "scoring.name": "scoring", "tasks.names": "tasks",
          "prune.target": "target"}


@dataclass
class Run:
    where: str                      # job folder or W&B run url
    model: str
    method: str
    target: str
    sparsity: float
    achieved: float | None
    params_ratio: float | None
    scores: dict[str, float | None]  # task -> value of its paper metric
    metric: dict[str, str]           # task -> metric name
    average: float | None
    dense: dict[str, float | None] | None
    dense_average: float | None
    settings: dict = field(default_factory=dict)  # flat config {key: value}
    swept: set = field(default_factory=set)       # keys named in the job's overrides


@dataclass
class Missing:
    where: str
    reason: str


@dataclass
class Collected:
    runs: list[Run] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    profile_only: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------- collecting

def natural_key(text) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(text)) if p]


def flatten(obj, prefix: str = "") -> dict:
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat = {}
    for key, value in obj.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _pick(row: dict | None, metric: str) -> float | None:
    if not row:
        return None
    value = row.get(metric)
    return value if value is not None else row.get("acc")


def run_from_results(results: dict, where: str, settings: dict | None = None, swept: set | None = None) -> Run:
    eval_tasks = list(results.get("eval_tasks") or results["metrics"])
    metric = {t: (results.get("paper_metric") or {}).get(t, "acc") for t in eval_tasks}
    dense = results.get("dense_metrics")
    settings = dict(settings or {})
    for key, name in FROM_RESULTS.items():
        if key not in settings and name in results:
            settings[key] = results[name]
    params = results.get("params") or {}
    sparsity = results.get("sparsity") or {}
    return Run(
        where=where, model=results["model"], method=results["method"], target=results.get("target", ""),
        sparsity=float(sparsity.get("requested", settings.get("sparsity", math.nan))),
        achieved=sparsity.get("achieved"),
        params_ratio=params["pruned"] / params["dense"] if params.get("dense") else None,
        scores={t: _pick(results["metrics"].get(t), metric[t]) for t in eval_tasks}, metric=metric,
        average=(results.get("average") or {}).get("paper"),
        dense={t: _pick(dense.get(t), metric[t]) for t in eval_tasks if t in dense} if dense else None,
        dense_average=(results.get("dense_average") or {}).get("paper") if dense else None,
        settings=settings, swept=set(swept or ()))


def _job_config(job: Path) -> tuple[dict, set]:
    """(flat config, overridden keys) from a Hydra job folder; empty when it has none."""
    from omegaconf import OmegaConf

    settings, swept = {}, set()
    cfg_file, overrides_file = job / ".hydra" / "config.yaml", job / ".hydra" / "overrides.yaml"
    if cfg_file.is_file():
        settings = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False))
    if overrides_file.is_file():
        for item in OmegaConf.to_container(OmegaConf.load(overrides_file)) or []:
            key = str(item).split("=", 1)[0].lstrip("+~")
            swept.add(f"{key}.name" if f"{key}.name" in settings else key)
    return settings, swept


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return err


def expected_jobs(multirun_yaml: Path) -> dict[Path, str]:
    """{job folder: its swept overrides} for every job a Hydra multirun asked for (from its multirun.yaml), so a job
    that never started (still queued, or after a failure that stopped the basic launcher) is listed too."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        hydra_cfg = OmegaConf.to_container(OmegaConf.load(multirun_yaml).hydra, resolve=False)
        if hydra_cfg["sweep"]["subdir"] != "${hydra.job.num}":
            return {}
        parsed = OverridesParser.create().parse_overrides(list(hydra_cfg["overrides"]["task"]))
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:  # not a sweep we can expand (another sweeper, a custom subdir): its job folders still count
        return {}
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return {multirun_yaml.parent / str(num): " ".join(o for o in job if o.split("=", 1)[0] in swept)
            for num, job in enumerate(jobs)}


def shown_path(path: Path) -> str:
    """Relative to the working directory when under it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def collect(folders: list[Path]) -> Collected:
    found = Collected()
    for folder in folders:
        if not folder.is_dir():
            raise DietError(f"sweep dir: '{folder}' is not a folder; allowed: folders holding results.json files "
                            "(a Hydra multirun folder, a run folder, or a parent of several)")
    results_files, job_dirs, expected = set(), set(), {}
    for folder in folders:
        for multirun_yaml in folder.rglob("multirun.yaml"):
            expected.update({job.resolve(): swept for job, swept in expected_jobs(multirun_yaml).items()})
        results_files.update(p.resolve() for p in folder.rglob("results.json") if p.is_file())
        job_dirs.update(p.parent.resolve() for p in folder.rglob(".hydra") if p.is_dir())
        job_dirs.update(p.parent.resolve() for p in folder.rglob("status.json") if p.is_file())
        if (folder / "results.json").is_file() or (folder / "status.json").is_file():
            job_dirs.add(folder.resolve())
    for path in sorted(results_files, key=natural_key):
        job = path.parent
        results = _read_json(path)
        if isinstance(results, Exception) or not isinstance(results, dict) or "metrics" not in results:
            found.missing.append(Missing(shown_path(job), f"results.json is unreadable ({results})"[:300]
                                         if isinstance(results, Exception) else "results.json has no metrics"))
            continue
        settings, swept = _job_config(job)
        try:
            found.runs.append(run_from_results(results, shown_path(job), settings, swept))
        except (KeyError, TypeError, ValueError) as err:
            found.missing.append(Missing(shown_path(job), f"results.json lacks {err}"))
    for job in sorted(job_dirs - {p.parent for p in results_files}, key=natural_key):
        status = _read_json(job / "status.json") if (job / "status.json").is_file() else None
        settings, _ = _job_config(job)
        if isinstance(status, dict) and status.get("state") == "done" and (
                status.get("stage") == "profile" or settings.get("stage") == "profile"):
            found.profile_only.append(shown_path(job))
            continue
        found.missing.append(Missing(shown_path(job), describe_status(status, job)))
    for job, swept in sorted(expected.items(), key=lambda kv: natural_key(kv[0])):
        if not job.exists():
            found.missing.append(Missing(shown_path(job), f"never started ({swept or 'no swept keys'}): still queued, "
                                                          "or its sweep stopped at an earlier failure"))
    return found


def describe_status(status, job: Path) -> str:
    if status is None:
        reason = "no status.json and no results.json: never started, or died before its first stage"
    elif isinstance(status, Exception) or not isinstance(status, dict):
        reason = f"status.json is unreadable ({status})"
    elif status.get("state") == "failed":
        reason = f"failed: {status.get('error') or 'no error recorded'}"
    elif status.get("state") == "running":
        reason = (f"did not finish (last stage: {status.get('stage', '?')}): crashed, killed, preempted or still "
                  "running; see its run.log")
    else:
        reason = f"state {status.get('state')!r} but no results.json"
    submitit = next((p / ".submitit" for p in (job, *job.parents[:2]) if (p / ".submitit").is_dir()), None)
    failed = isinstance(status, dict) and status.get("state") == "failed"
    return reason + (f"; scheduler logs in {shown_path(submitit)}" if submitit and not failed else "")


# ----------------------------------------------------------------------------------------------------- W&B

def wandb_runs(spec: str) -> Collected:
    """The same fields from the W&B public API: config keys as diet.tracking flattens them, summary <task>/<metric>."""
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise DietError(f"--wandb: {spec!r} is not allowed; allowed: ENTITY/PROJECT/GROUP")
    entity, project, group = parts
    try:
        import wandb

        api = wandb.Api(timeout=15)
        remote = list(api.runs(f"{entity}/{project}", filters={"group": group}))
    except Exception as err:  # offline, no key, no such project: one line, never a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DietError(f"--wandb: could not read {spec} from the W&B API ({type(err).__name__}: {first}); "
                        "allowed: a reachable W&B server and `wandb login`, or the local sweep folders") from None
    found = Collected()
    for run in remote:
        try:
            summary = getattr(run.summary, "_json_dict", None) or dict(run.summary)
            found.runs.append(run_from_wandb(flatten(dict(run.config)), dict(summary), run.url))
        except (KeyError, TypeError, ValueError):
            found.missing.append(Missing(run.url, f"W&B state {run.state!r}, no average/paper in its summary"))
    if not remote:
        raise DietError(f"--wandb: no runs in group {group!r} of {entity}/{project}; allowed: a group that has runs")
    return found


def run_from_wandb(cfg: dict, summary: dict, url: str) -> Run:
    """A W&B run (flat config, summary) as the results.json fields the table uses."""
    from diet.evaluate import paper_metric

    tasks = list(cfg.get("eval.tasks") or cfg.get("tasks.names") or [])
    metrics, dense = {}, {}
    for task in tasks:
        metrics[task] = {m: summary.get(f"{task}/{m}") for m in ("acc", "acc_norm")}
        drops = {m: summary.get(f"{task}/drop_{m}") for m in ("acc", "acc_norm")}
        if any(v is not None for v in drops.values()):
            dense[task] = {m: (metrics[task][m] + d if d is not None and metrics[task][m] is not None else None)
                           for m, d in drops.items()}
    results = {
        "model": cfg["model.name"], "method": cfg["method.name"], "target": cfg.get("prune.target", ""),
        "eval_tasks": tasks, "paper_metric": {t: paper_metric(t) for t in tasks}, "metrics": metrics,
        "average": {"paper": summary["average/paper"]},
        "sparsity": {"requested": summary.get("sparsity/requested", cfg.get("sparsity")),
                     "achieved": summary.get("sparsity/achieved")},
        "params": {"dense": summary.get("params/dense"), "pruned": summary.get("params/pruned")},
        "dense_metrics": dense or None,
    }
    if dense:
        from diet.evaluate import averages

        results["dense_average"] = averages(dense)
    return run_from_results(results, url, settings=dict(cfg))


# ----------------------------------------------------------------------------------------------------- the table

@dataclass
class Row:
    model: str
    method: str
    target: str
    sparsity: float | None
    extras: dict
    scores: dict
    average: float | None
    achieved: float | None = None
    params_ratio: float | None = None
    where: str = ""
    bold: set = field(default_factory=set)


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys (beyond the fixed four) whose value differs between runs."""
    candidates = set()
    for run in runs:
        candidates |= {k for k in run.settings if not k.startswith("model.")} | run.swept
    keep = []
    for key in sorted(candidates):
        if key in BASE_CONFIG_KEYS or any(key == p or key.startswith(p + ".") or key.startswith(p + "/")
                                          for p in IGNORED):
            continue
        values = {json.dumps(r.settings.get(key), sort_keys=True, default=str) for r in runs}
        if len(values) > 1:
            keep.append(key)
    return keep


def build_table(runs: list[Run]) -> tuple[list[str], dict[str, str], list[str], list[Row]]:
    """(tasks in order, metric per task, varying keys, rows: per model a dense row or rows, then the pruned runs)."""
    tasks, metric = [], {}
    for run in runs:
        for task in run.scores:
            if task not in metric:
                tasks.append(task)
                metric[task] = run.metric[task]
    extras = varying_keys(runs)
    rows: list[Row] = []
    for model in sorted({r.model for r in runs}, key=natural_key):
        mine = [r for r in runs if r.model == model]
        dense_seen = {}
        for run in mine:
            if run.dense:
                fingerprint = json.dumps(run.dense, sort_keys=True)
                dense_seen.setdefault(fingerprint, run)
        for run in dense_seen.values():
            values = [v for v in run.dense.values() if v is not None]
            average = run.dense_average if run.dense_average is not None else (
                sum(values) / len(values) if values else None)
            shown = {k: run.settings.get(k) for k in extras} if len(dense_seen) > 1 else {}
            rows.append(Row(model, "dense", "", None, shown, dict(run.dense), average, 0.0, 1.0, run.where))
        pruned = [Row(r.model, r.method, r.target, r.sparsity, {k: r.settings.get(k) for k in extras},
                      dict(r.scores), r.average, r.achieved, r.params_ratio, r.where) for r in mine]
        pruned.sort(key=lambda row: (row.sparsity, row.target,
                                     [_sort_value(row.extras[k], [r.extras[k] for r in pruned]) for k in extras],
                                     _method_rank(row.method), natural_key(row.where)))
        rows.extend(pruned)
    mark_best(rows, tasks)
    return tasks, metric, extras, rows


def _sort_value(value, all_values: list) -> list:
    """Natural order; a list value (tasks.names in a leave-one-out sweep) by where what it lacks stands in the mix."""
    if isinstance(value, (list, tuple)):
        union = list(dict.fromkeys(x for v in all_values if isinstance(v, (list, tuple)) for x in v))
        return natural_key(" ".join(f"{union.index(x):04d}" for x in union if x not in value))
    return natural_key(_plain(value))


def _method_rank(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def mark_best(rows: list[Row], tasks: list[str]) -> None:
    """Bold the best value per column among the ranked rows of the same model and sparsity (two rows at least)."""
    blocks: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.method not in REFERENCES:
            blocks.setdefault((row.model, row.sparsity), []).append(row)
    for block in blocks.values():
        if len(block) < 2:
            continue
        for column in [*tasks, "average"]:
            values = [(r, r.average if column == "average" else r.scores.get(column)) for r in block]
            values = [(r, v) for r, v in values if v is not None]
            if not values:
                continue
            best = max(v for _, v in values)
            for r, v in values:
                if v >= best - 1e-12:
                    r.bold.add(column)


def _plain(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show_extra(key: str, value, all_values: list) -> str:
    """A list column (e.g. tasks.names in a leave-one-out sweep) shows what it lacks of the union: `w/o boolq`."""
    if isinstance(value, (list, tuple)):
        union = [x for v in all_values if isinstance(v, (list, tuple)) for x in v]
        union = list(dict.fromkeys(union))
        lacking = [x for x in union if x not in value]
        if lacking and len(lacking) < len(union) / 2:
            return "w/o " + ",".join(map(str, lacking))
        if not lacking:
            return "all"
    return _plain(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _label(key: str) -> str:
    return LABELS.get(key, key)


def markdown(tasks, metric, extras, rows, found: Collected, sources: list[str]) -> str:
    show_achieved = any(r.achieved is not None and r.sparsity is not None and abs(r.achieved - r.sparsity) > 0.01
                        for r in rows if r.method != "dense")
    header = ["model", "method", "target", "sparsity", *(["achieved"] if show_achieved else []),
              *[_label(k) for k in extras], *[f"{t} ({metric[t]})" for t in tasks], "average"]
    lines = ["# DIET report", "", f"{len(found.runs)} runs from {', '.join(sources)}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (4 + show_achieved + len(extras)) +
                                                             ["---:"] * (len(tasks) + 1)) + "|"]
    all_values = {k: [r.extras.get(k) for r in rows] for k in extras}
    for row in rows:
        def cell(column, value):
            text = _percent(value)
            return f"**{text}**" if column in row.bold else text

        cells = [row.model, row.method, row.target or "–", "0" if row.method == "dense" else _plain(row.sparsity)]
        if show_achieved:
            cells.append("–" if row.achieved is None else f"{row.achieved:.3f}")
        cells += [_show_extra(k, row.extras.get(k), all_values[k]) if k in row.extras else "" for k in extras]
        cells += [cell(t, row.scores.get(t)) for t in tasks] + [cell("average", row.average)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in %, zero-shot, each task with its conventional metric (in the header); `average` is "
              "`average.paper`. `sparsity` is the requested fraction of the target's dimensions removed"
              + (", `achieved` what the vote gave" if show_achieved else "") + "; achieved sparsity, parameter "
              "ratio and each run's folder are in report.csv. Bold: best per column among rows of the same model "
              "and sparsity (dense and per_task are references, not ranked)."]
    if found.profile_only:
        lines += ["", f"{len(found.profile_only)} profile-only jobs (stage=profile) have no results by design: "
                  + ", ".join(found.profile_only)]
    lines += ["", "## Failed or missing runs", ""]
    lines += [f"- `{m.where}`: {m.reason}" for m in found.missing] or ["None."]
    return "\n".join(lines) + "\n"


def csv_text(tasks, metric, extras, rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "method", "target", "sparsity", *extras, "achieved_sparsity", "params_ratio",
                     *[f"{t}/{metric[t]}" for t in tasks], "average", "run"])
    for row in rows:
        writer.writerow([row.model, row.method, row.target, 0.0 if row.method == "dense" else row.sparsity,
                         *[_plain(row.extras[k]) if k in row.extras else "" for k in extras],
                         row.achieved, row.params_ratio, *[row.scores.get(t) for t in tasks], row.average,
                         row.where])
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axis(values: list) -> tuple[list, list[str] | None]:
    """Numeric x when every value is a number, else categorical positions with labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({_plain(v) for v in values}, key=natural_key)
    return [labels.index(_plain(v)) for v in values], labels


def plot_against(rows: list[Row], key: str, label: str, path: Path) -> Path | None:
    """Average accuracy vs `key` (sparsity or an extra), one subplot per model, one line per other setting."""
    pruned = [r for r in rows if r.method != "dense" and r.average is not None]
    if not pruned:
        return None
    plt = _pyplot()
    models = sorted({r.model for r in pruned}, key=natural_key)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)

    def shown(k, value):  # list values as the table shows them (`w/o boolq`), not as a long joined list
        return _show_extra(k, value, [r.extras.get(k) for r in pruned]) if isinstance(value, (list, tuple)) else value

    def x_of(row):
        return row.sparsity if key == "sparsity" else shown(key, row.extras.get(key))

    def others(row):
        fields = {"method": row.method, "target": row.target, "sparsity": row.sparsity,
                  **{_label(k): shown(k, v) for k, v in row.extras.items() if k != key}}
        return {k: v for k, v in fields.items() if k != (label if key != "sparsity" else "sparsity")}

    varying = {k for k in others(pruned[0]) if len({_plain(others(r)[k]) for r in pruned}) > 1}
    for ax, model in zip(axes[0], models):
        mine = [r for r in pruned if r.model == model]
        xs, labels = _axis([x_of(r) for r in mine])
        series: dict[str, list] = {}
        for row, x in zip(mine, xs):
            name = ", ".join(f"{_plain(v)}" if k == "method" else f"{k}={_plain(v)}"
                             for k, v in others(row).items() if k in varying) or row.method
            series.setdefault(name, []).append((x, row.average))
        for name, points in sorted(series.items(), key=lambda kv: natural_key(kv[0])):
            points.sort(key=lambda p: p[0])
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=name)
        for dense in [r for r in rows if r.model == model and r.method == "dense" and r.average is not None][:1]:
            ax.axhline(100 * dense.average, color="black", linestyle="--", linewidth=1, label="dense")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        ax.set_title(model)
        ax.set_xlabel(label)
        ax.set_ylabel("average accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    _publish(tmp, path)
    return path


def write_plots(rows: list[Row], extras: list[str], out: Path) -> list[Path]:
    written = [plot_against(rows, "sparsity", "sparsity", out / "avg_vs_sparsity.png")]
    for key in extras:
        name = re.sub(r"[^A-Za-z0-9]+", "_", _label(key)).strip("_")
        written.append(plot_against(rows, key, _label(key), out / f"avg_vs_{name}.png"))
    return [p for p in written if p is not None]


# ----------------------------------------------------------------------------------------------------- CLI

def _publish(tmp: str, path: Path) -> None:
    """Rename a finished temp file into place, readable as a plain new file would be (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    _publish(tmp, path)


def report(folders: list[Path], out: Path | None = None, wandb: str | None = None) -> dict:
    """Write report.md, report.csv and the plots; returns their paths and the collected runs."""
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
    out = out or (folders[0] if folders else Path("outputs") / "reports" / wandb.split("/")[-1])
    out.mkdir(parents=True, exist_ok=True)
    tasks, metric, extras, rows = build_table(found.runs)
    _atomic_text(out / "report.md", markdown(tasks, metric, extras, rows, found, sources))
    _atomic_text(out / "report.csv", csv_text(tasks, metric, extras, rows))
    plots = write_plots(rows, extras, out)
    return {"markdown": out / "report.md", "csv": out / "report.csv", "plots": plots, "runs": found.runs,
            "missing": found.missing, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diet.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first folder)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT/GROUP", default=None,
                        help="also read the runs of a W&B group through the public API")
    args = parser.parse_args(argv)
    try:
        written = report(args.folders, args.out, args.wandb)
    except DietError as err:
        from diet import config  # imports torch (through diet.vote): only on the error path

        config.exit_on_error(err)
    print(f"report: {len(written['runs'])} runs, {len(written['missing'])} failed or missing -> {written['markdown']}, "
          f"{written['csv'].name}, " + ", ".join(p.name for p in written["plots"]))
    print(written["markdown"].read_text().split("\n\n", 2)[2], end="")


if __name__ == "__main__":
    main()
