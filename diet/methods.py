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
    from diet.vote import _sorted_groups

    widths = target.widths(model, adapter)
    generator = torch.Generator().manual_seed(seed)
    return {"random": {g: torch.rand(widths[g], generator=generator) for g in _sorted_groups(widths)}}


@dataclass(frozen=True)
class Method:
    name: str
    calibration: str
    scores: Callable
    per_task_eval: bool = False
    uses_scores_for_plots: bool = True  # False: the scores mean nothing to plot (random)


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
