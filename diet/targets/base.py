"""The Target interface and the slicing / norm helpers the targets share."""
from __future__ import annotations

import torch
from torch import nn

from diet import DietError, vote


def group_index(key: str) -> int:
    """Layer index of a per-layer key (`mlp.3` -> 3)."""
    return int(key.rsplit(".", 1)[1])


class Target:
    """One prunable kind of dimension, with its settings: `sparsity` (the fraction of its dimensions removed) and
    the options it declares in `options` ({option: (key under prune., Option)}, e.g. heads' gqa). Subclasses set
    `name` and implement the methods below (see the package docstring)."""

    name = ""
    hook_kind = "input"       # where its statistics are recorded (diet/stats.py HOOK_KINDS)
    options: dict = {}
    stats_layout = None       # a profile cache key field, set when what a hook point stores changed (heads)
    compensable = False       # implements `compensation`
    exclusive = False         # pruned alone: prune.target lists no other target beside it (layers)
    sequential = False        # masks are per decoder layer, each hook point in that layer (calib.sequential)
    weight_kinds = ("l2",)    # per-channel weight statistics it gives a scoring: weight_norms (l2), column_mean_abs

    def __init__(self, sparsity: float = 0.0, **options):
        self.sparsity = float(sparsity)
        self.settings = {key: options.get(key, option.default) for key, (_, option) in self.options.items()}
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"target {self.name!r} has no option {unknown[0]!r}")
        for key, (config_key, option) in self.options.items():
            if not option.check(self.settings[key]):
                raise DietError(f"prune.{config_key}: {self.settings[key]!r} is not allowed; allowed: {option.allowed}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity}, {self.settings})"

    # profile
    def hook_points(self, model, adapter) -> dict[str, nn.Module]:
        """Hook point -> module whose first forward input is the activation to record."""
        raise NotImplementedError

    def point_width(self, module: nn.Module, model, adapter) -> int:
        """Width of the activation recorded at `module` (channels, before any grouping into dimensions)."""
        raise NotImplementedError

    def group_sizes(self, model, adapter) -> dict[str, int]:
        """Channels per dimension at each hook point (a head is head_dim channels); 1 where absent."""
        return {}

    # masks
    def widths(self, model, adapter) -> dict[str, int]:
        raise NotImplementedError

    def weight_norms(self, model, adapter) -> dict[str, torch.Tensor]:
        """Per-channel L2 norm of the weights touching each channel, keyed like the hook points."""
        raise NotImplementedError

    def param_cost(self, model, adapter) -> dict[str, int]:
        """Per mask group, the decoder-layer parameters removing one of its dimensions removes
        (`prune.budget=params`)."""
        raise NotImplementedError
    def column_mean_abs(self, model, adapter) -> dict[str, torch.Tensor]:
        """Per channel, the mean |w| of the output projection's column it feeds (Wanda-sp, FLAP's WIFN), keyed like
        the hook points; only targets whose channels feed one output projection define it."""
        raise DietError(f"scoring: the mean |weight| of each channel's output column is not defined for "
                        f"prune.target={self.name}; allowed: prune.target=mlp or heads")

    def aggregate(self, per_point: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scores per hook point -> one score vector per mask group (hook points are the groups by default)."""
        return {point: per_point[point] for point in sorted(per_point, key=group_index)}

    def multiple_of(self, model, adapter, multiple_of: int) -> int:
        """The kept-width granularity this target uses, given `prune.multiple_of`."""
        return multiple_of

    def rounding(self, multiple_of: int) -> str:
        """What a budget is rounded to, for the warning when rounding misses it (`multiple_of` as this target
        uses it)."""
        return f"kept widths are multiples of {multiple_of}; prune.multiple_of=1 is exact"

    def vote(self, model, adapter, scores: dict[str, dict[str, torch.Tensor]], rules):
        """(final masks, per-task masks, votes) from {task: {group: score}} under `rules` (a `vote.Rules`)."""
        return vote.build_masks(scores, sparsity=self.sparsity, **rules.kwargs(self.multiple_of(
            model, adapter, rules.multiple_of)))

    # physical removal
    def check(self, model, adapter, masks: dict[str, torch.Tensor]) -> None:
        """Target-specific validity of masks already checked for keys, dtype, length and emptiness."""

    def prune(self, model, adapter, kept: dict[str, torch.Tensor]) -> None:
        """Remove everything not in `kept` (indices per mask key, CPU int64), in place."""
        raise NotImplementedError

    def compensation(self, model, adapter, kept: dict[str, torch.Tensor], mean_inputs: dict[str, torch.Tensor]
                     ) -> dict[tuple[int, str], torch.Tensor]:
        """{(layer index, block): delta}: what the removed channels' mean input contributes through their weights,
        to add to the bias of that block's output projection before `prune`, so the pruned model computes the
        dense one with those inputs held at their mean (`prune.compensation=mean`)."""
        raise DietError(f"prune.compensation: not supported for prune.target={self.name}; allowed: none")

    def zero_masked(self, model, adapter, masks: dict[str, torch.Tensor]) -> None:
        """Zero the removed dimensions of a dense model in place: what `prune` must reproduce exactly."""
        raise NotImplementedError

    def restore(self, model, adapter, config) -> None:
        """Apply per-layer widths stored in `config` to a freshly built model (no-op when there are none)."""


# ------------------------------------------------------------------------------------------------ slicing helpers

def scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1.0:
        return tensor
    return (tensor.float() * factor).to(tensor.dtype)


def set_parameter(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(tensor, requires_grad=old.requires_grad))


def keep_outputs(linear: nn.Linear, indices: torch.Tensor, factor: float = 1.0) -> None:
    indices = indices.to(linear.weight.device)
    set_parameter(linear, "weight", scaled(linear.weight.detach().index_select(0, indices), factor))
    if linear.bias is not None:
        set_parameter(linear, "bias", scaled(linear.bias.detach().index_select(0, indices), factor))
    linear.out_features = indices.numel()


def keep_inputs(linear: nn.Linear, indices: torch.Tensor) -> None:
    indices = indices.to(linear.weight.device)
    set_parameter(linear, "weight", linear.weight.detach().index_select(1, indices))
    linear.in_features = indices.numel()


def keep_norm(norm: nn.Module, indices: torch.Tensor, offset: float, divisor: float = 1.0) -> None:
    """Slice an RMSNorm's weight and divide its effective scale (offset + weight) by `divisor`."""
    weight = norm.weight.detach().index_select(0, indices.to(norm.weight.device))
    if divisor != 1.0:
        weight = ((offset + weight.float()) / divisor - offset).to(weight.dtype)
    set_parameter(norm, "weight", weight)


def numel(*tensors) -> int:
    return sum(t.numel() for t in tensors if t is not None)


def removed_contribution(linear: nn.Linear, removed: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """W[:, removed] @ mean[removed] in float32: the output a projection gets from inputs held at their mean."""
    removed = removed.to(linear.weight.device)
    return linear.weight.detach()[:, removed].float() @ mean.to(linear.weight.device).float()[removed]


def column_sq_norms(weight: torch.Tensor, rows_per_chunk: int = 4096) -> torch.Tensor:
    """sum over rows of w^2 per input column, in float32 on the weight's device, a block of rows at a time (an LM
    head of a 256k vocabulary never gets a full float32 copy)."""
    out = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], rows_per_chunk):
        block = weight[start:start + rows_per_chunk].float()
        out += (block * block).sum(dim=0)
    return out


def column_abs_means(weight: torch.Tensor, rows_per_chunk: int = 4096) -> torch.Tensor:
    """mean over rows of |w| per input column, in float32, a block of rows at a time (like `column_sq_norms`)."""
    out = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], rows_per_chunk):
        out += weight[start:start + rows_per_chunk].float().abs().sum(dim=0)
    return out / weight.shape[0]


def norm_scale(norm, offset: float) -> torch.Tensor:
    return offset + norm.weight.detach().float()
