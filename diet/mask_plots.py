"""PNG plots of a run's masks: written into the run directory before W&B is touched, and logged to W&B as images."""
from __future__ import annotations

from pathlib import Path

import torch

from diet import cache


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


def write_all(run_dir: Path, masks: dict[str, torch.Tensor], per_task_masks: dict, votes: dict,
              scores: dict[str, torch.Tensor] | None) -> list[Path]:
    plt = _pyplot()
    written = []
    per_layer = {"mlp": ("FFN neurons", "kept_per_layer.png"), "heads": ("attention heads", "kept_heads_per_layer.png")}
    for name, (unit, filename) in per_layer.items():
        groups = sorted((g for g in masks if g.startswith(f"{name}.")), key=lambda g: int(g.rsplit(".", 1)[1]))
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(range(len(groups)), [int(masks[g].sum()) for g in groups], color="tab:blue", label="kept")
        ax.bar(range(len(groups)), [int((~masks[g]).sum()) for g in groups],
               bottom=[int(masks[g].sum()) for g in groups], color="tab:gray", alpha=0.5, label="removed")
        ax.set(xlabel="layer", ylabel=unit, title="kept width per layer")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers, never 2.5
        ax.legend()
        written.append(_save(fig, run_dir / filename))
        plt.close(fig)
    if scores is not None and "hidden" in scores:
        score, keep = scores["hidden"].float(), masks["hidden"]
        fig, ax = plt.subplots(figsize=(7, 3))
        bins = torch.linspace(float(score.min()), float(score.max()) + 1e-12, 41).tolist()
        ax.hist([score[keep].tolist(), score[~keep].tolist()], bins=bins, stacked=True,
                label=["kept", "removed"], color=["tab:blue", "tab:gray"])
        ax.set(xlabel="mean normalised activation score", ylabel="residual dimensions",
               title="kept vs removed dimensions by score")
        ax.legend()
        written.append(_save(fig, run_dir / "kept_by_score.png"))
        plt.close(fig)
    if votes:
        n_tasks = len(per_task_masks)
        counts = torch.cat([v for _, v in sorted(votes.items())])
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(range(n_tasks + 1), [int((counts == k).sum()) for k in range(n_tasks + 1)], color="tab:green")
        ax.set(xlabel="tasks keeping the dimension", ylabel="dimensions", title="vote counts",
               xticks=range(n_tasks + 1))
        written.append(_save(fig, run_dir / "vote_histogram.png"))
        plt.close(fig)
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
        written.append(_save(fig, run_dir / "mask_overlap.png"))
        plt.close(fig)
    return written
