"""Plots: average accuracy against sparsity and against each swept key, one subplot per model, one line per other
setting, error bars the sample sd over seeds."""
from __future__ import annotations

import re
from pathlib import Path

from diet import cache
from diet.report.collect import natural_key
from diet.report.tables import Row, label, plain, show_extra


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


def plot_against(rows: list[Row], key: str, name: str, path: Path) -> Path | None:
    """Average accuracy vs `key` (sparsity or an extra), one subplot per model, one line per other setting."""
    pruned = [r for r in rows if r.method != "dense" and r.average.mean is not None]
    if not pruned:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    models = sorted({r.model for r in pruned}, key=natural_key)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)

    def shown(k, value):  # list values as the table shows them (`w/o boolq`), not as a long joined list
        return show_extra(k, value, [r.extras.get(k) for r in pruned]) if isinstance(value, (list, tuple)) else value

    def x_of(row):
        return row.sparsity if key == "sparsity" else shown(key, row.extras.get(key))

    def others(row):
        fields = {"method": row.method, "target": row.target, "sparsity": row.sparsity,
                  **{label(k): shown(k, v) for k, v in row.extras.items() if k != key}}
        return {k: v for k, v in fields.items() if k != (name if key != "sparsity" else "sparsity")}

    varying = {k for k in others(pruned[0]) if len({plain(others(r)[k]) for r in pruned}) > 1}
    for ax, model in zip(axes[0], models):
        mine = [r for r in pruned if r.model == model]
        xs, labels = _axis([x_of(r) for r in mine])
        series: dict[str, list] = {}
        for row, x in zip(mine, xs):
            line = ", ".join(f"{plain(v)}" if k == "method" else f"{k}={plain(v)}"
                             for k, v in others(row).items() if k in varying) or row.method
            series.setdefault(line, []).append((x, row.average.mean, row.average.sd))
        for line, points in sorted(series.items(), key=lambda kv: natural_key(kv[0])):
            points.sort(key=lambda p: p[0])
            errors = [100 * (p[2] or 0.0) for p in points]
            ax.errorbar([p[0] for p in points], [100 * p[1] for p in points], yerr=errors if any(errors) else None,
                        marker="o", capsize=3, label=line)
        for dense in [r for r in rows if r.model == model and r.method == "dense" and r.average.mean is not None][:1]:
            ax.axhline(100 * dense.average.mean, color="black", linestyle="--", linewidth=1, label="dense")
        distinct = sorted(set(xs))
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        elif len(distinct) <= 8:  # few numeric values: tick exactly those (one point gets a readable axis too)
            ax.set_xticks(distinct, [plain(v) for v in distinct])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8))
        if len(distinct) == 1:
            ax.set_xlim(distinct[0] - 0.5 if labels is not None else distinct[0] * 0.9 - 0.05,
                        distinct[0] + 0.5 if labels is not None else distinct[0] * 1.1 + 0.05)
        ax.set_title(model)
        ax.set_xlabel(name)
        ax.set_ylabel("average accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cache.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def write_plots(rows: list[Row], extras: list[str], out: Path) -> list[Path]:
    written = [plot_against(rows, "sparsity", "sparsity", out / "avg_vs_sparsity.png")]
    for key in extras:
        name = re.sub(r"[^A-Za-z0-9]+", "_", label(key)).strip("_")
        written.append(plot_against(rows, key, label(key), out / f"avg_vs_{name}.png"))
    return [p for p in written if p is not None]
