"""PNG plots of a run's masks: written into the run directory before W&B is touched, and logged to W&B as images.

Each plot is a function that returns what it draws (`kept_per_layer`, `score_histogram`, `vote_histograms`,
`jaccard`) and a drawing step that only hands that to matplotlib, so the tests check the plotted data itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from diet import cache
from diet.targets import owner

# what the dimensions of each target are, for axis labels: (plural, one of them)
UNITS = {"mlp": ("FFN neurons", "neuron"), "heads": ("attention heads", "head"),
         "hidden": ("residual dimensions", "dimension")}


def _pyplot():
    import matplotlib  # seconds to import: only when a run writes its plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    return cache.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def jaccard(per_task_masks: dict[str, dict[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """Task x task overlap of the kept sets (all groups concatenated): 1 = identical masks."""
    tasks = sorted(per_task_masks)
    flat = [torch.cat([per_task_masks[t][g] for g in sorted(per_task_masks[t])]) for t in tasks]
    matrix = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    for i, a in enumerate(flat):
        for j, b in enumerate(flat):
            union = int((a | b).sum())
            matrix[i, j] = int((a & b).sum()) / union if union else 1.0
    return tasks, matrix


def kept_per_layer(masks: dict[str, torch.Tensor], target: str) -> tuple[list[int], list[int], list[int]]:
    """(layers, kept, removed) of a per-layer target (`mlp`, `heads`); empty lists when the run has none."""
    groups = sorted((g for g in masks if g.startswith(f"{target}.")), key=lambda g: int(g.rsplit(".", 1)[1]))
    return ([int(g.rsplit(".", 1)[1]) for g in groups], [int(masks[g].sum()) for g in groups],
            [int((~masks[g]).sum()) for g in groups])


def score_histogram(score: torch.Tensor, keep: torch.Tensor, bins: int = 40) -> dict:
    """Kept and removed dimensions by score on log-spaced bins: residual-stream scores span orders of magnitude
    (Gemma-3 270M's hidden scores have two dimensions far above the rest), so linear bins put nearly all dimensions
    into one bar. {"edges", "kept", "removed", "log"}; scores of 0 count in the first bin, and all-equal or
    non-positive scores fall back to linear bins."""
    score, keep = score.double().flatten(), keep.flatten().bool()
    positive = score[score > 0]
    low = float(positive.min()) if positive.numel() else 0.0
    high = float(score.max())
    use_log = positive.numel() > 0 and high > low
    if use_log:
        edges = torch.logspace(math.log10(low), math.log10(high), bins + 1, dtype=torch.float64)
        edges[0], edges[-1] = low, high  # exact ends (logspace rounds); the clamp below catches the rest
        placed = score.clamp_min(low)
    else:
        edges = torch.linspace(float(score.min()), float(score.max()) + 1e-12, bins + 1, dtype=torch.float64)
        placed = score
    index = (torch.searchsorted(edges, placed, right=True) - 1).clamp(0, bins - 1)
    kept = torch.bincount(index[keep], minlength=bins)
    removed = torch.bincount(index[~keep], minlength=bins)
    return {"edges": edges.tolist(), "kept": kept.tolist(), "removed": removed.tolist(), "log": use_log}


def vote_histograms(votes: dict[str, torch.Tensor], n_tasks: int) -> list[tuple[str, list[int]]]:
    """One histogram per target: (target, how many of its dimensions k = 0..n_tasks tasks kept). Targets are counted
    apart: in `[mlp,heads]` 18 x 4 heads beside 18 x 2048 neurons would be invisible in one histogram."""
    present = {owner(k) for k in votes}
    out = []
    for target in [t for t in UNITS if t in present] + sorted(present - set(UNITS)):
        counts = torch.cat([v.flatten() for k, v in sorted(votes.items()) if owner(k) == target])
        out.append((target, [int((counts == k).sum()) for k in range(n_tasks + 1)]))
    return out


def figures(masks: dict[str, torch.Tensor], per_task_masks: dict, votes: dict,
            scores: dict[str, torch.Tensor] | None):
    """Yields (file name, matplotlib figure) for each plot the run has; the caller saves and closes them."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    per_layer = {"mlp": "kept_per_layer.png", "heads": "kept_heads_per_layer.png"}
    for target, filename in per_layer.items():
        layers, kept, removed = kept_per_layer(masks, target)
        if not layers:
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(layers, kept, color="tab:blue", label="kept")
        ax.bar(layers, removed, bottom=kept, color="tab:gray", alpha=0.5, label="removed")
        ax.set(xlabel="layer", ylabel=UNITS[target][0], title="kept width per layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers, never 2.5
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the bars, never over them
        yield filename, fig
    if scores is not None and "hidden" in scores:
        data = score_histogram(scores["hidden"], masks["hidden"])
        fig, ax = plt.subplots(figsize=(7, 3))
        edges, kept = data["edges"], data["kept"]
        stacked = [k + r for k, r in zip(kept, data["removed"])]
        ax.stairs(kept, edges, fill=True, color="tab:blue", label="kept")
        ax.stairs(stacked, edges, baseline=kept, fill=True, color="tab:gray", alpha=0.6, label="removed")
        if data["log"]:
            ax.set_xscale("log")
        ax.set(xlabel="mean normalised activation score" + (" (log scale)" if data["log"] else ""),
               ylabel=UNITS["hidden"][0], title="kept vs removed dimensions by score")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        yield "kept_by_score.png", fig
    if votes:
        n_tasks = len(per_task_masks)
        panels = vote_histograms(votes, n_tasks)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3), squeeze=False)
        for ax, (target, counts) in zip(axes[0], panels):
            plural, one = UNITS.get(target, ("dimensions", "dimension"))
            ax.bar(range(n_tasks + 1), counts, color="tab:green")
            ax.set(xlabel=f"tasks keeping the {one}", ylabel=plural,
                   title=f"vote counts: {target}" if len(panels) > 1 else "vote counts", xticks=range(n_tasks + 1))
        fig.tight_layout()
        yield "vote_histogram.png", fig
    if len(per_task_masks) >= 2:
        tasks, matrix = jaccard(per_task_masks)
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(tasks), 1 + 0.6 * len(tasks)))
        image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_title("task mask overlap (Jaccard)")
        fig.colorbar(image, ax=ax)
        yield "mask_overlap.png", fig


def write_all(run_dir: Path, masks: dict[str, torch.Tensor], per_task_masks: dict, votes: dict,
              scores: dict[str, torch.Tensor] | None) -> list[Path]:
    plt = _pyplot()
    written = []
    for filename, fig in figures(masks, per_task_masks, votes, scores):
        written.append(_save(fig, run_dir / filename))
        plt.close(fig)
    return written
