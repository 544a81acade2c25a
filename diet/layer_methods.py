"""The methods that rank whole decoder layers (prune.target=layers), registered in diet/methods.py.

shortgpt (Men et al. 2024, ShortGPT): each layer's Block Influence, 1 - the mean over calibration tokens of
  cos(layer input, layer output) (`scoring=block_influence`, from the profiled `layer_cos`); the round(sparsity x L)
  layers of lowest influence go. One pooled calibration set (the paper: PG-19 in 256-token windows).

sleb (Song et al. 2024, SLEB): greedy. Each step removes the layer whose removal gives the lowest calibration NLL of
  the model with the layers removed so far, until round(sparsity x L) are gone. Its scores need forward passes of
  the whole model at vote time, not profiled statistics: the method declares `uses_model`, and the vote stage hands
  it a `methods.ScoreContext` (tokenizer, calibration sets, calib settings, its options). As the reference code
  (jiwonsong-dev/SLEB, sleb.py):
    - NLL: the mean over every predicted token of the calibration set (the reference sums, per 2048-token window,
      the window's mean token NLL times the window length: with equal windows, the same ranking); padding excluded
      (the reference's windows have none);
    - candidates: the alive layers but the first `early_barrier` and the last `latter_barrier` of them (the
      reference's defaults, 1 and 1, never remove the first or the last layer);
    - ties: the first candidate (lowest layer index) wins (the reference's strict `<`).
  Scores encode the order: the layer removed at step s scores s, every kept layer the budget k, so the vote's mask
  is the greedy's set.
"""
from __future__ import annotations

import logging

import torch

from diet import DietError, profile, scoring
from diet.targets.layers import skipped

log = logging.getLogger("diet")


def shortgpt_scores(target, model, adapter, stats, chosen, seed):
    """Block Influence per layer, whatever `scoring` says (the method is its scoring)."""
    influence = scoring.SCORINGS["block_influence"]
    return {name: scoring.group_scores(s, influence, target) for name, s in stats.items()}


@torch.inference_mode()
def calibration_nll(model, adapter, batches) -> float:
    """The mean over every predicted token of the batches (padding excluded) of -log p(token | its prefix)."""
    device = profile.input_device(model, adapter)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:],
                                                reduction="none")
        weights = attention_mask[:, 1:].to(torch.float64)  # right padding: a real target has a real prefix
        total += (nll.double() * weights.to(nll.device)).sum().to(device)
        count += weights.sum()
    return float(total / count.clamp_min(1.0))


def greedy_removal(model, adapter, batches, n_remove: int, early_barrier: int = 1, latter_barrier: int = 1
                   ) -> tuple[list[int], list[float]]:
    """SLEB's loop: (the layers removed, in order; the calibration NLL after each step)."""
    alive = list(range(len(adapter.decoder_layers(model))))
    removed, losses = [], []
    for step in range(n_remove):
        best, best_position = float("inf"), None
        for position in range(early_barrier, len(alive) - latter_barrier):
            with skipped(model, adapter, removed + [alive[position]]):
                loss = calibration_nll(model, adapter, batches)
            if loss < best:
                best, best_position = loss, position
        removed.append(alive.pop(best_position))
        losses.append(best)
        log.info("sleb: step %d removes layer %d (calibration NLL %.6g)", step + 1, removed[-1], best)
    return removed, losses


def sleb_scores(target, model, adapter, stats, chosen, seed, *, context):
    n_layers = len(adapter.decoder_layers(model))
    n_remove = target.budget(model, adapter)
    early, latter = context.options["early_barrier"], context.options["latter_barrier"]
    if n_remove > n_layers - early - latter:
        raise DietError(f"sparsity: {target.sparsity} removes {n_remove} of the {n_layers} layers, but method=sleb "
                        f"never removes the first {early} and the last {latter} (method.early_barrier, "
                        f"method.latter_barrier); allowed: a sparsity that removes at most "
                        f"{max(n_layers - early - latter, 0)} layers, or smaller barriers")
    out = {}
    for name, calib_set in sorted(context.calib_sets.items()):
        batches = profile.tokenize(context.tokenizer, calib_set.texts, context.calib["max_length"],
                                   context.calib["batch_size"])
        order, _ = greedy_removal(model, adapter, batches, n_remove, early, latter)
        score = torch.full((n_layers,), float(n_remove))
        for step, layer in enumerate(order):
            score[layer] = float(step)
        out[name] = {"layers": score}
    return out
