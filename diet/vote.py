"""Vote stage: scores from profile statistics, per-task keep-masks, and their merge into one mask.

Masks are dicts of bool tensors keyed by group: `hidden` (one residual mask shared by every layer) or `mlp.<i>`.
Every ordering is explicit and stable, so the same statistics give a bit-identical mask.

Merge rule (our reading of the paper's "majority vote"): a dimension gets one vote from each task whose own mask keeps
it; it is kept when votes / n_tasks >= threshold (strict majority when threshold is None). With `exact_budget`, the
voted set is then filled or trimmed to exactly the kept count, ranking by (votes, mean normalised score, -index).
Note that with an exact budget the final mask is the top of that ranking whatever the threshold: the threshold only
changes the result when `vote.exact_budget=false` (then the achieved sparsity is whatever the vote gives).
"""
from __future__ import annotations

import math

import torch

from diet import DietError

SCORINGS = ("act_l1", "act_l2", "act_max")


def point_score(stats: dict[str, torch.Tensor], scoring: str) -> torch.Tensor:
    count = stats["count"].clamp_min(1.0)
    if scoring == "act_l1":
        return (stats["sum_abs"] / count).cpu()
    if scoring == "act_l2":
        return (stats["sum_sq"] / count).sqrt().cpu()
    if scoring == "act_max":
        return stats["max_abs"].cpu()
    raise ValueError(f"unknown scoring {scoring!r}")


def normalise(score: torch.Tensor) -> torch.Tensor:
    """Scale-free score: divide by the mean, so groups and tasks of different magnitude can be averaged."""
    return score / score.mean().clamp_min(torch.finfo(score.dtype).tiny)


def group_scores(stats: dict[str, dict[str, torch.Tensor]], scoring: str, target: str) -> dict[str, torch.Tensor]:
    """One score vector per mask group. For `hidden`, the residual stream is scored at every layer input and the
    normalised scores are averaged over those points (later layers have far larger activations; a plain sum would
    let the last few layers decide alone)."""
    if target == "mlp":
        return {point: point_score(s, scoring) for point, s in sorted(stats.items(), key=lambda kv: _index(kv[0]))}
    points = [normalise(point_score(s, scoring)) for _, s in sorted(stats.items(), key=lambda kv: _index(kv[0]))]
    return {"hidden": torch.stack(points).mean(dim=0)}


def _index(point: str) -> int:
    return int(point.rsplit(".", 1)[1])


def kept_count(width: int, sparsity: float) -> int:
    removed = math.floor(sparsity * width + 0.5)
    return max(1, width - removed)


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores; ties go to the lower index (stable sort)."""
    order = torch.sort(score, descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def task_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return {group: top_k_mask(score, kept_count(score.numel(), sparsity)) for group, score in scores.items()}


def rank(votes: torch.Tensor, mean_score: torch.Tensor) -> torch.Tensor:
    """Indices ordered by votes (desc), then mean normalised score (desc), then index (asc)."""
    by_score = torch.sort(mean_score, descending=True, stable=True).indices
    by_votes = torch.sort(votes[by_score], descending=True, stable=True).indices
    return by_score[by_votes]


def required_votes(n_tasks: int, threshold: float | None) -> int:
    if threshold is None:
        return n_tasks // 2 + 1
    return max(1, math.ceil(threshold * n_tasks - 1e-9))


def merge(per_task_masks: dict[str, dict[str, torch.Tensor]], per_task_scores: dict[str, dict[str, torch.Tensor]],
          sparsity: float, threshold: float | None = None, exact_budget: bool = True
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Merge per-task masks by vote. Returns (mask per group, vote count per group)."""
    tasks = sorted(per_task_masks)
    need = required_votes(len(tasks), threshold)
    masks, votes_by_group = {}, {}
    for group in per_task_masks[tasks[0]]:
        votes = torch.stack([per_task_masks[t][group] for t in tasks]).sum(dim=0)
        voted = votes >= need
        if exact_budget:
            mean_score = torch.stack([normalise(per_task_scores[t][group]) for t in tasks]).mean(dim=0)
            keep = kept_count(votes.numel(), sparsity)
            mask = torch.zeros_like(voted)
            mask[rank(votes, mean_score)[:keep]] = True
        else:
            if not voted.any():
                raise DietError(f"vote.threshold: {threshold} keeps no dimension of {group} "
                                f"(needs {need} of {len(tasks)} task votes; the most any dimension got is "
                                f"{int(votes.max())}); allowed: a lower threshold or vote.exact_budget=true")
            mask = voted
        masks[group], votes_by_group[group] = mask, votes
    return masks, votes_by_group


def random_masks(widths: dict[str, int], sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {group: top_k_mask(torch.rand(width, generator=generator), kept_count(width, sparsity))
            for group, width in widths.items()}


def achieved_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total
