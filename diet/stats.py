"""Statistics: the named accumulators the profile stage fills, in one pass over the calibration batches.

A `Statistic` says where it is recorded (`hook`), the shape of its running state for a hook point of width d, how
one batch updates that state in place (`update`), and how two states combine (`merge`). Scorings, methods and the
prune stage declare the statistics they read; the profile stage collects the union of those (plus `BASE`) at every
hook point of every target, and the set is part of the profile cache key.

Hook kinds:
  input     the first input of the hook point's module (`Batch.x`: [batch, tokens, d]), e.g. down_proj's input
  layer_io  a decoder layer's input and output (`Batch.x` and `Batch.out`, both [batch, tokens, hidden])

Every update runs on the hooked module's device, accumulates in float32 (or float64 where declared), skips padding
by weighting each token with the attention mask (`Batch.weights`, 0/1 per flattened token; a matmul, never an
index, so nothing syncs with the host), and never moves data to the host.

`fused` (optional): the same batch partial as one expression for torch.compile (`calib.fused_stats`), merged into
the state with `merge`; statistics without it update eagerly in a fused profile too.

Adding a statistic: one `register(Statistic(...))` here (or in the module that needs it), then declare it in the
scoring or method that reads it (docs/architecture.md has a worked example: the signed sum behind a channel mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

HOOK_KINDS = ("input", "layer_io")  # a statistic may also say "any" (the token count is recorded at every point)


class Batch:
    """What one hook call sees: the activation(s) and the token weights; derived views computed once, on demand."""

    def __init__(self, x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor | None = None):
        self.x, self.weights, self.out = x, weights, out

    @cached_property
    def flat(self) -> torch.Tensor:
        """[tokens, d] float32 copy of the activation."""
        return self.x.reshape(-1, self.x.shape[-1]).float()

    @cached_property
    def masked_magnitude(self) -> torch.Tensor:
        """w|x| per token and channel (padding rows are 0)."""
        return self.flat.abs().mul_(self.weights[:, None])


def _add(state: torch.Tensor, partial: torch.Tensor) -> None:
    state.add_(partial)


def _max(state: torch.Tensor, partial: torch.Tensor) -> None:
    torch.maximum(state, partial, out=state)


@dataclass(frozen=True)
class Statistic:
    name: str
    hook: str                                       # one of HOOK_KINDS
    shape: Callable[[int], tuple[int, ...]]         # hook point width -> state shape
    update: Callable[[torch.Tensor, Batch], None]   # fold one batch into the state, in place
    merge: Callable[[torch.Tensor, torch.Tensor], None] = _add   # fold a partial state into the state, in place
    fused: Callable | None = None                   # (x, weights) -> this batch's partial, compiled when fused
    group_reduce: str = "sum"                       # per-channel state -> a group of channels (a head): sum | max |
                                                    # none (one value per point, e.g. the token count)
    dtype: torch.dtype = torch.float32


STATISTICS: dict[str, Statistic] = {}


def register(stat: Statistic) -> Statistic:
    if stat.hook not in (*HOOK_KINDS, "any"):
        raise ValueError(f"statistic {stat.name!r}: hook {stat.hook!r} is not one of {HOOK_KINDS} or 'any'")
    STATISTICS[stat.name] = stat
    return stat


def get(name: str) -> Statistic:
    if name not in STATISTICS:
        raise KeyError(f"statistic {name!r} is not registered; registered: {', '.join(STATISTICS)}")
    return STATISTICS[name]


def _per_channel(width: int) -> tuple[int, ...]:
    return (width,)


def _one(width: int) -> tuple[int, ...]:
    return (1,)


def _fused_flat(x, weights):
    return x.reshape(-1, x.shape[-1]).float(), weights[:, None]


# The four every profile has collected since the first version: each cache entry of those keeps hitting.
register(Statistic(
    "sum_abs", "input", _per_channel,
    update=lambda s, b: s.addmv_(b.masked_magnitude.t(), b.weights),
    fused=lambda x, w: (_fused_flat(x, w)[0].abs() * w[:, None]).sum(dim=0)))
register(Statistic(
    "sum_sq", "input", _per_channel,
    update=lambda s, b: s.addmv_(b.masked_magnitude.square().t(), b.weights),
    fused=lambda x, w: (lambda f, ww: (f * f * ww).sum(dim=0))(*_fused_flat(x, w))))
register(Statistic(
    "max_abs", "input", _per_channel, merge=_max, group_reduce="max",
    update=lambda s, b: torch.maximum(s, b.masked_magnitude.amax(dim=0), out=s),
    fused=lambda x, w: (_fused_flat(x, w)[0].abs() * w[:, None]).amax(dim=0)))
register(Statistic(
    "count", "any", _one, group_reduce="none",
    update=lambda s, b: s.add_(b.weights.sum()),
    fused=lambda x, w: w.sum().reshape(1)))
BASE = ("sum_abs", "sum_sq", "max_abs", "count")

# Signed sum over tokens: with `count`, each channel's mean input (bias compensation, FLAP's fluctuation).
register(Statistic(
    "sum", "input", _per_channel,
    update=lambda s, b: s.addmv_(b.flat.t(), b.weights),
    fused=lambda x, w: (_fused_flat(x, w)[0] * w[:, None]).sum(dim=0)))


def _sequence_mean_abs_sq_update(state: torch.Tensor, batch: Batch) -> None:
    weights = batch.weights.reshape(batch.x.shape[0], -1)                       # [sequences, tokens]
    sums = (batch.x.float().abs() * weights[..., None]).sum(dim=1)              # [sequences, d]
    means = sums / weights.sum(dim=1, keepdim=True).clamp_min(1.0)              # all-padding rows give 0
    state.add_(means.square().sum(dim=0))


# Minitron's width importance: per sequence, each channel's mean |x| over its (non-padding) tokens; the state is the
# sum over sequences of its square, so sqrt(state) is the L2 norm over sequences (scoring=minitron).
register(Statistic("seq_mean_abs_sq", "input", _per_channel, update=_sequence_mean_abs_sq_update))


def _cosine_update(state: torch.Tensor, batch: Batch) -> None:
    x_in = batch.x.reshape(-1, batch.x.shape[-1]).float()
    x_out = batch.out.reshape(-1, batch.out.shape[-1]).float()
    state.add_((torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1) * batch.weights).sum().reshape(1))


# A decoder layer's input against its output: sum over tokens of cos(in, out) (ShortGPT's Block Influence is
# 1 - this / count). The output is the layer's own, before any final norm.
register(Statistic("layer_cos", "layer_io", _one, update=_cosine_update, group_reduce="none"))


def resolve(names) -> tuple[str, ...]:
    """`names` plus BASE, each once, in registration order (the order states are updated in)."""
    wanted = set(names) | set(BASE)
    for name in wanted:
        get(name)
    return tuple(n for n in STATISTICS if n in wanted)


def at(kind: str, names) -> tuple[str, ...]:
    """Of `names`, those recorded at a hook point of `kind`."""
    return tuple(n for n in names if get(n).hook in (kind, "any"))


def extras(names) -> list[str]:
    """The statistics beyond BASE, sorted: what a profile cache key records (nothing for today's set)."""
    return sorted(set(names) - set(BASE))


def reduce_groups(state: torch.Tensor, stat: str, group_size: int) -> torch.Tensor:
    """A per-channel state reduced over consecutive groups of `group_size` channels (a head's head_dim)."""
    how = get(stat).group_reduce
    if how == "none" or group_size == 1:
        return state
    grouped = state.reshape(-1, group_size)
    return grouped.sum(dim=1) if how == "sum" else grouped.amax(dim=1)
