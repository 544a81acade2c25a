"""Methods: how a run gets the scores the vote turns into masks. One registered `Method` each.

A method declares
  calibration    "task" (one calibration set per task: the vote merges per-task masks), "pooled" (one sample of
                 all tasks: one ranking, nothing voted) or "none" (no data: weights or a seeded draw)
  scores         function(target, model, adapter, stats, scoring, seed) -> {score set name: {group: score}}
  per_task_eval  True when each task is evaluated with its own mask instead of the merged one
Adding a method: one entry in METHODS plus conf/method/<name>.yaml; config.py reads the names from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diet import DietError, scoring


def activation_scores(target, model, adapter, stats, scoring_name, seed):
    """The chosen scoring of each calibration set's statistics (wanda adds the target's weight norms)."""
    norms = target.weight_norms(model, adapter) if scoring.needs_weight_norms(scoring_name) else None
    return {name: scoring.group_scores(s, scoring_name, target, norms) for name, s in stats.items()}


def magnitude_scores(target, model, adapter, stats, scoring_name, seed):
    return {"magnitude": scoring.magnitude_scores(target.weight_norms(model, adapter), target)}


def random_scores(target, model, adapter, stats, scoring_name, seed):
    """Seeded uniform scores drawn group by group in layer order (the draws of `vote.random_masks`)."""
    from diet.vote import sorted_groups

    widths = target.widths(model, adapter)
    generator = torch.Generator().manual_seed(seed)
    return {"random": {g: torch.rand(widths[g], generator=generator) for g in sorted_groups(widths)}}


@dataclass(frozen=True)
class Method:
    name: str
    calibration: str
    scores: Callable
    per_task_eval: bool = False
    uses_scores_for_plots: bool = True  # False: the scores mean nothing to plot (random)

    def calibration_for(self, source: str) -> str:
        """`calib.source=generic` pools the calibration of a per-task method (one ranking, nothing voted)."""
        return "pooled" if self.calibration == "task" and source == "generic" else self.calibration


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("diet", "task", activation_scores),
    Method("generic", "pooled", activation_scores),
    Method("magnitude", "none", magnitude_scores),
    Method("random", "none", random_scores, uses_scores_for_plots=False),
    Method("per_task", "task", activation_scores, per_task_eval=True),
)}


def get(name: str) -> Method:
    if name not in METHODS:
        raise DietError(f"method: {name!r} is not allowed; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def calibration_sets(kind: str, tasks: dict, n_samples: int, seed: int, include_target: bool) -> dict:
    """The calibration sets a method's `calibration` asks for: one per task, one pooled `generic` set, or none."""
    from diet.tasks import calibration

    if kind == "none":
        return {}
    if kind == "pooled":
        return {"generic": calibration.generic_calibration_set(tasks, n_samples, seed, include_target)}
    return {name: calibration.calibration_set(task, n_samples, seed, include_target) for name, task in tasks.items()}


def held_out_docs(calib_sets: dict) -> dict[str, list[int]]:
    """Per task, the documents calibration took from the evaluated split (they are excluded from evaluation)."""
    return {part.task: part.doc_ids for c in calib_sets.values() for part in (c.parts.values() or [c])
            if part.held_out_of_eval}


def make_masks(method: Method, target_names: list[str], model, adapter, stats: dict, *, scoring_name: str, seed: int,
               sparsity: dict[str, float], target_options: dict[str, dict], rules: dict):
    """The vote stage: each target's scores from `method`, voted into masks under `rules` (scope, min_keep,
    multiple_of, vote_method, threshold, exact_budget). Returns (masks, per-task masks {task: {group: mask}},
    votes {group: counts}, mean normalised score per group or None); per-task masks and votes only when tasks
    were voted (not for generic, magnitude, random)."""
    from diet import targets, vote

    masks, per_task, votes, means = {}, {}, {}, {}
    for name in target_names:
        target = targets.get(name, **target_options.get(name, {}))
        own = {task: {p: s for p, s in task_stats.items() if targets.owner(p) == name}
               for task, task_stats in stats.items()}
        scores = method.scores(target, model, adapter, own, scoring_name, seed)
        widths = target.widths(model, adapter)
        for task_scores in scores.values():
            for group, score in task_scores.items():
                if score.numel() != widths[group]:
                    raise DietError(f"profile: statistics for {group} have {score.numel()} dimensions but the model "
                                    f"has {widths[group]}; delete the stale cache under cache_dir")
        target_rules = {**rules, "multiple_of": target.multiple_of(model, adapter, rules["multiple_of"])}
        target_masks, target_per_task, target_votes = target.vote(model, adapter, scores, sparsity=sparsity[name],
                                                                  **target_rules)
        masks.update(target_masks)
        if len(scores) > 1:
            for task, task_masks in target_per_task.items():
                per_task.setdefault(task, {}).update(task_masks)
            votes.update(target_votes)
        if method.uses_scores_for_plots:
            means.update(vote.mean_normalised_scores(scores))
    return masks, per_task, votes, (means or None)
