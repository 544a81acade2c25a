"""Vote stage: scores from profile statistics (or weights), per-task keep-masks, and their merge into one mask.

Masks are dicts of bool tensors keyed by group: `hidden` (one residual mask shared by every layer) or `mlp.<i>`.
Every ordering is explicit and stable, and tasks and groups are always visited in sorted order (groups by layer
index), so the same scores give a bit-identical mask whatever the order of the dicts passed in.

Scores come from `diet/scoring.py` (named scorings) and the target (`diet/targets/`, which aggregates hook
points into mask groups and owns the weight norms); this module turns scores into masks.

Merge rules (`vote.method`, registered in MERGE_RULES), over T tasks. Each rule is a ranking of the dimensions; the
final mask keeps the top of that ranking under the budget (scope, min_keep, multiple_of below), so every rule prunes
exactly the same number of dimensions and only the choice of dimensions differs. "Position" is a dimension's place in
one task's own ranking (0 = best): within its group by raw score for scope=layer, in the task's global ranking of
normalised scores (lower layer, then lower index on ties) for scope=global; positions ignore min_keep's reserve,
which applies to the final ranking like to any other. "Mean" is the mean over tasks of the
normalised scores (`normalise`, per group), the tie-breaker of every rule but mean_score.
  majority:     the threshold vote. Each task keeps its top-k dimensions; a dimension passes when at least
                need = ceil(threshold * T) tasks keep it (strict majority, T // 2 + 1, when threshold is None); k is
                the smallest width at which the budget passes, and that last step's extra dimensions go by mean.
                Equivalently: rank by the need-th best position over tasks (asc), then mean. The threshold selects
                at an exact budget: 1/T is a budgeted union (each task's best dimensions first), 1 a budgeted
                intersection (a dimension is as good as its worst task says).
  union:        majority with threshold 1/T;  intersection: majority with threshold 1.
  vote_count:   each task's own mask (top kept_count) gives one vote; rank by votes, then mean. The fill/trim
                rule of earlier versions: at an exact budget the threshold cannot change its mask.
  mean_score:   no vote: the top of the mean normalised score.
  max_score:    the max over tasks of the normalised score, then mean: a dimension one task needs strongly stays.
  borda:        Borda count: rank by the sum over tasks of positions (asc), then mean.
  vote.exact_budget=false applies to the voting rules (majority, union, intersection, vote_count): each group keeps
  the dimensions with at least `need` votes from the tasks' own masks (the achieved sparsity is whatever the vote
  gives), ranked by votes then mean for min_keep / multiple_of rounding. The score rules are always exact.

Scope, min_keep and multiple_of (`build_masks`):
  scope=layer:  each group keeps kept_count(width, sparsity), rounded to an allowed width (below); the same
                fraction in every layer, so equal-width layers keep equal widths.
  scope=global: one ranking over all groups: each group's scores are normalised (divided by their mean, see
                `normalise`) and concatenated in layer order; the budget is kept_count(sum of widths, sparsity).
                Per-task masks, the vote ranking and the exact budget are all global; layers end up with
                different widths. Ties: lower layer first, then lower index.
  min_keep:     a fraction in [0, 1] of each group's width that is never removed: group g keeps at least
                lo_g = the smallest allowed width >= max(1, ceil(min_keep * width_g)). In global scope these lo_g
                dimensions (the group's own best) are reserved first and the rest of the budget is filled from the
                global ranking, which is the same as "global top-k, then raise short groups by taking from the
                globally worst kept dimensions". In layer scope it only guards against a budget it cannot meet.
                Infeasible (DietError naming prune.min_keep, its value and the largest allowed value, floored to
                4 decimals) when
                layer: lo_g > the layer's kept width for some group; global: sum of lo_g > the budget.
  multiple_of:  an integer >= 1; every kept width is a multiple of it, or the group's full width (a group
                narrower than multiple_of is not pruned). Layer scope: the nearest allowed width to kept_count
                (ties to the smaller, so a tie never prunes less than asked). Global scope: each group's count
                from the global ranking is rounded down to an allowed width (never below lo_g), then groups are
                rounded up one at a time, in order of the fraction of the step they already had (largest first,
                then lower layer), while that brings the total closer to the budget (largest-remainder
                apportionment): the total is within multiple_of / 2 of the budget when widths are multiples of it.
                Within a group, the kept dimensions are always the top of the ranking restricted to that group.
  exact_budget=false (votes): each group keeps its voted dimensions, raised to lo_g and rounded to the nearest
                allowed width by the same ranking (with min_keep met and multiple_of=1: exactly the voted set).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from diet import DietError

SCOPES = ("layer", "global")
DEFAULT_MIN_KEEP = 0.125
_EPS = 1e-9


@dataclass(frozen=True)
class Rules:
    """How scores become masks (the `vote.*` and `prune.*` keys of a run): see the module docstring."""
    scope: str = "layer"
    min_keep: float = DEFAULT_MIN_KEEP
    multiple_of: int = 1
    vote_method: str = "majority"
    threshold: float | None = None
    exact_budget: bool = True

    def kwargs(self, multiple_of: int | None = None) -> dict:
        """`build_masks` keyword arguments; `multiple_of` as the target resolved it."""
        return dict(scope=self.scope, min_keep=self.min_keep, vote_method=self.vote_method, threshold=self.threshold,
                    exact_budget=self.exact_budget, multiple_of=self.multiple_of if multiple_of is None else multiple_of)


def normalise(score: torch.Tensor) -> torch.Tensor:
    """Scale-free score: divide by the mean, so groups and tasks of different magnitude can be averaged."""
    return score / score.mean().clamp_min(torch.finfo(score.dtype).tiny)


def _group_key(name: str):
    prefix, _, suffix = name.rpartition(".")
    return (prefix, int(suffix)) if prefix and suffix.isdigit() else (name, -1)


def sorted_groups(names) -> list[str]:
    return sorted(names, key=_group_key)


# -------------------------------------------------------------------------------------------- today's helpers

def kept_count(width: int, sparsity: float) -> int:
    removed = math.floor(sparsity * width + 0.5)
    return max(1, width - removed)


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores; ties go to the lower index (stable sort)."""
    order = torch.sort(score, descending=True, stable=True).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def task_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return {group: top_k_mask(score, kept_count(score.numel(), sparsity)) for group, score in scores.items()}


def rank(votes: torch.Tensor, mean_score: torch.Tensor) -> torch.Tensor:
    """Indices ordered by votes (desc), then mean normalised score (desc), then index (asc)."""
    by_score = torch.sort(mean_score, descending=True, stable=True).indices
    by_votes = torch.sort(votes[by_score], descending=True, stable=True).indices
    return by_score[by_votes]


def required_votes(n_tasks: int, threshold: float | None, method: str = "majority") -> int:
    if method == "union":
        return 1
    if method == "intersection":
        return n_tasks
    if threshold is None:
        return n_tasks // 2 + 1
    return max(1, math.ceil(threshold * n_tasks - 1e-9))


def _check_choice(key: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DietError(f"{key}: {value!r} is not allowed; allowed: {', '.join(allowed)}")


def _no_votes_error(method: str, threshold, where: str, need: int, n_tasks: int, most: int) -> DietError:
    if method in ("majority", "vote_count"):
        return DietError(f"vote.threshold: {threshold} keeps no dimension of {where} (needs {need} of {n_tasks} "
                         f"task votes; the most any dimension got is {most}); allowed: a lower threshold or "
                         "vote.exact_budget=true")
    return DietError(f"vote.method: {method!r} keeps no dimension of {where} (needs {need} of {n_tasks} task votes; "
                     f"the most any dimension got is {most}); allowed: majority, union, mean_score, or "
                     "vote.exact_budget=true")


def mean_normalised_scores(per_task_scores: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per group, the mean over tasks (sorted) of the normalised task scores: the merge's secondary key."""
    tasks = sorted(per_task_scores)
    return {group: torch.stack([normalise(per_task_scores[t][group]) for t in tasks]).mean(dim=0)
            for group in sorted_groups(per_task_scores[tasks[0]])}


# ------------------------------------------------------------------------------------------------ merge rules

class MergeInput:
    """What a merge rule may rank by (see the module docstring): tasks sorted, groups in layer order."""

    def __init__(self, per_task_scores, per_task_masks, groups: list[str], scope: str, threshold: float | None,
                 method: str):
        self.tasks, self.groups = sorted(per_task_scores), groups
        self.need = required_votes(len(self.tasks), threshold, method)
        self.normalised = {t: {g: normalise(per_task_scores[t][g]) for g in groups} for t in self.tasks}
        self.mean = {g: torch.stack([self.normalised[t][g] for t in self.tasks]).mean(dim=0) for g in groups}
        self.votes = {g: torch.stack([per_task_masks[t][g] for t in self.tasks]).sum(dim=0) for g in groups}
        if scope == "layer":
            self.positions = {t: {g: _positions(order(per_task_scores[t][g], None)) for g in groups}
                              for t in self.tasks}
        else:
            self.positions = {}
            for t in self.tasks:
                flat = _positions(order(torch.cat([self.normalised[t][g] for g in groups]), None))
                self.positions[t] = dict(zip(groups, flat.split([self.mean[g].numel() for g in groups])))

    def stacked_positions(self, group: str) -> torch.Tensor:
        return torch.stack([self.positions[t][group] for t in self.tasks]).double()


def _threshold_keys(inp: MergeInput):
    """The need-th best position over tasks: the smallest k at which the dimension passes is that position + 1."""
    entry = {g: torch.sort(inp.stacked_positions(g), dim=0).values[inp.need - 1] for g in inp.groups}
    return {g: -entry[g] for g in inp.groups}, inp.mean


def _vote_count_keys(inp: MergeInput):
    return inp.votes, inp.mean


def _mean_score_keys(inp: MergeInput):
    return inp.mean, None


def _max_score_keys(inp: MergeInput):
    return {g: torch.stack([inp.normalised[t][g] for t in inp.tasks]).max(dim=0).values for g in inp.groups}, inp.mean


def _borda_keys(inp: MergeInput):
    return {g: -inp.stacked_positions(g).sum(dim=0) for g in inp.groups}, inp.mean


# name -> (ranking keys (primary, secondary or None), whether vote.exact_budget=false / votes apply)
MERGE_RULES = {
    "majority": (_threshold_keys, True),
    "union": (_threshold_keys, True),
    "intersection": (_threshold_keys, True),
    "vote_count": (_vote_count_keys, True),
    "mean_score": (_mean_score_keys, False),
    "max_score": (_max_score_keys, False),
    "borda": (_borda_keys, False),
}
VOTE_METHODS = tuple(MERGE_RULES)


# ------------------------------------------------------------------------------------ budget, scope, rounding

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Budget:
    """Allowed and kept widths per group for one (widths, sparsity, scope, min_keep, multiple_of); see the module
    docstring. Allowed widths of a group of width w: the multiples of multiple_of in [multiple_of, w], and w."""

    def __init__(self, widths: dict[str, int], sparsity: float, scope: str, min_keep: float, multiple_of: int):
        _check_choice("prune.scope", scope, SCOPES)
        if not (_is_number(min_keep) and 0 <= min_keep <= 1):
            raise DietError(f"prune.min_keep: {min_keep!r} is not allowed; allowed: a fraction in [0, 1] of each "
                            "layer's width")
        if not (_is_int(multiple_of) and multiple_of >= 1):
            raise DietError(f"prune.multiple_of: {multiple_of!r} is not allowed; allowed: an integer >= 1")
        self.groups = sorted_groups(widths)
        self.widths = {g: int(widths[g]) for g in self.groups}
        self.sparsity, self.scope, self.min_keep, self.m = sparsity, scope, min_keep, multiple_of
        self.lo = {g: self._min_width(g, min_keep) for g in self.groups}
        if scope == "layer":
            self.layer_widths = {g: self._nearest(g, kept_count(w, sparsity), self._min_width(g, 0.0))
                                 for g, w in self.widths.items()}
            self.total = sum(self.layer_widths.values())
        else:
            self.total = kept_count(sum(self.widths.values()), sparsity)
        self._check_feasible()

    # allowed widths
    def _floor(self, g: str, c: int) -> int:
        """Largest allowed width <= c (0 when there is none)."""
        w = self.widths[g]
        return w if c >= w else (c // self.m) * self.m

    def _ceil(self, g: str, c: int) -> int:
        """Smallest allowed width >= c (c <= width)."""
        return min(self.widths[g], -(-max(c, 1) // self.m) * self.m)

    def _nearest(self, g: str, c: int, lo: int) -> int:
        """Allowed width nearest to max(c, lo), never below lo (an allowed width); ties to the smaller."""
        c = max(c, lo)
        down, up = max(self._floor(g, c), lo), self._ceil(g, c)
        return down if c - down <= up - c else up

    def _min_width(self, g: str, fraction: float) -> int:
        return self._ceil(g, max(1, math.ceil(fraction * self.widths[g] - _EPS)))

    # feasibility of min_keep
    def _feasible(self, fraction: float) -> bool:
        if self.scope == "layer":
            return all(self._min_width(g, fraction) <= self.layer_widths[g] for g in self.groups)
        return sum(self._min_width(g, fraction) for g in self.groups) <= self.total

    def _largest_min_keep(self) -> float:
        """The largest feasible min_keep (it is one of the breakpoints a / width_g, a an allowed width)."""
        if self.scope == "layer":
            return min(1.0 if k == self.widths[g] else k / self.widths[g] for g, k in self.layer_widths.items())
        candidates = sorted({a / w for w in set(self.widths.values())
                             for a in list(range(self.m, w + 1, self.m)) + [w]})
        low, high = 0, len(candidates) - 1  # candidates[0] is always feasible when min_keep=0 is
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self._feasible(candidates[mid]) else (low, mid - 1)
        return candidates[low]

    def _check_feasible(self) -> None:
        if self._feasible(self.min_keep):
            return
        where = f"prune.scope={self.scope}, prune.multiple_of={self.m} and sparsity {self.sparsity}"
        if self.scope == "layer":
            g = next(g for g in self.groups if self.lo[g] > self.layer_widths[g])
            need = (f"it needs {self.lo[g]} of the {self.widths[g]} dimensions of {g}, which keeps "
                    f"{self.layer_widths[g]}")
        else:
            need = (f"it reserves {sum(self.lo.values())} dimensions over {len(self.groups)} groups, the budget "
                    f"keeps {self.total}")
        if not self._feasible(0.0):
            raise DietError(f"prune.multiple_of: {self.m} is not allowed with prune.scope={self.scope} and sparsity "
                            f"{self.sparsity}: one multiple per group "
                            f"({sum(self._min_width(g, 0.0) for g in self.groups)}) exceeds the budget of "
                            f"{self.total}; allowed: a smaller multiple_of or sparsity")
        largest = math.floor(self._largest_min_keep() * 1e4 + 1e-6) / 1e4
        raise DietError(f"prune.min_keep: {self.min_keep} is not allowed with {where}: {need}; "
                        f"allowed: a fraction in [0, {largest:g}]")

    # widths
    def round_to_total(self, counts: dict[str, int]) -> dict[str, int]:
        """Global scope: counts (each >= lo, summing to the budget) to allowed widths, largest remainder first."""
        widths = {g: max(self._floor(g, c), self.lo[g]) for g, c in counts.items()}
        total = sum(widths.values())
        steps = {g: self._ceil(g, counts[g]) - widths[g] for g in self.groups}
        order = sorted((g for g in self.groups if steps[g] > 0),
                       key=lambda g: (-Fraction(counts[g] - widths[g], steps[g]), self.groups.index(g)))
        for g in order:
            if abs(total + steps[g] - self.total) < abs(total - self.total):
                widths[g] += steps[g]
                total += steps[g]
        return widths

    def voted_widths(self, counts: dict[str, int]) -> dict[str, int]:
        """exact_budget=false: each group's voted count, raised to lo and rounded to the nearest allowed width."""
        return {g: self._nearest(g, counts[g], self.lo[g]) for g in self.groups}


def order(primary: torch.Tensor, secondary: torch.Tensor | None) -> torch.Tensor:
    """Indices best first: primary desc, then secondary desc, then index asc."""
    if secondary is None:
        return torch.sort(primary, descending=True, stable=True).indices
    return rank(primary, secondary)


def _positions(order: torch.Tensor) -> torch.Tensor:
    positions = torch.empty_like(order)
    positions[order] = torch.arange(order.numel())
    return positions


def _select(budget: _Budget, primary: dict[str, torch.Tensor], secondary: dict[str, torch.Tensor] | None,
            widths: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Keep, in each group, the top of the ranking restricted to it: `widths` when given, else the exact budget
    (layer: the layer widths; global: lo reserved, the rest from the global ranking, rounded to allowed widths)."""
    groups = budget.groups
    within = {g: _positions(order(primary[g], None if secondary is None else secondary[g])) for g in groups}
    if widths is None and budget.scope == "layer":
        widths = budget.layer_widths
    if widths is None:
        ranking = order(torch.cat([primary[g] for g in groups]),
                       None if secondary is None else torch.cat([secondary[g] for g in groups]))
        group_id = torch.repeat_interleave(torch.arange(len(groups)),
                                           torch.tensor([budget.widths[g] for g in groups]))
        reserved = torch.cat([within[g] < budget.lo[g] for g in groups])
        rest = ranking[~reserved[ranking]][: budget.total - sum(budget.lo.values())]
        extra = torch.bincount(group_id[rest], minlength=len(groups)).tolist()
        widths = budget.round_to_total({g: budget.lo[g] + extra[i] for i, g in enumerate(groups)})
    return {g: within[g] < widths[g] for g in groups}


def build_masks(per_task_scores: dict[str, dict[str, torch.Tensor]], *, sparsity: float, scope: str = "layer",
                vote_method: str = "majority", threshold: float | None = None,
                exact_budget: bool = True, min_keep: float = DEFAULT_MIN_KEEP, multiple_of: int = 1
                ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Per-task masks and their merge under one scope / min_keep / multiple_of rule (see the module docstring).

    per_task_scores: {task: {group: raw score, a cpu tensor}} (e.g. `group_scores` per task; one entry for
    generic, magnitude or random). Returns (final masks, per-task masks {task: {group: mask}}, votes {group:
    int64 counts}), groups in layer order, tasks sorted. Each per-task mask is the mask that task alone would get
    (method=per_task evaluates each with its own). With a single task the final mask is that task's mask. With
    scope=layer, multiple_of=1 and min_keep met by every group, the per-task masks are exactly `task_masks`.
    """
    _check_choice("vote.method", vote_method, VOTE_METHODS)
    if not per_task_scores:
        raise ValueError("build_masks needs the scores of at least one task")
    tasks = sorted(per_task_scores)
    groups = sorted_groups(per_task_scores[tasks[0]])
    widths = {g: per_task_scores[tasks[0]][g].numel() for g in groups}
    for t in tasks:
        found = {g: s.numel() for g, s in per_task_scores[t].items()}
        if found != widths:
            raise ValueError(f"scores of task {t!r} have groups/widths {found}; task {tasks[0]!r} has {widths}")
    budget = _Budget(widths, sparsity, scope, min_keep, multiple_of)

    def task_primary(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # layer scope ranks raw scores (bit-identical to `task_masks`); global needs them comparable across groups
        return {g: (scores[g] if scope == "layer" else normalise(scores[g])) for g in groups}

    per_task = {t: _select(budget, task_primary(per_task_scores[t]), None) for t in tasks}
    votes = {g: torch.stack([per_task[t][g] for t in tasks]).sum(dim=0) for g in groups}
    if len(tasks) == 1:
        return dict(per_task[tasks[0]]), per_task, votes
    keys, voting = MERGE_RULES[vote_method]
    inp = MergeInput(per_task_scores, per_task, groups, scope, threshold, vote_method)
    if exact_budget or not voting:
        primary, secondary = keys(inp)
        return _select(budget, primary, secondary), per_task, votes
    counts = {g: int((votes[g] >= inp.need).sum()) for g in groups}
    empty = [g for g in groups if counts[g] == 0] if scope == "layer" else \
        ([] if any(counts.values()) else ["any group"])
    if empty:
        most = int(votes[empty[0]].max()) if scope == "layer" else max(int(v.max()) for v in votes.values())
        raise _no_votes_error(vote_method, threshold, empty[0], inp.need, len(tasks), most)
    return _select(budget, votes, inp.mean, budget.voted_widths(counts)), per_task, votes


def achieved_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """The fraction of dimensions removed, from integer counts (128 of 640 removed is 0.2, not 0.19999999999999996)."""
    total = sum(m.numel() for m in masks.values())
    return (total - sum(int(m.sum()) for m in masks.values())) / total
