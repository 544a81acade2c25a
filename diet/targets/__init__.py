"""Targets: what gets pruned. One class per target, registered by name; each owns its dimensions.

A target knows, through the family adapter (which alone knows module names):
  hook_points   the modules whose first input the profile stage records, keyed by hook point
  reduce_stats  per-element statistics -> per-dimension ones (identity except for heads)
  widths        the mask groups and the length of each mask (what mask.safetensors holds)
  weight_norms  per-dimension L2 norm of the weights touching each dimension (wanda, magnitude)
  aggregate     per-hook-point scores -> one score vector per mask group
  vote          scores per task -> (masks, per-task masks, votes) through `vote.build_masks`
  prune / zero_masked   physical slicing, and the dense model with those dimensions zeroed (what tests compare to)
  restore       re-apply per-layer widths stored in a saved config (used by `prune.load_pruned`)

Adding a target is one module here plus its registration; `config.py` reads the allowed names from `TARGETS`.
"""
from __future__ import annotations

from diet import DietError
from diet.targets.base import Target, group_index
from diet.targets.heads import HeadsTarget
from diet.targets.hidden import HiddenTarget
from diet.targets.mlp import MlpTarget

TARGETS: dict[str, type[Target]] = {cls.name: cls for cls in (MlpTarget, HiddenTarget, HeadsTarget)}


def names(target) -> list[str]:
    """`prune.target` as a list of names: a string, or a list like [mlp, heads] (each name once, in the given order)."""
    if isinstance(target, str):
        return [target]
    return [str(t) for t in target]


def get(name: str, **options) -> Target:
    if name not in TARGETS:
        raise DietError(f"prune.target: {name!r} is not supported; allowed: {', '.join(TARGETS)}")
    return TARGETS[name](**options)


def widths(model, adapter, target) -> dict[str, int]:
    """Every mask key `target` (a name or a list of names) needs and its length: the one place widths are computed."""
    out: dict[str, int] = {}
    for name in names(target):
        out.update(get(name).widths(model, adapter))
    return out


def owner(key: str) -> str:
    """The target a mask key belongs to (`mlp.3` -> mlp, `hidden` -> hidden, `heads.0` -> heads)."""
    return key.split(".", 1)[0]


__all__ = ["TARGETS", "Target", "get", "group_index", "names", "owner", "widths"]
