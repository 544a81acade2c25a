"""The methods that rank whole decoder layers (prune.target=layers), registered in diet/methods.py.

shortgpt (Men et al. 2024, ShortGPT): each layer's Block Influence, 1 - the mean over calibration tokens of
  cos(layer input, layer output) (`scoring=block_influence`, from the profiled `layer_cos`); the round(sparsity x L)
  layers of lowest influence go. One pooled calibration set (the paper: PG-19 in 256-token windows).
"""
from __future__ import annotations

from diet import scoring


def shortgpt_scores(target, model, adapter, stats, chosen, seed):
    """Block Influence per layer, whatever `scoring` says (the method is its scoring)."""
    influence = scoring.SCORINGS["block_influence"]
    return {name: scoring.group_scores(s, influence, target) for name, s in stats.items()}
