"""Collecting: every results.json under the sweep folders (or a W&B group) as a `Run`, and every job that has none.

A job folder (one with .hydra/ or status.json) that has no results.json, and a job that a sweep's multirun.yaml asked for
but that has no folder, are `Missing`, never dropped.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from diet import DietError, flatten
from diet.evaluate import averages, paper_metric

# What results.json records itself, for runs without a .hydra folder (copied results, W&B).
FROM_RESULTS = {"scoring.name": "scoring", "prune.scope": "scope", "seed": "seed", "tasks.names": "tasks"}


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
    stderr: dict[str, float | None]  # task -> lm-eval's stderr of that value (None when not computed)
    average: float | None
    dense: dict[str, float | None] | None
    dense_average: float | None
    settings: dict = field(default_factory=dict)  # flat config {key: value}
    param_sparsity: float | None = None  # achieved fraction of the decoder layers' parameters removed
    speedup: float | None = None         # eval.speed: measured prefill speed-up over the dense model
    decode_speedup: float | None = None  # eval.speed: measured decode speed-up over the dense model
    param_budget: float | None = None    # prune.budget=params: the requested fraction of the decoder's parameters
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


def stderr_name(metric: str) -> str:
    """lm-eval's name for a metric's stderr: `acc` -> `acc_stderr`, `exact_match,strict-match` ->
    `exact_match_stderr,strict-match`."""
    name, comma, filter_name = metric.partition(",")
    return f"{name}_stderr{comma}{filter_name}"


def _pick(row: dict | None, metric: str) -> float | None:
    return (row or {}).get(metric)


def run_from_results(results: dict, where: str, settings: dict | None = None, swept: set | None = None) -> Run:
    eval_tasks = list(results.get("eval_tasks") or results["metrics"])
    metric = {t: (results.get("paper_metric") or {}).get(t) or paper_metric(t, results["metrics"].get(t))
              for t in eval_tasks}
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
        stderr={t: _pick(results["metrics"].get(t), stderr_name(metric[t])) for t in eval_tasks},
        average=(results.get("average") or {}).get("paper"),
        dense={t: _pick(dense.get(t), metric[t]) for t in eval_tasks if t in dense} if dense else None,
        dense_average=(results.get("dense_average") or {}).get("paper") if dense else None,
        settings=settings, swept=set(swept or ()),
        param_sparsity=(sparsity.get("params") or {}).get("decoder"),
        param_budget=(sparsity.get("params") or {}).get("requested"),
        speedup=((results.get("speed") or {}).get("prefill") or {}).get("speedup"),
        decode_speedup=((results.get("speed") or {}).get("decode") or {}).get("speedup"))


def _job_config(job: Path) -> tuple[dict, set]:
    """(flat config, overridden keys) from a Hydra job folder; empty when it has none."""
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


def expand_sweep(overrides: list[str]) -> tuple[list[list[str]], set[str]]:
    """(the override list of each job in Hydra's basic-sweeper job order, the swept keys): how a multirun expands.
    launch/compose.py (DRY_RUN=1) uses the same expansion."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return BasicSweeper.split_arguments(parsed, None)[0], {o.get_key_element() for o in parsed if o.is_sweep_override()}


def expected_jobs(multirun_yaml: Path) -> dict[Path, str]:
    """{job folder: its swept overrides} for every job a Hydra multirun asked for (from its multirun.yaml), so a job
    that never started (still queued, or after a failure that stopped the basic launcher) is listed too."""
    try:
        hydra_cfg = OmegaConf.to_container(OmegaConf.load(multirun_yaml).hydra, resolve=False)
        if hydra_cfg["sweep"]["subdir"] != "${hydra.job.num}":
            return {}
        jobs, swept = expand_sweep(hydra_cfg["overrides"]["task"])
    except Exception:  # not a sweep we can expand (another sweeper, a custom subdir): its job folders still count
        return {}
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
        import wandb  # seconds to import, and only --wandb needs it

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
    """A W&B run (flat config, summary) as the results.json fields the table uses: every `<task>/<metric>` of the
    summary, dense values from `<task>/drop_<metric>`."""
    tasks = list(cfg.get("eval.tasks") or cfg.get("tasks.names") or [])
    metrics, dense = {}, {}
    for task in tasks:
        prefix = f"{task}/"
        row = {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix) and not
               k[len(prefix):].startswith("drop_")}
        metrics[task] = row
        drops = {k[len(prefix) + 5:]: v for k, v in summary.items() if k.startswith(prefix + "drop_")}
        if drops:
            dense[task] = {m: row[m] + d for m, d in drops.items() if d is not None and row.get(m) is not None}
    results = {
        "model": cfg["model.name"], "method": cfg["method.name"], "target": cfg.get("prune.target", ""),
        "eval_tasks": tasks, "paper_metric": {t: paper_metric(t, metrics[t]) for t in tasks}, "metrics": metrics,
        "average": {"paper": summary["average/paper"]},
        "sparsity": {"requested": summary.get("sparsity/requested", cfg.get("sparsity")),
                     "achieved": summary.get("sparsity/achieved")},
        "params": {"dense": summary.get("params/dense"), "pruned": summary.get("params/pruned")},
        "dense_metrics": dense or None,
    }
    if dense:
        results["dense_average"] = averages(dense)
    return run_from_results(results, url, settings=dict(cfg))
