"""method=flap: FLAP (An et al., AAAI 2024, "Fluctuation-based Adaptive Structured Pruning"), as its reference
code computes it (github.com/CASIA-IVA-Lab/FLAP, lib/prune.py `prune_flap`, lib/layerwrapper.py `BiasGPT`), in one
profile pass over the dense model.

Metric (`method.metric`), per input channel j of a layer's output projections (mlp: down_proj's input, one
channel per FFN neuron; heads: o_proj's input, head_dim channels per head), from the calibration tokens:
  WIFV (default)  Var(x_j) * ||W_:,j||^2, the channel's input variance times the squared L2 norm of its column
  IFV             Var(x_j)
  WIFN            mean_i |W_ij| * sqrt(E[x_j^2]) (the reference divides sum x^2 by the sample count, not the token
                  count: a constant factor, which the standardisation removes; Wanda-sp's metric is the same one)
The attention metric is squared before anything else (the reference's `metrics[...](...) ** 2` for o_proj).
Variance: the exact one over all calibration tokens, E[x^2] - E[x]^2 from the sum, sum_sq and count statistics
(ours). The reference's running estimate (`BiasGPT.add_batch`, one sample per call) differs in two ways: the first
sample contributes no fluctuation (`fluc_inp = 0` while nsamples == 0), and `old_baseline_inp` aliases the mean it
updates in place, so each sample adds sum_t (x_t - m_new)^2 / (n + 1) and earlier terms are rescaled by
(n - 1) / n: a per-sample running estimate of sum_t Var, weighted towards later samples. Measured against the
exact variance on a tiny Llama: see the report of this branch (docs).

Structure (`method.structure`, FLAP's four), over the targets `prune.target` names (mlp, heads or both):
  AL-AM (default)  adaptive layers, adaptive mix: every channel's metric is standardised per layer and target
                   ((x - mean) / std, std unbiased, over the layer's channels); a head scores the mean of its
                   channels' standardised metrics; every head and every neuron of every layer is then ranked in
                   one list, each weighted by the parameters its removal removes, and the top of that list is kept
                   so that the kept parameters of the targeted blocks come closest to (1 - sparsity) of them. With
                   prune.target=mlp (heads) alone, the neurons (heads) of all layers are ranked together.
  AL-MM            adaptive layers, manual mix: heads ranked over all layers, removing the heads target's fraction
                   (prune.sparsity_per_target.heads, default `sparsity`; the reference gives a head count), then
                   neurons ranked over all layers, removing what the parameter budget (`sparsity` of the targeted
                   blocks' parameters) leaves.
  UL-UM            uniform layers and mix: every layer removes each target's fraction (`sparsity`, or its
                   prune.sparsity_per_target) of its heads and of its neurons, by the raw metric (a head: the sum
                   of its channels' squared metric, the reference's reshape(-1, head_dim).sum(dim=1)).
  UL-MM            uniform layers, manual mix: every layer removes the heads target's fraction of its heads and
                   the neurons the parameter budget leaves.
Parameters a unit removes (weights only, biases not counted, as the reference's 512/3 = 4*128*d / 3d): a neuron
its gate and up rows and down column; a query head its q rows and o columns; a KV group its query heads' plus its
k and v rows. The budget counts q, k, v, o, gate, up and down of every layer of the targeted blocks.

Grouped-query attention (the reference knows only multi-head attention, where a head is its own KV group):
  prune.heads_gqa=per_group (default): every KV group keeps the same number of query heads (k/v stay, and count
    as kept parameters); the unit ranked is one query head of every group of a layer, each group's r-th best,
    scored by their mean (adaptive structures) and weighing all their q/o parameters.
  prune.heads_gqa=kv_group, and multi-head attention in either mode: the unit is a KV group (its query heads and
    its k/v head), scored by the mean of its query heads' scores, weighing all four projections' parameters.
Uniform structures vote heads as the heads target does (per_group / kv_group, targets/heads.py).

Both adaptive and uniform structures keep prune.min_keep of each layer's width (at least one neuron, one head per
KV group with per_group, one group with kv_group): the reference can empty a layer, diet cannot slice to zero.
Kept FFN widths are multiples of prune.multiple_of (1 for paper-exact runs), rounded per layer after the ranking;
prune.scope and the vote.* keys are not read (one calibration set, the structure decides). Budget rounding is ours:
the reference keeps the units strictly above the score of the unit whose cumulative weight comes closest to the
budget (one unit fewer than the closest prefix, which diet keeps), weighs a head 170 (an int64 tensor of 512/3),
and floors each uniform layer's removed count (diet rounds half up, as every layer-scope vote does).

Bias compensation (`method.bias_compensation`, default true, FLAP's `compress(..., bias=True)`): the removed
channels' mean calibration input times their output columns becomes a bias of down_proj / o_proj, through diet's
prune.compensation=mean (prune.py): the pruned model computes the dense one with those inputs held at their mean.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch

from diet import DietError, scoring, vote
from diet.targets import group_index

log = logging.getLogger(__name__)

METRICS = ("WIFV", "IFV", "WIFN")
STRUCTURES = ("AL-AM", "AL-MM", "UL-UM", "UL-MM")
TARGETS = ("mlp", "heads")
STATISTICS = ("sum", "sum_sq", "count")


def metric_scoring(metric: str) -> scoring.Scoring:
    """The scoring that computes `metric` per channel (and, for heads, FLAP's uniform head score: sum_sq)."""
    return scoring.SCORINGS[metric.lower()]


def channel_metrics(target, model, adapter, point_stats: dict, metric: str) -> dict[str, torch.Tensor]:
    """{point: metric per channel} (float32, cpu); heads' squared, as the reference squares o_proj's."""
    chosen = metric_scoring(metric)
    weights = scoring.weights_for(chosen, target, model, adapter)
    out = {}
    for point in sorted(point_stats, key=group_index):
        values = chosen.score(point_stats[point], None if weights is None else weights[point]).float().cpu()
        out[point] = values.square() if target.name == "heads" else values
    return out


def standardise(x: torch.Tensor) -> torch.Tensor:
    """FLAP's per-layer standardisation: (x - mean) / std, torch.std's unbiased estimate."""
    return (x - x.mean()) / x.std().clamp_min(torch.finfo(x.dtype).tiny)


@dataclasses.dataclass
class Units:
    """One layer's rankable units of one target, best first."""
    key: str                    # mask key (mlp.3, heads.3)
    scores: torch.Tensor        # [units], descending
    members: list               # per unit, the dimension indices it holds (mask positions)
    weight: float               # parameters one unit removes
    lo: int                     # units min_keep reserves
    width: int                  # mask length
    fixed: float                # parameters of the layer's block no unit removes (kept whatever the ranking)

    def mask(self, kept_units: int) -> torch.Tensor:
        mask = torch.zeros(self.width, dtype=torch.bool)
        for unit in self.members[:kept_units]:
            mask[unit] = True
        return mask


def _sorted_units(key, scores, members, weight, lo, width, fixed) -> Units:
    order = torch.sort(scores, descending=True, stable=True).indices
    return Units(key, scores[order], [members[i] for i in order.tolist()], float(weight), lo, width, float(fixed))


def _min_units(width_units: int, dims_per_unit: int, min_keep: float, width: int) -> int:
    return min(width_units, math.ceil(max(1, math.ceil(min_keep * width - 1e-9)) / dims_per_unit))


def mlp_units(model, adapter, z: dict[str, torch.Tensor], min_keep: float) -> list[Units]:
    units = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        gate, up, down = adapter.mlp_projections(layer)
        width = down.in_features
        units.append(_sorted_units(f"mlp.{i}", z[f"mlp.{i}"], [[j] for j in range(width)],
                                   gate.in_features + up.in_features + down.out_features,
                                   _min_units(width, 1, min_keep, width), width, 0.0))
    return units


def head_units(model, adapter, head_scores: dict[str, torch.Tensor], gqa: str, min_keep: float) -> list[Units]:
    """Per layer, the heads' units under the GQA mode (see the module docstring)."""
    units = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        q, k, v, o = adapter.attention_projections(layer)
        hd, n_heads, n_kv = adapter.layer_head_dim(layer), adapter.num_heads(layer), adapter.num_kv_heads(layer)
        per_group = n_heads // n_kv
        head = hd * (q.in_features + o.out_features)
        scores = head_scores[f"heads.{i}"]
        if gqa == "kv_group" or per_group == 1:
            grouped = scores.reshape(n_kv, per_group)
            members = [list(range(g * per_group, (g + 1) * per_group)) for g in range(n_kv)]
            units.append(_sorted_units(f"heads.{i}", grouped.mean(dim=1), members,
                                       per_group * head + hd * (k.in_features + v.in_features),
                                       _min_units(n_kv, per_group, min_keep, n_heads), n_heads, 0.0))
        else:  # unit r: the r-th best query head of every KV group
            within = torch.sort(scores.reshape(n_kv, per_group), dim=1, descending=True, stable=True)
            members = [[g * per_group + int(within.indices[g, r]) for g in range(n_kv)] for r in range(per_group)]
            units.append(Units(f"heads.{i}", within.values.mean(dim=0), members, float(n_kv * head),
                               _min_units(per_group, n_kv, min_keep, n_heads), n_heads,
                               float(hd * n_kv * (k.in_features + v.in_features))))
    return units


def block_params(model, adapter, name: str) -> float:
    """Weights of the block a target prunes, over every layer (heads: q, k, v, o; mlp: gate, up, down)."""
    block = "attention" if name == "heads" else "mlp"
    return float(sum(p.weight.numel() for layer in adapter.decoder_layers(model)
                     for p in adapter.block_projections(layer, block)))


def joint_counts(groups: list[Units], keep_weight: float) -> list[int]:
    """Kept units per group: each group's `lo` best first, then the best of the rest over all groups (descending
    score; ties: earlier group, then better unit) up to the prefix whose kept weight (fixed and reserved included)
    comes closest to `keep_weight` (the shorter on a tie)."""
    base = sum(g.fixed + g.lo * g.weight for g in groups)
    scores = torch.cat([g.scores[g.lo:].double() for g in groups])
    owner = torch.cat([torch.full((g.scores.numel() - g.lo,), n, dtype=torch.long) for n, g in enumerate(groups)])
    weight = torch.cat([torch.full((g.scores.numel() - g.lo,), g.weight, dtype=torch.float64) for g in groups])
    order = torch.sort(scores, descending=True, stable=True).indices
    kept = base + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(weight[order], 0)])
    prefix = int(torch.argmin((kept - keep_weight).abs()))
    extra = torch.bincount(owner[order[:prefix]], minlength=len(groups)).tolist()
    return [g.lo + e for g, e in zip(groups, extra)]


def _round_width(count: int, width: int, multiple_of: int, lo: int) -> int:
    """The allowed kept width (a multiple of multiple_of, or the full width) nearest to count, ties to the smaller,
    never below lo."""
    allowed = [w for w in [*range(multiple_of, width, multiple_of), width] if w >= lo] or [width]
    return min(allowed, key=lambda w: (abs(w - count), w))


def _check_budget(keep_weight: float, groups: list[Units], structure: str) -> None:
    floor = sum(g.fixed + g.lo * g.weight for g in groups)
    if keep_weight < floor - 1e-6:
        raise DietError(f"sparsity: method.structure={structure} cannot remove that much: min_keep (and the k/v "
                        f"heads per_group keeps) hold {floor / 1e6:.4g}M parameters, the budget keeps "
                        f"{max(keep_weight, 0) / 1e6:.4g}M; allowed: a smaller sparsity or prune.min_keep")


def select(plan, loaded, stats: dict) -> dict[str, torch.Tensor]:
    """The masks of every target from the one calibration set's statistics (Method.select)."""
    model, adapter = loaded.model, loaded.adapter
    options = plan.method_options
    metric, structure = options["metric"], options["structure"]
    (set_stats,) = stats.values()
    by_name = {t.name: t for t in plan.targets}
    metrics = {name: channel_metrics(t, model, adapter, {p: s for p, s in set_stats.items()
                                                         if p.startswith(f"{name}.")}, metric)
               for name, t in by_name.items()}
    heads, mlp = by_name.get("heads"), by_name.get("mlp")
    masks: dict[str, torch.Tensor] = {}

    if structure.startswith("UL"):
        rules = dataclasses.replace(plan.rules, scope="layer")
        if heads is not None:
            sizes = heads.group_sizes(model, adapter)
            scores = {p: scoring.reduce_channels(m, sizes[p], "sum") for p, m in metrics["heads"].items()}
            masks.update(heads.vote(model, adapter, {"flap": scores}, rules)[0])
        if mlp is not None:
            chosen = mlp
            if structure == "UL-MM" and heads is not None:
                chosen = copy.copy(mlp)
                chosen.sparsity = _mlp_fraction_left(model, adapter, mlp.sparsity, masks, structure)
            masks.update(chosen.vote(model, adapter, {"flap": metrics["mlp"]}, rules)[0])
    else:
        groups = {}
        if heads is not None:
            sizes = heads.group_sizes(model, adapter)
            z = {p: scoring.reduce_channels(standardise(m), sizes[p], "mean") for p, m in metrics["heads"].items()}
            groups["heads"] = head_units(model, adapter, z, heads.gqa, plan.rules.min_keep)
        if mlp is not None:
            z = {p: standardise(m) for p, m in metrics["mlp"].items()}
            groups["mlp"] = mlp_units(model, adapter, z, plan.rules.min_keep)
        if structure == "AL-AM":
            sparsity = plan.targets[0].sparsity
            keep = (1 - sparsity) * sum(block_params(model, adapter, name) for name in groups)
            flat = [u for name in groups for u in groups[name]]  # heads first, as the reference concatenates
            _check_budget(keep, flat, structure)
            counts = dict(zip([u.key for u in flat], joint_counts(flat, keep)))
        else:  # AL-MM
            counts = {}
            if heads is not None:
                total = sum(u.width for u in groups["heads"])
                per_unit = [dataclasses.replace(u, weight=len(u.members[0]), fixed=0.0) for u in groups["heads"]]
                counts.update(zip([u.key for u in per_unit],
                                  joint_counts(per_unit, vote.kept_count(total, heads.sparsity))))
            if mlp is not None:
                head_masks = {u.key: u.mask(counts[u.key]) for u in groups.get("heads", [])}
                fraction = _mlp_fraction_left(model, adapter, mlp.sparsity, head_masks, structure)
                keep = (1 - fraction) * block_params(model, adapter, "mlp")
                _check_budget(keep, groups["mlp"], structure)
                counts.update(zip([u.key for u in groups["mlp"]], joint_counts(groups["mlp"], keep)))
        for u in groups.get("mlp", []):
            counts[u.key] = _round_width(counts[u.key], u.width, plan.rules.multiple_of, u.lo)
        masks.update({u.key: u.mask(counts[u.key]) for name in groups for u in groups[name]})
    _log_budget(model, adapter, plan.targets, masks)
    return {key: masks[key] for key in vote.sorted_groups(masks)}


def _removed_head_params(model, adapter, head_masks: dict[str, torch.Tensor]) -> float:
    """Parameters removing these heads removes (q rows, o columns; k/v rows of KV groups left empty)."""
    removed = 0.0
    for i, layer in enumerate(adapter.decoder_layers(model)):
        if f"heads.{i}" not in head_masks:
            continue
        q, k, v, o = adapter.attention_projections(layer)
        hd, n_heads, n_kv = adapter.layer_head_dim(layer), adapter.num_heads(layer), adapter.num_kv_heads(layer)
        mask = head_masks[f"heads.{i}"]
        empty = int((mask.reshape(n_kv, n_heads // n_kv).sum(dim=1) == 0).sum())
        removed += hd * (int((~mask).sum()) * (q.in_features + o.out_features)
                         + empty * (k.in_features + v.in_features))
    return removed


def _mlp_fraction_left(model, adapter, sparsity: float, head_masks: dict, structure: str) -> float:
    """Manual mix: the fraction of the neurons' parameters to remove so that heads and neurons together remove
    `sparsity` of the targeted blocks' parameters."""
    blocks = ("heads", "mlp") if head_masks else ("mlp",)
    total = sum(block_params(model, adapter, name) for name in blocks)
    heads_removed = _removed_head_params(model, adapter, head_masks)
    if heads_removed > sparsity * total:
        raise DietError(f"prune.sparsity_per_target.heads: the heads it removes are {heads_removed / total:.4g} of "
                        f"the parameters, more than sparsity {sparsity} with method.structure={structure}; allowed: "
                        "a smaller heads fraction or a larger sparsity")
    return min((sparsity * total - heads_removed) / block_params(model, adapter, "mlp"), 1.0)


def _log_budget(model, adapter, chosen, masks) -> None:
    total = sum(block_params(model, adapter, t.name) for t in chosen)
    removed = _removed_head_params(model, adapter, {k: m for k, m in masks.items() if k.startswith("heads.")})
    for i, layer in enumerate(adapter.decoder_layers(model)):
        if f"mlp.{i}" in masks:
            gate, up, down = adapter.mlp_projections(layer)
            removed += int((~masks[f"mlp.{i}"]).sum()) * (gate.in_features + up.in_features + down.out_features)
    per_target = {t.name: vote.achieved_sparsity({k: m for k, m in masks.items() if k.startswith(f"{t.name}.")})
                  for t in chosen}
    log.info("flap: removes %.4f of the targeted blocks' parameters; of each target's dimensions: %s",
             removed / total, ", ".join(f"{name} {value:.4f}" for name, value in per_target.items()))


def check(plan) -> None:
    """What config.plan cannot see from the options alone (one DietError line)."""
    structure = plan.method_options["structure"]
    names = [t.name for t in plan.targets]
    for name in names:
        if name not in TARGETS:
            raise DietError(f"prune.target: {name!r} is not allowed with method=flap; allowed: mlp, heads or "
                            "[mlp,heads]")
    if structure == "AL-AM" and len({t.sparsity for t in plan.targets}) > 1:
        raise DietError(f"prune.sparsity_per_target: {{{', '.join(f'{t.name}: {t.sparsity}' for t in plan.targets)}}} "
                        "is not allowed with method.structure=AL-AM (one parameter budget, `sparsity`, for every head "
                        "and neuron); allowed: null for every target, or method.structure=AL-MM / UL-UM / UL-MM")
