"""Methods: how a run gets the scores the vote turns into masks. One registered `Method` each.

A method declares
  calibration    "task" (one calibration set per task: the vote merges per-task masks), "pooled" (one sample of
                 all tasks: one ranking, nothing voted) or "none" (no data: weights or a seeded draw);
                 calib.source=text gives any method that reads data one text set instead (no vote)
  scores         function(target, model, adapter, stats, scoring, seed) -> {score set name: {group: score}}
  uses_scoring   whether `scores` reads the chosen scoring (its statistics are then profiled)
  stats          statistics it reads beyond its scoring's (diet/stats.py)
  transform      the model transform it needs before profiling (diet/transforms/; "none")
  per_task_eval  True when each task is evaluated with its own mask instead of the merged one
  options        its own settings ({key: Option}), set in conf/method/<name>.yaml beside `name`
  targets        the targets it can rank (empty: any); config.plan refuses the others in one line
  uses_weight_norms  its scores read the target's weight norms (a target without them cannot be ranked by it)
  uses_model     its scores run the model on the calibration batches at vote time (SLEB's greedy): `scores` then
                 takes a keyword `context` (a ScoreContext) from the vote stage
  sequential     whether calib.sequential may profile it layer by layer on the pruned prefix (its masks are chosen
                 per layer: stages.profile); Wanda-sp's config turns it on
  select         None (each target votes its own masks) or function(plan, loaded, stats) -> masks: the method
                 chooses every target's masks together from its one calibration set (FLAP's structures)
  compensation   function(options) -> "mean" or None: a compensation the method's options switch on (FLAP's
                 method.bias_compensation); None leaves prune.compensation in charge
  check          function(plan) -> None: raise one DietError line for settings the options alone cannot show
Adding a method: one entry in METHODS plus conf/method/<name>.yaml; config.py reads the names from here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from diet import DietError, flap, layer_methods, scoring
from diet.options import Option
from diet.targets import group_index
from diet.vote import sorted_groups

log = logging.getLogger("diet")


def activation_scores(target, model, adapter, stats, chosen, seed):
    """The chosen scoring of each calibration set's statistics (with the target's weight norms when it uses them)."""
    norms = scoring.weights_for(chosen, target, model, adapter)
    sizes = target.group_sizes(model, adapter)
    return {name: scoring.group_scores(s, chosen, target, weight_norms=norms, group_sizes=sizes)
            for name, s in stats.items()}


def magnitude_scores(target, model, adapter, stats, chosen, seed):
    """Data-free: the weight norms alone (a head's: the L2 norm of its channels'), aggregated like any score."""
    norms, sizes = target.weight_norms(model, adapter), target.group_sizes(model, adapter)
    return {"magnitude": target.aggregate({
        point: scoring.reduce_channels(norms[point].float().cpu(), sizes.get(point, 1), "l2")
        for point in sorted(norms, key=group_index)})}


def wanda_sp_scores(target, model, adapter, stats, chosen, seed):
    """Wanda-sp's metric whatever `scoring` says (scoring=wanda_sp is the same metric for method=diet)."""
    return activation_scores(target, model, adapter, stats, scoring.SCORINGS["wanda_sp"], seed)


def _wanda_sp_check(plan) -> None:
    for t in plan.targets:
        if "mean_abs" not in t.weight_kinds:
            raise DietError(f"prune.target: {t.name!r} is not allowed with method=wanda_sp (its metric reads the "
                            "output projection's columns); allowed: mlp, heads or [mlp,heads]")
    if plan.rules.scope != "layer":
        raise DietError(f"prune.scope: {plan.rules.scope!r} is not allowed with method=wanda_sp (the same fraction "
                        "in every layer); allowed: layer")


def _flap_compensation(options: dict) -> str | None:
    return "mean" if options["bias_compensation"] else None


def draw_scores(widths: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Seeded uniform scores drawn group by group in layer order (whatever the order of `widths`)."""
    generator = torch.Generator().manual_seed(seed)
    return {g: torch.rand(widths[g], generator=generator) for g in sorted_groups(widths)}


def random_scores(target, model, adapter, stats, chosen, seed):
    return {"random": draw_scores(target.widths(model, adapter), seed)}


def slicegpt_select(plan, loaded, stats):
    """SliceGPT keeps the first k principal directions of every rotated point (the transform sorted each basis by
    descending eigenvalue): k = round((1 - sparsity) x d), rounded down to prune.multiple_of; with
    prune.budget=params, the largest such k whose sliced decoder (shortcut matrices counted) holds at most
    (1 - sparsity) of the unrotated decoder's parameters (rotation.slicegpt_width). The interleaved transform
    chose k already (it cut the streams while rotating) and recorded it."""
    from diet import prune
    from diet.transforms import rotation

    model, adapter = loaded.model, loaded.adapter
    (target,) = plan.targets
    record = model.config.rotated_residual
    if plan.budget == "params":
        target.param_sparsity = target.sparsity
    k = record.get("interleaved") or rotation.slicegpt_width(
        model, adapter, target.sparsity, plan.rules.multiple_of, plan.budget,
        prune.decoder_params(model, adapter) - rotation.added_params(model, adapter))
    mask = torch.zeros(record["width"], dtype=torch.bool)
    mask[:k] = True
    achieved = 1 - k / record["width"]
    if plan.budget == "dims" and abs(achieved - target.sparsity) > 0.05:
        log.warning("slicegpt: keeps %d of %d directions (%.4g removed, %.4g requested; kept widths are multiples of "
                    "prune.multiple_of=%d, rounded down as the reference)", k, record["width"], achieved,
                    target.sparsity, plan.rules.multiple_of)
    return {"hidden": mask}


@dataclass(frozen=True)
class ScoreContext:
    """What the vote stage hands a method that declares `uses_model`."""
    tokenizer: object
    calib_sets: dict            # {set name: tasks.calibration.CalibrationSet}, as the calibration stage drew them
    calib: dict                 # the calib.* settings (max_length, batch_size, ...)
    options: dict               # the method's own options, resolved


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class Method:
    name: str
    calibration: str
    scores: Callable
    uses_scoring: bool = True
    stats: tuple[str, ...] = ()
    transform: str = "none"
    per_task_eval: bool = False
    uses_scores_for_plots: bool = True  # False: the scores mean nothing to plot (random)
    options: dict[str, Option] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    uses_weight_norms: bool = False
    uses_model: bool = False
    sequential: bool = True
    select: Callable | None = None
    compensation: Callable | None = None
    check: Callable | None = None

    def calibration_for(self, source: str) -> str:
        """`calib.source=generic` pools the calibration of a per-task method (one ranking, nothing voted);
        `calib.source=text` gives a method that reads data one text set (`text`, no vote either)."""
        if self.calibration == "none":
            return "none"
        if source == "text":
            return "text"
        return "pooled" if self.calibration == "task" and source == "generic" else self.calibration


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("diet", "task", activation_scores),
    Method("generic", "pooled", activation_scores),
    Method("magnitude", "none", magnitude_scores, uses_scoring=False, uses_weight_norms=True),
    Method("random", "none", random_scores, uses_scoring=False, uses_scores_for_plots=False),
    Method("per_task", "task", activation_scores, per_task_eval=True, sequential=False),
    Method("shortgpt", "pooled", layer_methods.shortgpt_scores, uses_scoring=False, stats=("layer_cos",),
           targets=("layers",)),
    Method("sleb", "pooled", layer_methods.sleb_scores, uses_scoring=False, targets=("layers",), uses_model=True,
           uses_scores_for_plots=False, options={
               key: Option(1, _non_negative_int, "an integer >= 0 (the reference's default is 1)")
               for key in ("early_barrier", "latter_barrier")}),
    # Wanda-sp (FLAP's repository, prune_wanda_sp): its metric, the same fraction in every layer, sequential
    Method("wanda_sp", "pooled", wanda_sp_scores, uses_scoring=False, stats=scoring.SCORINGS["wanda_sp"].stats,
           check=_wanda_sp_check, targets=("mlp", "heads")),
    # SliceGPT: per-point PCA rotations with shortcut matrices (diet/transforms/rotation.py), first k directions kept
    Method("slicegpt", "pooled", random_scores, uses_scoring=False, transform="slicegpt", targets=("hidden",),
           select=slicegpt_select, sequential=False, uses_scores_for_plots=False, options={
               "interleave": Option(True, lambda v: isinstance(v, bool),
                                    "true (each layer's bases from the signals of the already-cut layers before it, "
                                    "the reference's rotate_and_slice) or false (every basis from the dense model, "
                                    "its rotate + slice_rotated_model)")}),
    # FLAP: its metric and structures (diet/flap.py), one pass on the dense model, bias compensation
    Method("flap", "pooled", activation_scores, uses_scoring=False, stats=flap.STATISTICS, sequential=False,
           targets=("mlp", "heads"), select=flap.select, compensation=_flap_compensation, check=flap.check, options={
               "metric": Option("WIFV", lambda v: v in flap.METRICS, ", ".join(flap.METRICS)),
               "structure": Option("AL-AM", lambda v: v in flap.STRUCTURES, ", ".join(flap.STRUCTURES)),
               "bias_compensation": Option(True, lambda v: isinstance(v, bool),
                                           "true (FLAP's mean-input bias, prune.compensation=mean) or false "
                                           "(prune.compensation decides)")}),
)}
