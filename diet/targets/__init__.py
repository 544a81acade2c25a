"""Targets: what gets pruned. One class per target, registered by name; each owns its dimensions.

A target knows, through the family adapter (which alone knows module names):
  hook_points   the modules whose first input the profile stage records, keyed by hook point
  group_sizes   channels per dimension at each hook point (a head is head_dim channels; 1 elsewhere)
  widths        the mask groups and the length of each mask (what mask.safetensors holds)
  weight_norms  per-channel L2 norm of the weights touching each channel (wanda, magnitude)
  aggregate     per-hook-point scores -> one score vector per mask group
  vote          scores per task -> (masks, per-task masks, votes) through `vote.build_masks` under `vote.Rules`
  compensate    fold removed channels' mean inputs into a bias before slicing (prune.compensation=mean)
  prune / zero_masked   physical slicing, and the dense model with those dimensions zeroed (what tests compare to)
  restore       re-apply per-layer widths stored in a saved config (used by `prune.load_pruned`)

Adding a target is one module here plus its registration; `config.py` reads the allowed names from `TARGETS`.
"""
from __future__ import annotations

from diet import DietError
from diet.targets.base import Target, group_index
from diet.targets.heads import HeadsTarget
from diet.targets.hidden import HiddenTarget
from diet.targets.layers import LayersTarget
from diet.targets.mlp import MlpTarget

TARGETS: dict[str, type[Target]] = {cls.name: cls for cls in (MlpTarget, HiddenTarget, HeadsTarget, LayersTarget)}


def get(name: str, **options) -> Target:
    if name not in TARGETS:
        raise DietError(f"prune.target: {name!r} is not supported; allowed: {', '.join(TARGETS)}")
    return TARGETS[name](**options)


def objects(target) -> list[Target]:
    """Target objects from a Target, a name, or a list of either (names get default options): what library calls
    (prune_model, profile_texts) accept; a run passes the objects its plan built."""
    items = [target] if isinstance(target, (str, Target)) else list(target)  # a list, tuple or Hydra ListConfig
    return [get(str(t)) if isinstance(t, str) else t for t in items]


def widths(model, adapter, chosen) -> dict[str, int]:
    """Every mask key the targets `chosen` (Target objects) need and its length."""
    return {key: width for target in chosen for key, width in target.widths(model, adapter).items()}


def owner(key: str) -> str:
    """The target a mask key belongs to (`mlp.3` -> mlp, `hidden` -> hidden, `heads.0` -> heads, `layers` ->
    layers)."""
    return key.split(".", 1)[0]


__all__ = ["TARGETS", "Target", "get", "group_index", "objects", "owner", "widths"]
