"""target=heads: the attention heads of each layer. Mask groups `heads.<i>`, bool, length num_attention_heads.

Profile: hook point `heads.<i>` is the input of layer i's o_proj (the concatenated head outputs, width
num_heads * head_dim), recorded per channel. A head is head_dim consecutive channels (`group_sizes`); each scoring
declares how its per-channel scores become the head's (diet/scoring.py): act_l1 sums them (= mean over tokens of
the L1 norm of the head's output), act_l2 takes their L2 norm (= the RMS over tokens of the head output's L2
norm), act_max their max. Weight norms are per channel (o_proj's column norms); wanda reduces statistics and
norms to the head first: the head's RMS L2 norm times the Frobenius norm of its o_proj columns.

Grouped-query attention (`prune.heads_gqa`), for a layer of H query heads in K key/value groups of H/K each:
  per_group (default): every KV group keeps the same number of query heads, and every group keeps at least
    one, so k_proj/v_proj stay whole. The budget rounds each layer's kept count to a multiple of K (the vote's
    `multiple_of` is K; `prune.multiple_of` is not used for heads), then each KV group keeps its best
    count/K heads by the ranking the vote used (votes, then mean normalised score; one task: its scores).
    Votes are counted over the per-task masks before that per-group step. Default because it removes exactly
    query heads, the unit the scores rank, and keeps every KV head's memory of the sequence.
  kv_group: the unit is a whole KV group (its K/V head and its H/K query heads): the group's score is the mean of
    its query heads' scores, the vote runs over groups, and the head masks are the group masks expanded. Removes
    k/v rows too (a smaller KV cache), but a layer with one KV group (Gemma-3 270M) can remove nothing, since
    min_keep keeps at least one group per layer.
  Multi-head attention (as many KV heads as query heads, every group one head): both modes are the same unit, a
    query head with its own K/V head, voted as kv_group does (per_group's one-head-per-group floor would keep all).
min_keep keeps at least one head (per_group: one per KV group; kv_group: one group) per layer.

Physical removal: q_proj rows (and bias) of removed heads, o_proj columns; k_proj/v_proj rows (and biases) of
KV groups that lost all their heads. Gemma-3's q_norm/k_norm act on head_dim and are untouched; the attention
scaling uses head_dim, which does not change. Config: `num_attention_heads`, `num_key_value_heads` and an
explicit `head_dim`; when layers differ (scope=global), `attention_heads` / `key_value_heads` lists are stored
(the headline values are the largest) and `prune.load_pruned` applies them.
"""
from __future__ import annotations

import logging
import math

import torch

from diet import DietError, vote
from diet.options import Option
from diet.targets.base import (Target, column_abs_means, column_sq_norms, keep_inputs, keep_outputs,
                               removed_contribution)

log = logging.getLogger(__name__)

GQA_MODES = ("per_group", "kv_group")


def _head_slices(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Indices of the head_dim-wide slices of the given heads, in order."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _keep_heads(adapter, layer, kept: torch.Tensor, kv_kept: torch.Tensor) -> None:
    q, k, v, o = adapter.attention_projections(layer)
    head_dim = adapter.layer_head_dim(layer)
    keep_outputs(q, _head_slices(kept, head_dim))
    keep_inputs(o, _head_slices(kept, head_dim))
    keep_outputs(k, _head_slices(kv_kept, head_dim))
    keep_outputs(v, _head_slices(kv_kept, head_dim))
    adapter.set_head_counts(layer, kept.numel(), kv_kept.numel())


def set_head_counts(model, adapter, kept_heads: list[torch.Tensor]) -> None:
    """Keep, in each layer, the query heads `kept_heads[i]` (sorted indices; every KV group that keeps any keeps
    the same number) and the KV heads of the groups they belong to; record the counts in the config."""
    heads, kv_heads = [], []
    for layer, kept in zip(adapter.decoder_layers(model), kept_heads):
        groups = torch.unique(kept // (adapter.num_heads(layer) // adapter.num_kv_heads(layer)))
        _keep_heads(adapter, layer, kept, groups)
        heads.append(kept.numel())
        kv_heads.append(groups.numel())
    config = model.config
    config.head_dim = adapter.head_dim(model)
    config.num_attention_heads, config.num_key_value_heads = max(heads), max(kv_heads)
    if len(set(zip(heads, kv_heads))) == 1 and _valid(config):
        for name in ("attention_heads", "key_value_heads"):
            if hasattr(config, name):
                delattr(config, name)
        return
    config.attention_heads, config.key_value_heads = heads, kv_heads
    if not _valid(config):
        # transformers refuses the headline counts (Gemma-3: hidden_size % num_attention_heads != 0, e.g. 3 of 4
        # heads of a 640-wide model): headline the smallest larger count it accepts; load_pruned builds that and
        # slices every layer to its stored count (plain from_pretrained then refuses the shapes, as it should)
        for n in range(max(heads) + 1, config.hidden_size + 1):
            config.num_attention_heads = n
            config.num_key_value_heads = next(k for k in range(max(kv_heads), n + 1) if n % k == 0)
            if _valid(config):
                return
        raise DietError(f"prune.target=heads: no head count transformers accepts in a {type(config).__name__} of "
                        f"hidden size {config.hidden_size} holds {max(heads)} heads")


def _valid(config) -> bool:
    """Whether transformers' own config validation (run when a config is saved or built) accepts `config`."""
    try:
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
    except Exception:  # huggingface_hub's StrictDataclassClassValidationError, or a ValueError of older configs
        return False
    return True


class HeadsTarget(Target):
    name = "heads"
    stats_layout = "per_channel"   # per head until diet 0.1's first heads version: those cache entries do not fit
    compensable = True
    sequential = True
    weight_kinds = ("l2", "mean_abs")
    options = {"gqa": ("heads_gqa", Option("per_group", lambda v: v in GQA_MODES, ", ".join(GQA_MODES)))}

    @property
    def gqa(self) -> str:
        return self.settings["gqa"]

    def rounding(self, multiple_of: int) -> str:
        if self.gqa == "kv_group":
            return "whole KV groups with their query heads; prune.multiple_of does not apply to heads"
        return "whole heads, as many in every KV group; prune.multiple_of does not apply to heads"

    def hook_points(self, model, adapter):
        return {f"heads.{i}": adapter.attention_projections(layer)[3]
                for i, layer in enumerate(adapter.decoder_layers(model))}

    def point_width(self, module, model, adapter) -> int:
        return module.in_features

    def group_sizes(self, model, adapter):
        return {f"heads.{i}": adapter.layer_head_dim(layer) for i, layer in enumerate(adapter.decoder_layers(model))}

    def widths(self, model, adapter):
        return {f"heads.{i}": adapter.num_heads(layer) for i, layer in enumerate(adapter.decoder_layers(model))}

    def param_cost(self, model, adapter):
        """A query head: its head_dim rows of q_proj (and bias) and columns of o_proj; with gqa=kv_group also its
        share of the KV group's k/v rows, which go with the group."""
        cost = {}
        for i, layer in enumerate(adapter.decoder_layers(model)):
            q, k, v, o = adapter.attention_projections(layer)
            head_dim = adapter.layer_head_dim(layer)
            per_head = head_dim * (q.in_features + (q.bias is not None) + o.out_features)
            if self.gqa == "kv_group":
                size = adapter.num_heads(layer) // adapter.num_kv_heads(layer)
                per_head += head_dim * (k.in_features + (k.bias is not None) + v.in_features
                                        + (v.bias is not None)) / size
            cost[f"heads.{i}"] = per_head
        return cost

    @torch.no_grad()
    def weight_norms(self, model, adapter):
        """Per channel of o_proj's input: its column's L2 norm (a head's is the L2 norm of its head_dim ones)."""
        return {f"heads.{i}": column_sq_norms(adapter.attention_projections(layer)[3].weight).sqrt().cpu()
                for i, layer in enumerate(adapter.decoder_layers(model))}

    @torch.no_grad()
    def column_mean_abs(self, model, adapter):
        """Per channel of o_proj's input: the mean |w| of its column (Wanda-sp sums a head's channels' scores)."""
        return {f"heads.{i}": column_abs_means(adapter.attention_projections(layer)[3].weight).cpu()
                for i, layer in enumerate(adapter.decoder_layers(model))}

    def _group_size(self, model, adapter) -> dict[str, int]:
        """Query heads per KV group, per mask key."""
        return {f"heads.{i}": adapter.num_heads(layer) // adapter.num_kv_heads(layer)
                for i, layer in enumerate(adapter.decoder_layers(model))}

    def vote(self, model, adapter, scores, rules):
        size = self._group_size(model, adapter)
        by_votes = rules.vote_method != "mean_score"
        rules = {**rules.kwargs(), "sparsity": self.sparsity}
        if self.gqa == "kv_group" or all(n == 1 for n in size.values()):  # multi-head attention: the same unit
            if all(size[g] == n for g, n in self.widths(model, adapter).items()):
                log.warning("prune.heads_gqa=kv_group: every layer has a single KV group, which min_keep keeps, so "
                            "no head is removed; prune.heads_gqa=per_group prunes query heads")
            group_scores = {task: {g: s.reshape(-1, size[g]).mean(dim=1) for g, s in task_scores.items()}
                            for task, task_scores in scores.items()}
            masks, per_task, votes = vote.build_masks(group_scores, **{**rules, "multiple_of": 1})

            def expand(d):
                return {g: t.repeat_interleave(size[g]) for g, t in d.items()}

            return expand(masks), {t: expand(m) for t, m in per_task.items()}, expand(votes)
        widths = self.widths(model, adapter)
        n_kv = {g: widths[g] // size[g] for g in widths}
        masks, per_task, votes = vote.build_masks(scores, **{**rules, "multiple_of": math.lcm(*n_kv.values())})
        tasks = sorted(scores)
        per_task = {t: {g: _balance(m, vote.order(scores[t][g], None), size[g]) for g, m in per_task[t].items()}
                    for t in tasks}
        if len(tasks) == 1:
            return dict(per_task[tasks[0]]), per_task, votes
        mean = vote.mean_normalised_scores(scores)
        final = {g: _balance(m, vote.order(votes[g] if by_votes else mean[g], mean[g] if by_votes else None), size[g])
                 for g, m in masks.items()}
        return final, per_task, votes

    def check(self, model, adapter, masks):
        size = self._group_size(model, adapter)
        for key, mask in masks.items():
            counts = mask.reshape(-1, size[key]).sum(dim=1).tolist()
            if len({c for c in counts if c}) > 1:
                raise DietError(f"masks[{key!r}]: keeps {counts} query heads per key/value group; allowed: the same "
                                "number in every group that keeps any (grouped-query attention), whole groups removed")

    def compensation(self, model, adapter, kept, mean_inputs):
        deltas = {}
        for i, layer in enumerate(adapter.decoder_layers(model)):
            o = adapter.attention_projections(layer)[3]
            removed = torch.ones(o.in_features, dtype=torch.bool)
            removed[_head_slices(kept[f"heads.{i}"], adapter.layer_head_dim(layer))] = False
            deltas[(i, "attention")] = removed_contribution(o, removed, mean_inputs[f"heads.{i}"])
        return deltas

    def prune(self, model, adapter, kept):
        set_head_counts(model, adapter, [kept[f"heads.{i}"] for i in range(len(adapter.decoder_layers(model)))])

    def zero_masked(self, model, adapter, masks):
        for i, layer in enumerate(adapter.decoder_layers(model)):
            o = adapter.attention_projections(layer)[3]
            removed = ~masks[f"heads.{i}"].repeat_interleave(adapter.layer_head_dim(layer))
            o.weight[:, removed.to(o.weight.device)] = 0

    def restore(self, model, adapter, config):
        heads, kv_heads = getattr(config, "attention_heads", None), getattr(config, "key_value_heads", None)
        if not heads:
            return
        # built with the largest counts; which rows survive does not matter, the checkpoint's weights come next
        for layer, n, n_kv in zip(adapter.decoder_layers(model), heads, kv_heads):
            _keep_heads(adapter, layer, torch.arange(n), torch.arange(n_kv))


def _balance(mask: torch.Tensor, order: torch.Tensor, group_size: int) -> torch.Tensor:
    """The same number of kept heads in every KV group: each group keeps its best mask.sum() / n_groups heads
    by `order` (indices best first). The count is a multiple of the number of groups (the vote's multiple_of)."""
    n_groups = mask.numel() // group_size
    per_group = int(mask.sum()) // n_groups
    balanced = torch.zeros_like(mask)
    taken = [0] * n_groups
    for head in order.tolist():
        group = head // group_size
        if taken[group] < per_group:
            balanced[head] = True
            taken[group] += 1
    return balanced
