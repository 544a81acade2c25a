"""The stages of a run, as run.py calls them: tasks -> calibration -> model -> transform -> profile -> vote -> prune
-> evaluate. Each is a plain function of the plan's objects (`config.Plan`) and what earlier stages returned; none
reads the Hydra config, logs to W&B or writes into the run directory (run.py hands results to the recorder).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diet import DietError, evaluate, methods
from diet import profile as profile_lib
from diet import prune as prune_lib
from diet import vote as vote_lib
from diet.targets import owner
from diet.tasks import calibration, load_tasks
from diet.tasks import text as text_calibration

log = logging.getLogger("diet")


def tasks(plan, *, data_dir: Path, local_dir: str | None) -> dict:
    """The lm-eval task objects of the profiling mix and the evaluation tasks, keyed by name."""
    names = sorted(set(plan.profile_tasks) | set(plan.eval_tasks))
    return load_tasks(names, data_dir=str(data_dir), local_dir=local_dir,
                      keys={n: "eval.tasks" for n in plan.eval_tasks if n not in plan.profile_tasks})


def calibrate(plan, task_objects: dict) -> dict:
    """The calibration sets the method asks for: one per task, one pooled `generic` set, one `text` set
    (calib.source=text: diet/tasks/text.py), or none."""
    kind = plan.method.calibration_for(plan.calib["source"])
    n, seed, with_target = plan.calib["n_samples"], plan.seed, plan.calib["include_target"]
    if kind == "none":
        return {}
    if kind == "text":
        return {"text": text_calibration.calibration_set(plan.calib["text"], n, seed)}
    chosen = {n: task_objects[n] for n in plan.profile_tasks}
    if kind == "pooled":
        return {"generic": calibration.generic_calibration_set(chosen, n, seed, with_target)}
    return {name: calibration.calibration_set(task, n, seed, with_target) for name, task in chosen.items()}


def held_out_docs(calib_sets: dict) -> dict[str, list[int]]:
    """Per task, the documents calibration took from the evaluated split (they are excluded from evaluation)."""
    return {part.task: part.doc_ids for c in calib_sets.values() for part in (c.parts.values() or [c])
            if part.held_out_of_eval}


def exclude_calibration(task_objects: dict, calib_sets: dict) -> None:
    for calib_set in calib_sets.values():
        calibration.exclude_calibration_docs(task_objects, calib_set)


def profile(plan, loaded, calib_sets: dict, *, cache_dir: Path, dtype: str, offload_device=None):
    """The declared statistics of every calibration set at every target's hook points: (stats, {set: hit|miss}).

    calib.sequential=true: layer by layer, each layer profiled on what the layers before it output once pruned
    (profile.collect_sequential), its masks chosen right away by the vote on that layer's statistics (the vote
    stage, per layer with prune.scope=layer, then chooses the same ones again) and their removed inputs held at
    0, or at their calibration mean with prune.compensation=mean: what the pruned model computes. The model's
    weights stay dense until the prune stage; nothing is cached ({set: "sequential"})."""
    if plan.calib.get("sequential"):
        return profile_lib.profile_sequential(loaded, calib_sets, plan.targets, plan.calib,
                                              lambda layer_stats: held_inputs(plan, loaded, layer_stats),
                                              seed=plan.seed, statistics=plan.statistics,
                                              offload_device=offload_device)
    return profile_lib.profile_sets(loaded, calib_sets, plan.targets, cache_dir, plan.calib, seed=plan.seed,
                                    dtype=dtype, statistics=plan.statistics, offload_device=offload_device)


def held_inputs(plan, loaded, layer_stats: dict) -> dict:
    """Sequential profiling: {hook point: (kept channels, what removed channels are held at)} for the masks the
    vote gives one layer's statistics."""
    model, adapter = loaded.model, loaded.adapter
    out = {}
    for target, _, masks, _, _ in _target_votes(plan, loaded, layer_stats):
        sizes = target.group_sizes(model, adapter)
        means = prune_lib.mean_inputs(layer_stats, target.name) if plan.compensation == "mean" else {}
        for key, mask in masks.items():
            keep = mask.repeat_interleave(sizes.get(key, 1))
            out[key] = (keep, means.get(key, torch.zeros(keep.numel())))
    return out


@dataclass
class Votes:
    masks: dict                 # the merged mask per key (what gets pruned)
    per_task: dict              # {task: {key: mask}}: each task's own mask (empty when nothing was voted)
    votes: dict                 # {key: how many tasks kept each dimension}
    mean_scores: dict | None    # {key: mean normalised score}, for the plots (None when scores mean nothing)


def vote(plan, loaded, stats: dict, calib_sets: dict | None = None) -> Votes:
    """The vote stage: each target's scores from the method, voted into masks by the target under the plan's
    rules (what rounding makes of the budget was checked before profiling: `check_budgets`). A method that runs
    the model itself (`uses_model`, SLEB) gets a `context`: the tokenizer and `calib_sets`."""
    model, adapter = loaded.model, loaded.adapter
    context = {"context": methods.ScoreContext(loaded.tokenizer, calib_sets or {}, plan.calib, plan.method_options)
               } if plan.method.uses_model else {}
    if warning := prune_lib.gpu_alignment_warning(profile_lib.input_device(model, adapter), plan.rules.multiple_of):
        log.warning(warning)
    if plan.method.select is not None:  # the method chooses every target's masks together (one calibration set)
        return Votes(plan.method.select(plan, loaded, stats), {}, {}, None)
    out = Votes({}, {}, {}, {})
    for target, scores, masks, per_task, votes in _target_votes(plan, loaded, stats, context):
        out.masks.update(masks)
        if len(scores) > 1:
            for task, task_masks in per_task.items():
                out.per_task.setdefault(task, {}).update(task_masks)
            out.votes.update(votes)
        if plan.method.uses_scores_for_plots:
            out.mean_scores.update(vote_lib.mean_normalised_scores(scores))
    out.mean_scores = out.mean_scores or None
    return out


def resolve_budgets(plan, loaded, dense_decoder: int | None = None) -> None:
    """prune.budget=params: each target's sparsity, a fraction of the decoder layers' parameters, becomes the
    fraction of its own dimensions whose parameter cost removes that many (`Target.param_cost`). The targets that
    take `sparsity` (no prune.sparsity_per_target of their own) share it: one fraction of each one's dimensions,
    together removing `sparsity` of the decoder (Wanda-sp's same ratio for heads and neurons); a target with its
    own value removes that fraction of the decoder by itself. Each keeps what was asked of its group as
    `target.param_sparsity` (record.requested_param_sparsity counts a shared value once). `dense_decoder`: the
    decoder's parameters before any transform (a rotation adds shortcut matrices; the budget is a fraction of the
    model as loaded)."""
    if plan.budget != "params" or plan.method.select is not None:  # FLAP's sparsity is a parameter fraction already
        return
    model, adapter = loaded.model, loaded.adapter
    decoder = prune_lib.decoder_params(model, adapter)
    holds, costed = {}, []
    for target in plan.targets:
        solve = getattr(target, "fraction_for_params", None)
        fraction = solve and solve(model, adapter, target.sparsity, plan.rules.multiple_of, dense_decoder or decoder)
        if fraction is not None:  # a target whose cost per dimension is not constant solves for its width itself
            target.param_sparsity, target.sparsity = target.sparsity, fraction
            log.info("prune.budget=params: %s removes %.4g of its dimensions for %.4g of the decoder's parameters",
                     target.name, fraction, target.param_sparsity)
            continue
        cost, widths = target.param_cost(model, adapter), target.widths(model, adapter)
        holds[target.name] = sum(cost[g] * widths[g] for g in widths)
        costed.append(target)
    shared = [t for t in costed if getattr(t, "shares_sparsity", True)]
    groups = [[t] for t in costed if t not in shared] + ([shared] if shared else [])
    for group in groups:
        requested, held = group[0].sparsity, sum(holds[t.name] for t in group)
        fraction = requested * decoder / held
        if fraction >= 1:
            label = group[0].name if len(group) == 1 else f"[{','.join(t.name for t in group)}]"
            raise DietError(f"sparsity: {requested} of the decoder's parameters with prune.budget=params is "
                            f"more than prune.target={label} holds ({held / decoder:.4g} of them); allowed: "
                            f"a sparsity below {held / decoder:.4g}, or prune.budget=dims")
        for target in group:
            target.param_sparsity = requested
            target.sparsity = fraction
            log.info("prune.budget=params: %s removes %.4g of its dimensions for %.4g of the decoder's parameters",
                     target.name, fraction, fraction * holds[target.name] / decoder)


def check_budgets(plan, loaded) -> None:
    """What rounding to allowed widths makes of each target's budget, from a vote of seeded scores (the kept
    widths of scope=layer do not depend on the scores; global ones land within the rounding of them): a target
    left unpruned is an error, a budget missed by more than 0.05 a warning, both before any profiling."""
    if plan.method.select is not None:  # the method allocates the budget over its targets itself (FLAP)
        return
    model, adapter = loaded.model, loaded.adapter
    for target in plan.targets:
        scores = {"dry": methods.draw_scores(target.widths(model, adapter), plan.seed)}
        masks = target.vote(model, adapter, scores, plan.rules)[0]
        check_budget(target, masks, target.multiple_of(model, adapter, plan.rules.multiple_of))


def _target_votes(plan, loaded, stats: dict, context: dict | None = None):
    """Per target: (target, its scores per calibration set, masks, per-task masks, votes) under the plan's rules;
    `context` goes to a method that runs the model itself (stages.vote)."""
    model, adapter = loaded.model, loaded.adapter
    for target in plan.targets:
        own = {task: {p: s for p, s in task_stats.items() if owner(p) == target.name}
               for task, task_stats in stats.items()}
        scores = plan.method.scores(target, model, adapter, own, plan.scoring, plan.seed, **(context or {}))
        widths = target.widths(model, adapter)
        for task_scores in scores.values():
            for group, score in task_scores.items():
                if score.numel() != widths[group]:
                    raise DietError(f"profile: statistics for {group} have {score.numel()} dimensions but the model "
                                    f"has {widths[group]}; delete the stale cache under cache_dir")
        yield (target, scores, *target.vote(model, adapter, scores, plan.rules))


def check_budget(target, masks: dict, multiple_of: int) -> None:
    achieved = vote_lib.achieved_sparsity(masks)
    widths = sorted({m.numel() for m in masks.values()})
    if target.sparsity > 0 and achieved == 0:
        raise DietError(
            f"prune.multiple_of: {multiple_of} leaves prune.target={target.name} unpruned at sparsity "
            f"{target.sparsity} (widths {', '.join(map(str, widths))}; each keeps a multiple of {multiple_of} or its "
            "full width); allowed: a smaller prune.multiple_of (1 = exact) or a larger sparsity")
    if abs(achieved - target.sparsity) > 0.05:
        log.warning("prune: %s removes %.4g of its dimensions, %.4g requested (%s)", target.name, achieved,
                    target.sparsity, target.rounding(multiple_of))


def prune(plan, loaded, masks: dict, stats: dict) -> int:
    """Remove the masked dimensions in place (compensating them when the plan says so); the pruned parameter
    count."""
    prune_lib.prune_model(loaded.model, loaded.adapter, masks, plan.targets, compensation=plan.compensation,
                          stats=stats)
    return prune_lib.count_params(loaded.model)


def per_task_eval(plan, loaded, per_task_masks: dict, stats: dict, task_objects: dict, eval_kwargs: dict,
                  timings: dict) -> tuple[dict, int]:
    """The task-aware upper reference: each task evaluated on a copy of the model pruned with its own mask.
    Returns (metrics, the largest pruned parameter count); adds prune and eval seconds to `timings`."""
    missing = [t for t in plan.eval_tasks if t not in per_task_masks]
    if missing:
        raise DietError(f"eval.tasks: {missing} have no mask of their own with method=per_task; allowed: tasks that "
                        f"are also in tasks.names ({', '.join(per_task_masks)})")
    metrics, params = {}, {}
    timings["prune"] = timings["eval"] = 0.0
    for task in plan.eval_tasks:
        t = time.perf_counter()
        copied = copy.copy(loaded)
        copied.model = copy.deepcopy(loaded.model)
        params[task] = prune(plan, copied, per_task_masks[task], stats)
        timings["prune"] += time.perf_counter() - t
        t = time.perf_counter()
        metrics.update(evaluate.evaluate(copied.model, loaded.tokenizer, [task_objects[task]], **eval_kwargs)["metrics"])
        timings["eval"] += time.perf_counter() - t
        del copied
    log.info("per_task: pruned parameters per task %s", params)
    return metrics, max(params.values())


def offload_device(model_cfg, device: torch.device):
    """Where layer-by-layer profiling runs when the model stays in CPU memory (model.offload), else None."""
    return device if model_cfg.get("offload") else None
