"""Scorings: named functions from one hook point's profile statistics (and weight norms) to per-dimension scores.

  act_l1: mean |x|;  act_l2: sqrt(mean x^2);  act_max: max |x|;
  wanda:  sqrt(mean x^2) * ||W_d||_2, the structured form of Wanda's |W| * ||X||: the activation norm of the
          dimension times the L2 norm of the weights that touch it (the target's `weight_norms`). Wanda's ||X|| is
          sqrt(sum x^2); we use sqrt(mean x^2), which differs by sqrt(token count), a constant per hook point that
          the per-group (and, for `hidden`, per-point) normalisation removes, so masks are the same either way.
A target then aggregates the per-point scores into its mask groups (`hidden` averages normalised point scores).
Adding a scoring: one function registered in SCORINGS, plus conf/scoring/<name>.yaml.
"""
from __future__ import annotations

from typing import Callable

import torch


def _mean_abs(stats, norms):
    return stats["sum_abs"] / stats["count"].clamp_min(1.0)


def _rms(stats, norms):
    return (stats["sum_sq"] / stats["count"].clamp_min(1.0)).sqrt()


def _max_abs(stats, norms):
    return stats["max_abs"]


def _wanda(stats, norms):
    return _rms(stats, None).cpu() * norms.float().cpu()


# name -> (function(stats of one point, weight norms of that point or None) -> scores, needs weight norms)
SCORINGS: dict[str, tuple[Callable, bool]] = {
    "act_l1": (_mean_abs, False),
    "act_l2": (_rms, False),
    "act_max": (_max_abs, False),
    "wanda": (_wanda, True),
}


def needs_weight_norms(scoring: str) -> bool:
    return SCORINGS[scoring][1]


def point_score(stats: dict[str, torch.Tensor], scoring: str, norms: torch.Tensor | None = None) -> torch.Tensor:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}")
    return SCORINGS[scoring][0](stats, norms).cpu()


def group_scores(stats: dict[str, dict[str, torch.Tensor]], scoring: str, target,
                 weight_norms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One score vector per mask group of `target` (a Target or its name) from one task's statistics."""
    from diet import targets

    target = targets.get(target) if isinstance(target, str) else target
    points = sorted(stats, key=targets.group_index)
    per_point = {}
    for point in points:
        norms = None
        if needs_weight_norms(scoring):
            if weight_norms is None:
                raise ValueError(f"scoring {scoring!r} needs weight_norms=target.weight_norms(model, adapter)")
            expected = stats[point]["sum_sq"].shape
            if point not in weight_norms or weight_norms[point].shape != expected:
                found = tuple(weight_norms[point].shape) if point in weight_norms else "missing"
                raise ValueError(f"weight_norms[{point!r}]: {found}; expected shape {tuple(expected)}")
            norms = weight_norms[point]
        per_point[point] = point_score(stats[point], scoring, norms)
    return target.aggregate(per_point)


def weight_norms(model, adapter, target) -> dict[str, torch.Tensor]:
    """The target's per-dimension weight norms, keyed like its hook points (float32, cpu)."""
    from diet import targets

    target = targets.get(target) if isinstance(target, str) else target
    return target.weight_norms(model, adapter)


def magnitude_scores(norms: dict[str, torch.Tensor], target) -> dict[str, torch.Tensor]:
    """Data-free scores (method=magnitude): the weight norms alone, aggregated to groups like `group_scores`."""
    from diet import targets

    target = targets.get(target) if isinstance(target, str) else target
    return target.aggregate({point: norms[point].float().cpu() for point in sorted(norms, key=targets.group_index)})
