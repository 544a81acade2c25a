"""Scorings: named functions from one hook point's statistics (and weight norms) to per-dimension scores.

A `Scoring` declares the statistics it reads (`diet/stats.py`), whether it needs the target's weight norms, and how
the per-channel scores of a group of channels (an attention head's head_dim channels) become the group's score:
  sum / l2 / max / mean   reduce the channels' scores (act_l1 = sum of the channels' mean |x| = the mean over
                          tokens of the head output's L1 norm; act_l2 = the L2 norm of the channels' RMS = the RMS
                          over tokens of its L2 norm; act_max = the largest channel's)
  sum_sq                  the sum of the channels' squared scores (FLAP squares its attention metric, then sums a
                          head's channels in its uniform structures)
  stats                   reduce the statistics (each by its own rule) and the weight norms (L2) to the group
                          first, then score once per group
Targets whose dimensions are single channels (mlp, hidden) are unaffected by the choice.

  act_l1: mean |x|;  act_l2: sqrt(mean x^2);  act_max: max |x|;
  act_var: the variance of x over calibration tokens (mean x^2 - (mean x)^2; a head: the sum over its channels),
          the input-fluctuation term that FLAP weights by the squared norm of the weights the channel feeds. This
          unweighted form is ours, the worked example of docs/architecture.md, not FLAP's metric.
  wanda:  sqrt(mean x^2) * ||W_d||_2: the activation RMS of the dimension times the L2 norm of the weights that
          touch it (the target's `weight_norms`; for a head, its RMS L2 norm times the Frobenius norm of its o_proj
          columns). Ours: a structured, per-dimension reading of unstructured Wanda's |W_ij| * ||X_j||, with the L2
          norm of the whole column in place of one weight. Its square is E[x^2] * ||W_:,j||^2, i.e. FLAP's WIFV
          with the raw second moment in place of the variance. It is NOT Wanda-sp (below: the mean |W| of the
          column, and a head's channels summed). Wanda's ||X|| is sqrt(sum x^2); we use sqrt(mean x^2), which
          differs by sqrt(token count), a constant per hook point that the per-group (and, for `hidden`,
          per-point) normalisation removes, so masks are the same either way. The name stays: results of earlier
          versions say scoring=wanda and mean this.

The literature's channel metrics, each read at a target's output-projection input (mlp: down_proj's, heads:
o_proj's), so `method=diet scoring=wifv` is task-voted FLAP and `method=diet scoring=wanda_sp` task-voted Wanda-sp:
  ifv:      FLAP's IFV, the variance of the channel's input over calibration tokens (exact: E[x^2] - E[x]^2 over
            all tokens; see diet/flap.py for the reference's running estimate); a head: sum of squared channels.
  wifv:     FLAP's WIFV = that variance times ||W_:,j||^2, the squared L2 norm of the column of the output
            projection the channel feeds; a head: the sum of its channels' squared WIFV, as FLAP's uniform
            structures score it (its adaptive ones standardise per layer first: method=flap).
  wifn:     FLAP's WIFN = mean_i |W_ij| * sqrt(E[x_j^2]) (the reference: ||x_j||_2 / sqrt(samples), a constant
            factor away); a head: the sum of squared channels, as wifv.
  wanda_sp: Wanda-sp (FLAP's repository, `prune_wanda_sp`): the same channel metric as wifn, ||x_j||_2 times the
            mean over output rows i of |W_ij|, with sqrt(mean x^2) for ||x_j||_2 (a constant factor per point,
            as for wanda); a head: the SUM of its channels' scores (the reference's reshape(-1, head_dim).sum).
  minitron: Minitron's activation-based width importance: per sequence the mean |x| over its tokens, then the L2
            norm over sequences (statistic seq_mean_abs_sq); a head: the L2 norm over its channels (ours:
            Minitron's head score is the L2 norm of the head's output, which per-channel statistics cannot give).
  block_influence: ShortGPT's Block Influence of a decoder layer, 1 - the mean over calibration tokens (padding
          excluded) of cos(layer input, layer output), the layer's own output before the final norm (the reference
          code reads the post-norm last hidden state for the last layer: see docs/architecture.md). A layer that
          changes its input little scores low and goes first (prune.target=layers).
A target then aggregates the per-point scores into its mask groups (`hidden` averages normalised point scores).
Adding a scoring: one `Scoring` in SCORINGS plus conf/scoring/<name>.yaml (its options, if any, beside `name`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from diet import DietError, stats
from diet.options import Option
from diet.targets.base import group_index

GROUP_REDUCTIONS = ("sum", "l2", "max", "mean", "sum_sq", "stats")
WEIGHT_KINDS = ("l2", "mean_abs")   # the target's weight_norms, or column_mean_abs


@dataclass(frozen=True)
class Scoring:
    name: str
    score: Callable[[dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]  # (point stats, norms) -> scores
    stats: tuple[str, ...]
    uses_weights: bool = False
    group_reduce: str = "sum"          # one of GROUP_REDUCTIONS
    weights: str = "l2"                # with uses_weights: which per-channel weight statistic (WEIGHT_KINDS)
    options: dict[str, Option] = field(default_factory=dict)


def _mean_abs(s, norms):
    return s["sum_abs"] / s["count"].clamp_min(1.0)


def _rms(s, norms):
    return (s["sum_sq"] / s["count"].clamp_min(1.0)).sqrt()


def _max_abs(s, norms):
    return s["max_abs"]


def _variance(s, norms):
    n = s["count"].clamp_min(1.0)
    return (s["sum_sq"] / n - (s["sum"] / n).square()).clamp_min(0.0)


def _block_influence(s, norms):
    return 1.0 - s["layer_cos"] / s["count"].clamp_min(1.0)


def _wanda(s, norms):
    return _rms(s, None).cpu() * norms.float().cpu()


def _wifv(s, norms):
    return _variance(s, None).cpu() * norms.float().cpu().square()


def _rms_times_weights(s, norms):  # wifn and wanda_sp: sqrt(E[x^2]) * mean_i |W_ij|
    return _rms(s, None).cpu() * norms.float().cpu()


def _minitron(s, norms):
    return s["seq_mean_abs_sq"].sqrt()


SCORINGS: dict[str, Scoring] = {s.name: s for s in (
    Scoring("act_l1", _mean_abs, ("sum_abs", "count"), group_reduce="sum"),
    Scoring("act_l2", _rms, ("sum_sq", "count"), group_reduce="l2"),
    Scoring("act_max", _max_abs, ("max_abs",), group_reduce="max"),
    Scoring("wanda", _wanda, ("sum_sq", "count"), uses_weights=True, group_reduce="stats"),
    Scoring("act_var", _variance, ("sum", "sum_sq", "count"), group_reduce="sum"),
    Scoring("block_influence", _block_influence, ("layer_cos", "count"), group_reduce="sum"),
    Scoring("ifv", _variance, ("sum", "sum_sq", "count"), group_reduce="sum_sq"),
    Scoring("wifv", _wifv, ("sum", "sum_sq", "count"), uses_weights=True, group_reduce="sum_sq"),
    Scoring("wifn", _rms_times_weights, ("sum_sq", "count"), uses_weights=True, weights="mean_abs",
            group_reduce="sum_sq"),
    Scoring("wanda_sp", _rms_times_weights, ("sum_sq", "count"), uses_weights=True, weights="mean_abs",
            group_reduce="sum"),
    Scoring("minitron", _minitron, ("seq_mean_abs_sq",), group_reduce="l2"),
)}


def weights_for(chosen: Scoring, target, model, adapter) -> dict[str, torch.Tensor] | None:
    """The per-channel weight statistic `chosen` reads, from the target (None when it reads none)."""
    if not chosen.uses_weights:
        return None
    return target.weight_norms(model, adapter) if chosen.weights == "l2" else target.column_mean_abs(model, adapter)


def get(name: str) -> Scoring:
    if name not in SCORINGS:
        raise DietError(f"scoring: {name!r} is not allowed; allowed: {', '.join(SCORINGS)}")
    return SCORINGS[name]


def reduce_channels(scores: torch.Tensor, group_size: int, how: str) -> torch.Tensor:
    """Per-channel scores -> one per consecutive group of `group_size` channels."""
    if group_size == 1:
        return scores
    grouped = scores.reshape(-1, group_size)
    if how == "sum":
        return grouped.sum(dim=1)
    if how == "l2":
        return grouped.square().sum(dim=1).sqrt()
    if how == "max":
        return grouped.amax(dim=1)
    if how == "mean":
        return grouped.mean(dim=1)
    if how == "sum_sq":
        return grouped.square().sum(dim=1)
    raise ValueError(f"group reduction {how!r} is not one of {GROUP_REDUCTIONS}")


def point_score(point_stats: dict[str, torch.Tensor], scoring: Scoring, norms: torch.Tensor | None = None,
                group_size: int = 1) -> torch.Tensor:
    """One hook point's score per dimension (per group of `group_size` channels)."""
    if scoring.group_reduce == "stats" and group_size > 1:
        point_stats = {k: stats.reduce_groups(v, k, group_size) for k, v in point_stats.items()}
        norms = None if norms is None else reduce_channels(norms.float(), group_size, "l2")
        return scoring.score(point_stats, norms).cpu()
    return reduce_channels(scoring.score(point_stats, norms).cpu(), group_size, scoring.group_reduce)


def group_scores(point_stats: dict[str, dict[str, torch.Tensor]], scoring: Scoring, target, *,
                 weight_norms: dict[str, torch.Tensor] | None = None,
                 group_sizes: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """One score vector per mask group of `target` from one calibration set's statistics. `group_sizes`: channels
    per dimension at each hook point (`target.group_sizes(model, adapter)`; 1 where absent)."""
    per_point = {}
    for point in sorted(point_stats, key=group_index):
        norms = None
        if scoring.uses_weights:
            if weight_norms is None:
                raise ValueError(f"scoring {scoring.name!r} needs weight_norms=scoring.weights_for(scoring, target, "
                                 "model, adapter)")
            expected = next(v.shape for k, v in point_stats[point].items() if stats.get(k).group_reduce != "none")
            if point not in weight_norms or weight_norms[point].shape != expected:
                found = tuple(weight_norms[point].shape) if point in weight_norms else "missing"
                raise ValueError(f"weight_norms[{point!r}]: {found}; expected shape {tuple(expected)}")
            norms = weight_norms[point]
        per_point[point] = point_score(point_stats[point], scoring, norms, (group_sizes or {}).get(point, 1))
    return target.aggregate(per_point)
