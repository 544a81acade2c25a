"""Tables: runs that differ only in `seed` form one row (mean ± sample standard deviation over the runs, n), the best
per column among rows of equal achieved sparsity in bold, and optionally each row's difference to a baseline method.

Runs of one configuration from two sweeps land in one row like seeds would; a seed that ran more than once shows as
such in the row's seed list (`0,0,1`) and in a note under the table. report.csv keeps every run on its own line, with
lm-eval's per-task stderr.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from diet.report.collect import Collected, Run, natural_key, stderr_name

METHOD_ORDER = ("dense", "magnitude", "random", "generic", "diet", "per_task")
REFERENCES = ("dense", "per_task")  # shown, never ranked: the unpruned model and one model per task
# Config keys that never become a column: where outputs go, how runs are logged, what does not change a number, and
# the seed (the axis a row averages over).
IGNORED = ("hydra", "cache_dir", "device", "logger", "stage", "eval.log_samples", "eval.dense", "eval.speed", "prune.save",
           "seed")  # what changes no metric: eval.speed times the pruned model before its evaluation
# The table's fixed columns, by their config key.
BASE_CONFIG_KEYS = ("model.name", "method.name", "prune.target", "sparsity")
LABELS = {"model.name": "model", "method.name": "method", "scoring.name": "scoring", "tasks.names": "tasks",
          "prune.target": "target"}


@dataclass
class Stat:
    """Mean, sample standard deviation (None for one value) and count of the non-missing values."""
    mean: float | None
    sd: float | None
    n: int

    @staticmethod
    def of(values) -> "Stat":
        values = [v for v in values if v is not None]
        if not values:
            return Stat(None, None, 0)
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        return Stat(mean, sd, len(values))


@dataclass
class Row:
    model: str
    method: str
    target: str
    sparsity: float | None
    extras: dict
    runs: list[Run]
    scores: dict[str, Stat]
    average: Stat
    achieved: float | None = None
    params_ratio: float | None = None
    param_sparsity: float | None = None
    speedup: float | None = None
    seeds: list = field(default_factory=list)
    decode_speedup: float | None = None
    param_budget: float | None = None
    bold: set = field(default_factory=set)
    baseline: "Difference | None" = None


@dataclass
class Difference:
    """This row's average minus the baseline's: paired by seed (mean ± sd of the per-seed differences, n pairs) when
    both rows ran the same two or more seeds once each, else unpaired (difference of the means ± sqrt(sd_a² + sd_b²),
    the spread of one run's difference; a missing sd counts as 0)."""
    mean: float
    sd: float | None
    n: int
    paired: bool


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys (beyond the fixed four, and never the seed) whose value differs between runs."""
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


def _config_key(run: Run, extras: list[str]) -> str:
    return json.dumps([run.model, run.method, run.target, run.sparsity, list(run.scores),
                       [run.settings.get(k) for k in extras]], sort_keys=True, default=str)


def _row(runs: list[Run], extras: list[str], tasks: list[str]) -> Row:
    first = runs[0]
    achieved = Stat.of(r.achieved for r in runs).mean
    ratio = Stat.of(r.params_ratio for r in runs).mean
    return Row(first.model, first.method, first.target, first.sparsity, {k: first.settings.get(k) for k in extras},
               runs, {t: Stat.of(r.scores.get(t) for r in runs) for t in tasks}, Stat.of(r.average for r in runs),
               achieved, ratio, Stat.of(r.param_sparsity for r in runs).mean, Stat.of(r.speedup for r in runs).mean,
               sorted((r.settings.get("seed") for r in runs), key=natural_key),
               Stat.of(r.decode_speedup for r in runs).mean, first.param_budget)


def _dense_rows(model_runs: list[Run], extras: list[str], tasks: list[str]) -> list[Row]:
    """One dense row per distinct dense result (the dense model evaluated once per model and evaluation setting)."""
    seen: dict[str, Run] = {}
    for run in model_runs:
        if run.dense:
            seen.setdefault(json.dumps(run.dense, sort_keys=True), run)
    rows = []
    for run in seen.values():
        values = [v for v in run.dense.values() if v is not None]
        average = run.dense_average if run.dense_average is not None else (
            sum(values) / len(values) if values else None)
        shown = {k: run.settings.get(k) for k in extras} if len(seen) > 1 else {}
        rows.append(Row(run.model, "dense", "", None, shown, [run], {t: Stat.of([run.dense.get(t)]) for t in tasks},
                        Stat.of([average]), 0.0, 1.0, []))
    return rows


def build_table(runs: list[Run], baseline: str | None = None
                ) -> tuple[list[str], dict[str, str], list[str], list[Row]]:
    """(tasks in order, metric per task, varying keys, rows: per model its dense row(s), then one row per
    configuration, its runs over seeds averaged)."""
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
        rows.extend(_dense_rows(mine, extras, tasks))
        groups: dict[str, list[Run]] = {}
        for run in sorted(mine, key=lambda r: natural_key(r.where)):
            groups.setdefault(_config_key(run, extras), []).append(run)
        pruned = [_row(group, extras, tasks) for group in groups.values()]
        pruned.sort(key=lambda row: (row.sparsity, row.target,
                                     [_sort_value(row.extras[k], [r.extras[k] for r in pruned]) for k in extras],
                                     _method_rank(row.method), natural_key(row.runs[0].where)))
        rows.extend(pruned)
    mark_best(rows, tasks)
    if baseline:
        attach_baseline(rows, baseline)
    return tasks, metric, extras, rows


def _achieved_key(row: Row):
    """What rows are compared at: with prune.budget=params, the parameter budget they asked for, so methods
    removing different structures (neurons, heads, whole layers) rank against each other although none can hit a
    budget exactly (the table shows what each removed); else the achieved decoder parameter sparsity (to 0.01) when
    the runs recorded it; else the target and its achieved sparsity of dimensions."""
    if row.param_budget is not None:
        return ("param_budget", round(row.param_budget, 4))
    if row.param_sparsity is not None:
        return ("params", round(row.param_sparsity, 2))
    value = row.achieved if row.achieved is not None else row.sparsity
    return (row.target, None if value is None else round(value, 4))


def mark_best(rows: list[Row], tasks: list[str]) -> None:
    """Bold the best mean per column among the ranked rows of the same model and achieved sparsity (of parameters
    where recorded, else the same target's dimensions; two rows at least): a run that pruned less is never ranked
    against one that pruned more."""
    blocks: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.method not in REFERENCES:
            blocks.setdefault((row.model, _achieved_key(row)), []).append(row)
    for block in blocks.values():
        if len(block) < 2:
            continue
        for column in [*tasks, "average"]:
            values = [(r, (r.average if column == "average" else r.scores[column]).mean) for r in block]
            values = [(r, v) for r, v in values if v is not None]
            if not values:
                continue
            best = max(v for _, v in values)
            for r, v in values:
                if v >= best - 1e-12:
                    r.bold.add(column)


def difference(row: Row, base: Row) -> Difference | None:
    mine = {r.settings.get("seed"): r.average for r in row.runs if r.average is not None}
    theirs = {r.settings.get("seed"): r.average for r in base.runs if r.average is not None}
    once = (len(mine) == len([r for r in row.runs if r.average is not None])
            and len(theirs) == len([r for r in base.runs if r.average is not None]))
    if once and len(mine) >= 2 and set(mine) == set(theirs):
        stat = Stat.of(mine[s] - theirs[s] for s in mine)
        return Difference(stat.mean, stat.sd, stat.n, True)
    if row.average.mean is None or base.average.mean is None:
        return None
    spread = math.sqrt((row.average.sd or 0.0) ** 2 + (base.average.sd or 0.0) ** 2)
    return Difference(row.average.mean - base.average.mean, spread if row.average.n + base.average.n > 2 else None,
                      min(row.average.n, base.average.n), False)


def attach_baseline(rows: list[Row], method: str) -> None:
    """Each pruned row's difference to the `method` row of the same model, target and achieved sparsity (the one with
    the same other settings when several match; none when that is still ambiguous)."""
    for row in rows:
        if row.method in ("dense", method):
            continue
        candidates = [b for b in rows if b.method == method and (b.model, _achieved_key(b)) ==
                      (row.model, _achieved_key(row))]
        if len(candidates) > 1:
            candidates = [b for b in candidates if b.extras == row.extras]
        if len(candidates) == 1:
            row.baseline = difference(row, candidates[0])


# ----------------------------------------------------------------------------------------------------- formatting

def _sort_value(value, all_values: list) -> list:
    """Natural order; a list value (tasks.names in a leave-one-out sweep) by where what it lacks stands in the mix."""
    if isinstance(value, (list, tuple)):
        union = list(dict.fromkeys(x for v in all_values if isinstance(v, (list, tuple)) for x in v))
        return natural_key(" ".join(f"{union.index(x):04d}" for x in union if x not in value))
    return natural_key(plain(value))


def _method_rank(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def plain(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def show_extra(key: str, value, all_values: list) -> str:
    """A list column (e.g. tasks.names in a leave-one-out sweep) shows what it lacks of the union: `w/o boolq`."""
    if isinstance(value, (list, tuple)):
        union = [x for v in all_values if isinstance(v, (list, tuple)) for x in v]
        union = list(dict.fromkeys(union))
        lacking = [x for x in union if x not in value]
        if lacking and len(lacking) < len(union) / 2:
            return "w/o " + ",".join(map(str, lacking))
        if not lacking:
            return "all"
    return plain(value)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def show_stat(stat: Stat) -> str:
    """`85.2 ± 1.3` (percent; ± the sample sd over the row's runs), or the one value when there is only one."""
    if stat.mean is None:
        return "–"
    return percent(stat.mean) + (f" ± {100 * stat.sd:.1f}" if stat.sd is not None else "")


def show_difference(diff: Difference | None) -> str:
    if diff is None:
        return "–"
    text = f"{100 * diff.mean:+.1f}" + (f" ± {100 * diff.sd:.1f}" if diff.sd is not None else "")
    return text + ("" if diff.paired else " (unpaired)")


def label(key: str) -> str:
    return LABELS.get(key, key)


def params_differ(rows, tolerance=0.005) -> bool:
    """Rows that asked for the same sparsity but removed different shares of the decoder's parameters (a rotated
    width adds shortcut matrices, heads and neurons cost differently): then the table must say what each removed."""
    removed: dict[tuple, list[float]] = {}
    for row in rows:
        if row.method != "dense" and row.param_sparsity is not None:
            removed.setdefault((row.model, row.sparsity), []).append(row.param_sparsity)
    return any(max(v) - min(v) > tolerance for v in removed.values())


def markdown(tasks, metric, extras, rows, found: Collected, sources: list[str], baseline: str | None = None) -> str:
    show_achieved = any(r.achieved is not None and r.sparsity is not None and abs(r.achieved - r.sparsity) > 1e-4
                        for r in rows if r.method != "dense")
    multi = any(len(r.runs) > 1 for r in rows)
    budgets = any(r.param_budget is not None for r in rows)
    show_params = budgets or params_differ(rows)
    show_params = show_params and any(r.param_sparsity is not None for r in rows if r.method != "dense")
    show_speed = any(r.speedup is not None for r in rows)
    header = ["model", "method", "target", "sparsity", *(["achieved"] if show_achieved else []),
              *(["params removed"] if show_params else []), *[label(k) for k in extras],
              *[f"{t} ({metric[t]})" for t in tasks], "average", *(["prefill ×", "decode ×"] if show_speed else []),
              *(["n", "seeds"] if multi else []), *([f"Δ average vs {baseline}"] if baseline else [])]
    n_left = 4 + show_achieved + show_params + len(extras)
    lines = ["# DIET report", "", f"{len(found.runs)} runs from {', '.join(sources)}.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * n_left + ["---:"] * (len(header) - n_left)) + "|"]
    all_values = {k: [r.extras.get(k) for r in rows] for k in extras}
    for row in rows:
        def cell(column, stat):
            text = show_stat(stat)
            return f"**{text}**" if column in row.bold else text

        cells = [row.model, row.method, row.target or "–", "0" if row.method == "dense" else plain(row.sparsity)]
        if show_achieved:
            cells.append("–" if row.achieved is None else f"{row.achieved:.4f}")
        if show_params:
            cells.append("0" if row.method == "dense" else "–" if row.param_sparsity is None
                         else f"{row.param_sparsity:.3f}")
        cells += [show_extra(k, row.extras.get(k), all_values[k]) if k in row.extras else "" for k in extras]
        cells += [cell(t, row.scores[t]) for t in tasks] + [cell("average", row.average)]
        if show_speed:
            cells += ["–" if v is None else f"{v:.2f}" for v in (row.speedup, row.decode_speedup)]
        if multi:
            cells += [str(len(row.runs)), plain(row.seeds) if row.method != "dense" else ""]
        if baseline:
            cells.append("" if row.method in ("dense", baseline) else show_difference(row.baseline))
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Accuracy in %, zero-shot, each task with its conventional metric (in the header); `average` is "
            "`average.paper`. " + ("Runs that differ only in `seed` are one row: mean ± sample standard deviation "
                                   "over its n runs. " if multi else "")
            + "`sparsity` is the requested fraction of the target's dimensions removed"
            + (" (with prune.budget=params: of the decoder layers' parameters)" if budgets else "")
            + (", `achieved` the fraction of the target's dimensions actually removed (width rounding, or the vote)"
               if show_achieved else "")
            + (", `params removed` the fraction of the decoder layers' parameters actually removed" if show_params
               else "")
            + "; each run's numbers, lm-eval's stderr and folder are in report.csv. Bold: best per column among rows "
            + ("of the same model and parameter budget" if budgets else
               "of the same model, target and achieved sparsity")
            + " (dense and per_task are references, not ranked).")
    if show_speed:
        note += (" `prefill ×` / `decode ×`: measured speed-up of the pruned model over the dense one in the same "
                 "process (eval.speed; median of interleaved repeats), the mean over the row's timed runs.")
    if baseline:
        note += (f" Δ: the row's average minus {baseline}'s at the same "
                 + ("parameter budget" if budgets else "achieved sparsity") + ", in points; paired by seed "
                 "(mean ± sd of the per-seed differences) when both ran the same seeds, else `(unpaired)`: the "
                 "difference of the means ± sqrt(sd² + sd²).")
    lines += ["", note]
    repeats = [r for r in rows if r.method != "dense" and len(set(map(str, r.seeds))) < len(r.seeds)]
    if repeats:
        lines += ["", f"{len(repeats)} configurations ran more than once with the same seed (e.g. in two sweeps); "
                  "their runs are merged like seeds: " + "; ".join(
                      f"{r.method} {plain(r.sparsity)} seeds {plain(r.seeds)} ({', '.join(x.where for x in r.runs)})"
                      for r in repeats)]
    if found.profile_only:
        lines += ["", f"{len(found.profile_only)} profile-only jobs (stage=profile) have no results by design: "
                  + ", ".join(found.profile_only)]
    lines += ["", "## Failed or missing runs", ""]
    lines += [f"- `{m.where}`: {m.reason}" for m in found.missing] or ["None."]
    return "\n".join(lines) + "\n"


def csv_text(tasks, metric, extras, rows) -> str:
    """Every run on its own line (dense rows first per model), raw floats, with lm-eval's stderr per task."""
    out = io.StringIO()
    writer = csv.writer(out)
    all_runs = [run for row in rows if row.method != "dense" for run in row.runs]
    params = any(run.param_budget is not None for run in all_runs) or params_differ(rows)
    speed = any(run.speedup is not None for run in all_runs)
    writer.writerow(["model", "method", "target", "sparsity", *extras, "seed", "achieved_sparsity", "params_ratio",
                     *(["decoder_param_sparsity"] if params else []),
                     *[c for t in tasks for c in (f"{t}/{metric[t]}", f"{t}/{stderr_name(metric[t])}")], "average",
                     *(["prefill_speedup", "decode_speedup"] if speed else []), "run"])
    for row in rows:
        for run in row.runs:
            dense = row.method == "dense"
            values = run.dense if dense else run.scores
            writer.writerow([row.model, row.method, row.target, 0.0 if dense else row.sparsity,
                             *[plain(row.extras[k]) if k in row.extras else "" for k in extras],
                             "" if dense else run.settings.get("seed"), 0.0 if dense else run.achieved,
                             1.0 if dense else run.params_ratio,
                             *([0.0 if dense else run.param_sparsity] if params else []),
                             *[c for t in tasks for c in (values.get(t), None if dense else run.stderr.get(t))],
                             row.average.mean if dense else run.average,
                             *([None, None] if speed and dense else [run.speedup, run.decode_speedup] if speed else []),
                             run.where])
    return out.getvalue()
