"""Plots: average accuracy against achieved sparsity and against each swept key, one subplot per model, one line per
other setting, error bars the sample sd over seeds.

`panels` computes everything a plot shows (the tests read it), `figure` draws it, `plot_against` writes the PNG. A
method that does not read the plotted key (no vote for generic, magnitude, random and per_task; no scoring for
magnitude and random) is a reference: a faint horizontal line plus a point in a column of its own, never a point at
some value of the key it ignores, and keys it ignores never split its line. Points that coincide are offset sideways
(and the axis says so), so that none hides another. The legend stands beside the axes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from diet import cache
from diet.report.collect import natural_key
from diet.report.tables import Row, Stat, label, plain, show_extra

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
REFERENCE_MARKERS = ("X", "P", "*", "h", "d")
REFERENCE_STYLES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 3)))


@dataclass
class Line:
    label: str
    at: list            # the true x of each point (a number, or the position of a category)
    x: list[float]      # where each point is drawn: `at`, offset sideways when it coincides with another line's
    y: list[float]      # average accuracy, percent
    sd: list[float]     # sample sd over seeds, percent (0 when one run)
    group: str          # lines and references of equal other settings share a colour


@dataclass
class Reference:
    label: str
    y: float            # percent: a horizontal line across the plot
    sd: float | None
    method: str
    group: str
    at: float = 0.0     # its point in the column beside the key's values (tick `(does not vote)`)
    x: float = 0.0      # where that point is drawn: `at`, offset sideways when it coincides with another


@dataclass
class Panel:
    model: str
    xlabel: str
    ticks: list[float]
    tick_labels: list[str]
    lines: list[Line] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    dense: float | None = None
    offset: bool = False  # some points are drawn off their x (coinciding points)
    categorical: bool = False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axis(values: list) -> tuple[list, list[str] | None]:
    """Numeric x when every value is a number, else categorical positions with labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({plain(v) for v in values}, key=natural_key)
    return [labels.index(plain(v)) for v in values], labels


def ignores(row: Row, key: str) -> bool:
    """Whether the row's method leaves config key `key` unread, so that its value says nothing about the row: `vote.*`
    for methods that merge nothing (one pooled ranking, no data, or each task its own mask), `scoring.*` for methods
    that score without it, `calib.*` for methods that read no data (`calib.source` for those that only pool, unless
    it is `text`). Read from the method registry; a method it does not know (a run of another version) reads every
    key."""
    if row.method == "dense" or not key.startswith(("vote.", "scoring.", "calib.")):
        return False
    from diet.methods import METHODS  # imports torch (seconds): only plots against these keys need it

    method = METHODS.get(row.method)
    if method is None:
        return False
    source = (row.runs[0].settings.get("calib.source") if row.runs else None) or "task"
    calibration = method.calibration_for(source)
    if key.startswith("vote."):
        return calibration != "task" or method.per_task_eval
    if key.startswith("scoring."):
        return not method.uses_scoring
    if key == "calib.source":  # pooled methods read task and generic alike; text calibration changes any method
        return calibration == "none" or (method.calibration != "task" and calibration != "text")
    return calibration == "none"


def _offsets(points: list[list], step: float, tolerance: float) -> bool:
    """Spreads, in place, points that would hide each other: [at, y, x] entries of equal `at` and y within
    `tolerance` of each other (transitively) get x values `step` apart, centred on `at`, in list order. True when
    any point moved."""
    moved, order = False, {id(p): i for i, p in enumerate(points)}
    by_at: dict = {}
    for point in points:
        by_at.setdefault(point[0], []).append(point)
    for group in by_at.values():
        clusters: list[list] = []
        for point in sorted(group, key=lambda p: p[1]):  # by y: a cluster is a run of close neighbours
            if clusters and point[1] - clusters[-1][-1][1] <= tolerance:
                clusters[-1].append(point)
            else:
                clusters.append([point])
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            moved = True
            cluster.sort(key=lambda p: order[id(p)])
            for slot, point in enumerate(cluster):
                point[2] = point[0] + (slot - (len(cluster) - 1) / 2) * step
    return moved


def panels(rows: list[Row], key: str, name: str) -> list[Panel]:
    """What a plot of average accuracy against `key` shows, one panel per model. x is the achieved sparsity for
    key `sparsity` (the requested one where a run did not record it); rows whose method ignores `key` are
    references; the dense model is `dense`."""
    pruned = [r for r in rows if r.method != "dense" and r.average.mean is not None]
    if not pruned:
        return []

    def shown(k, value):  # list values as the table shows them (`w/o boolq`), not as a long joined list
        return show_extra(k, value, [r.extras.get(k) for r in pruned]) if isinstance(value, (list, tuple)) else value

    def x_of(row):
        if key == "sparsity":
            return row.achieved if row.achieved is not None else row.sparsity
        return shown(key, row.extras.get(key))

    def others(row):  # the row's other settings, without those its method ignores (generic has no vote.method)
        fields = {"method": row.method, "target": row.target, "sparsity": row.sparsity,
                  **{label(k): shown(k, v) for k, v in row.extras.items() if k != key and not ignores(row, k)}}
        return {k: v for k, v in fields.items() if k != (name if key != "sparsity" else "sparsity")}

    fields = [others(r) for r in pruned]
    varying = {k for f in fields for k in f if len({plain(g.get(k)) for g in fields}) > 1}

    def describe(row, drop_method=False):
        return ", ".join(f"{plain(v)}" if k == "method" else f"{k}={plain(v)}" for k, v in others(row).items()
                         if k in varying and not (drop_method and k == "method"))

    def pooled(group: list[Row]) -> Stat:  # rows that differ only in keys their method ignores: one point
        if len(group) == 1:
            return group[0].average
        stat = Stat.of(run.average for row in group for run in row.runs)
        return stat if stat.mean is not None else Stat.of(row.average.mean for row in group)

    out = []
    for model in sorted({r.model for r in pruned}, key=natural_key):
        mine = [r for r in pruned if r.model == model]
        drawn = [r for r in mine if not ignores(r, key)] or mine  # all ignore it: nothing to set against; draw them
        ignoring = [r for r in mine if r not in drawn]
        xs, labels = _axis([x_of(r) for r in drawn])
        series: dict[str, dict] = {}
        for row, x in zip(drawn, xs):
            series.setdefault(describe(row) or row.method, {}).setdefault(x, []).append(row)
        lines = []
        for text, points in sorted(series.items(), key=lambda kv: natural_key(kv[0])):
            at = sorted(points)
            stats = [pooled(points[x]) for x in at]
            lines.append(Line(text, at, list(at), [100 * s.mean for s in stats], [100 * (s.sd or 0.0) for s in stats],
                              describe(points[at[0]][0], True)))
        kinds = {"vote": "does not vote", "scoring": "no scoring", "calib": "no calibration data"}
        what = kinds.get(key.split(".")[0], "")
        refs: dict[str, list[Row]] = {}
        for row in ignoring:  # one reference per setting: its rows at every value of the ignored key pooled
            refs.setdefault(describe(row) or row.method, []).append(row)
        references = []
        for text, group in sorted(refs.items(), key=lambda kv: natural_key(kv[0])):
            stat = pooled(group)
            references.append(Reference(f"{text} ({what})", 100 * stat.mean, None if stat.sd is None else 100 * stat.sd,
                                        group[0].method, describe(group[0], True)))
        distinct = sorted(set(xs))
        if labels is not None:
            ticks, tick_labels, step = list(range(len(labels))), list(labels), 0.1
        else:
            ticks, tick_labels = distinct, [plain(v) for v in distinct]
            step = 0.03 * ((distinct[-1] - distinct[0]) or max(abs(distinct[0]), 1.0))
        if references:  # their points stand in a column of their own beside the key's values
            column = len(labels) if labels is not None else distinct[-1] + 10 * step
            ticks, tick_labels = [*ticks, column], [*tick_labels, f"({what})"]
            for ref in references:
                ref.at = ref.x = column
        points = [[at, y, at] for line in lines for at, y in zip(line.at, line.y)]
        points += [[ref.at, ref.y, ref.at] for ref in references]
        values = [p[1] for p in points]
        moved = _offsets(points, step, tolerance=0.015 * ((max(values) - min(values)) or 1.0))
        placed = iter(points)
        for line in lines:
            line.x = [next(placed)[2] for _ in line.at]
        for ref in references:
            ref.x = next(placed)[2]
        dense = next((100 * r.average.mean for r in rows if r.model == model and r.method == "dense"
                      and r.average.mean is not None), None)
        xlabel = "achieved sparsity" if key == "sparsity" else name
        out.append(Panel(model, xlabel + ("  (equal points offset sideways)" if moved else ""), ticks, tick_labels,
                         lines, references, dense, moved, labels is not None))
    return out


def figure(rows: list[Row], key: str, name: str):
    """The matplotlib figure of average accuracy vs `key` (achieved sparsity, or an extra), one subplot per model,
    drawn from `panels`; None when there is nothing to plot."""
    shown = panels(rows, key, name)
    if not shown:
        return None
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes[0], shown):
        # a colour per line; a reference takes the colour of the line of its other settings (generic at sparsity 0.2
        # beside diet at 0.2), else one of its own; its method is the line style
        line_colour = [colours[i % len(colours)] for i in range(len(panel.lines))]
        by_group = dict(reversed([(line.group, c) for line, c in zip(panel.lines, line_colour)]))
        for group in dict.fromkeys(r.group for r in panel.references):
            if group not in by_group:
                by_group[group] = colours[(len(panel.lines) + len(set(by_group) - {l.group for l in panel.lines}))
                                          % len(colours)]
        handles = []  # the legend in this order: lines, references, dense
        for i, line in enumerate(panel.lines):
            handles.append(ax.errorbar(line.x, line.y, yerr=line.sd if any(line.sd) else None, capsize=3,
                                       marker=MARKERS[i % len(MARKERS)], label=line.label, color=line_colour[i]))
        methods = list(dict.fromkeys(r.method for r in panel.references))
        for ref in panel.references:  # a faint line across, and a point in the references' own column
            kind = methods.index(ref.method)
            style = dict(color=by_group[ref.group], linestyle=REFERENCE_STYLES[kind % len(REFERENCE_STYLES)],
                         marker=REFERENCE_MARKERS[kind % len(REFERENCE_MARKERS)])
            ax.axhline(ref.y, linewidth=1, alpha=0.55, **{**style, "marker": None})
            ax.errorbar([ref.x], [ref.y], yerr=[ref.sd] if ref.sd else None, capsize=3, markersize=7,
                        **{**style, "linestyle": "none"})
            handles.append(Line2D([], [], linewidth=1.3, label=ref.label, **style))
        if panel.dense is not None:
            handles.append(ax.axhline(panel.dense, color="black", linestyle="--", linewidth=1, label="dense"))
        if len(panel.ticks) <= 8:  # few values: tick exactly those (one point gets a readable axis too)
            rotate = 30 if max(map(len, panel.tick_labels)) > 6 else 0
            ax.set_xticks(panel.ticks, panel.tick_labels, rotation=rotate)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8))
        all_x = [x for line in panel.lines for x in line.x] + [ref.x for ref in panel.references]
        low, high = min(all_x), max(all_x)
        pad = 0.5 if panel.categorical else 0.08 * ((high - low) or max(abs(low), 1.0))
        ax.set_xlim(low - pad, high + pad)
        ax.set_title(panel.model)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel("average accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0)  # beside the axes, never over the data
    return fig


def plot_against(rows: list[Row], key: str, name: str, path: Path) -> Path | None:
    """Writes `figure(rows, key, name)` to `path` (PNG); None when there is nothing to plot."""
    fig = figure(rows, key, name)
    if fig is None:
        return None
    cache.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    _pyplot().close(fig)
    return path


class SpeedPoint(NamedTuple):
    series: str           # a method and target with the settings that tell its rows apart
    speedup: float        # measured prefill speed-up
    accuracy: float       # average accuracy, percent
    sd: float | None      # its sd over seeds, percent
    on_front: bool        # no other row is both at least as fast and at least as accurate, and better in one
    sparsity: float | None


def speed_points(rows: list[Row]) -> dict[str, list[SpeedPoint]]:
    """Per model, every row with a measured speed-up, as a SpeedPoint."""
    out: dict[str, list] = {}
    timed = [r for r in rows if r.speedup is not None and r.average.mean is not None]
    varying = {}  # per method, the settings whose value differs between its timed rows
    for row in timed:
        for key, value in row.extras.items():
            varying.setdefault(row.method, {}).setdefault(key, set()).add(plain(value))
    for model in dict.fromkeys(r.model for r in timed):
        points = [(describe_row(r, {k for k, v in varying.get(r.method, {}).items() if len(v) > 1}), r.speedup,
                   100 * r.average.mean, None if r.average.sd is None else 100 * r.average.sd, r.sparsity)
                  for r in timed if r.model == model]
        out[model] = [SpeedPoint(*p[:4], not any(q[1] >= p[1] and q[2] >= p[2] and (q[1] > p[1] or q[2] > p[2])
                                                 for q in points), p[4]) for p in points]
    return out


def describe_row(row: Row, keys=None) -> str:
    settings = ", ".join(f"{label(k)}={plain(v)}" for k, v in row.extras.items()
                         if v is not None and (keys is None or k in keys) and not ignores(row, k))
    return f"{row.method} {row.target}" + (f" ({settings})" if settings else "")


def speed_figure(shown: dict):
    """Average accuracy against measured prefill speed-up: one colour and marker per series (its sparsities joined
    by a thin line, each point labelled with its sparsity), the Pareto front over all points in grey."""
    plt = _pyplot()
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, len(shown), figsize=(7 * len(shown), 5), squeeze=False)
    for ax, (model, points) in zip(axes[0], shown.items()):
        series = list(dict.fromkeys(p.series for p in points))
        for i, name in enumerate(series):
            mine = sorted((p for p in points if p.series == name), key=lambda p: (p.sparsity is None, p.sparsity or 0))
            colour, marker = colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], MARKERS[i % len(MARKERS)]
            ax.errorbar([p.speedup for p in mine], [p.accuracy for p in mine], yerr=[p.sd or 0 for p in mine],
                        capsize=3, marker=marker, color=colour, linestyle="-", linewidth=0.6, label=name)
            for p in mine:
                if p.sparsity is not None:
                    ax.annotate(f"{p.sparsity:g}", (p.speedup, p.accuracy), xytext=(4, 3), textcoords="offset points",
                                fontsize=6, color=colour)
        front = sorted((p.speedup, p.accuracy) for p in points if p.on_front)
        ax.plot([x for x, _ in front], [y for _, y in front], color="gray", linewidth=1.5, alpha=0.5, zorder=0,
                label="Pareto front")
        ax.set(title=f"{model} (points labelled with their sparsity)",
               xlabel="measured prefill speed-up over dense (x)", ylabel="average accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def plot_speed(rows: list[Row], path: Path) -> Path | None:
    shown = speed_points(rows)
    if not shown:
        return None
    fig = speed_figure(shown)
    cache.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    _pyplot().close(fig)
    return path


def write_plots(rows: list[Row], extras: list[str], out: Path) -> list[Path]:
    written = [plot_against(rows, "sparsity", "sparsity", out / "avg_vs_sparsity.png"),
               plot_speed(rows, out / "avg_vs_speedup.png")]
    for key in extras:
        name = re.sub(r"[^A-Za-z0-9]+", "_", label(key)).strip("_")
        written.append(plot_against(rows, key, label(key), out / f"avg_vs_{name}.png"))
    return [p for p in written if p is not None]
