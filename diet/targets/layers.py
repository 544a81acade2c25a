"""target=layers: whole decoder layers (ShortGPT, SLEB). One mask `layers`, bool, length num_hidden_layers.

Profile: hook point `layers.<i>` is decoder layer i, recorded at its input and output (hook kind `layer_io`, e.g.
`layer_cos` for Block Influence). Only scorings whose statistics are recorded there can rank layers
(`block_influence`); config.plan refuses the others in one line.

Budget: round(sparsity x L) layers go (half up, as every target rounds), between 1 and L - 1: a sparsity that
would remove every layer, or none at a sparsity above 0, is one DietError line. `prune.min_keep` means what it
means for any group: at least ceil(min_keep x L) layers stay. `prune.multiple_of` does not apply (it aligns
channel widths for GPU kernels; a layer count has no alignment), as for heads.

Removal goes through `prune.remove_layers` (renumbered layers, `num_hidden_layers`, each kept layer's
`layer_types` entry): the checkpoint loads with plain `from_pretrained`, and the model computes exactly the dense
one with the removed layers skipped (`zero_masked`: each removed layer replaced by a pass-through that returns its
input). That reference is for full-sequence forwards: a pass-through never writes its KV-cache slot, and
transformers reads the cached length from layer 0, so cached generation of the reference is wrong when layer 0 is
removed (the physically pruned model has no such slot and generates correctly; tests/test_layers.py). `restore`
has nothing to do: the saved config holds `num_hidden_layers` and each kept layer's `layer_types` entry.

A run prunes layers alone (`exclusive`): one run has one scoring and one method, and none ranks both whole layers
and channels; prune layers and channels in two runs, the second on the first's pruned_model.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from diet import DietError
from diet.targets.base import Target, group_index, numel


class PassThrough(nn.Module):
    """Stands in for a skipped decoder layer: returns its input hidden states (what transformers 5.23's decoder
    layers return is the hidden states tensor itself)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def skip_layers(model, adapter, removed) -> None:
    """Replace the decoder layers `removed` (indices) by pass-throughs, in place."""
    layers = adapter.layer_list(model)
    for i in removed:
        layers[int(i)] = PassThrough()


@contextlib.contextmanager
def skipped(model, adapter, removed):
    """The model with the layers `removed` skipped inside the block, the original layers back afterwards."""
    layers = adapter.layer_list(model)
    originals = {int(i): layers[int(i)] for i in removed}
    try:
        skip_layers(model, adapter, originals)
        yield model
    finally:
        for i, layer in originals.items():
            layers[i] = layer


def removed_count(n_layers: int, sparsity: float) -> int:
    """round(sparsity x L), half up (vote.kept_count's rounding)."""
    return math.floor(sparsity * n_layers + 0.5)


class LayersTarget(Target):
    name = "layers"
    hook_kind = "layer_io"
    exclusive = True          # pruned alone (see the module docstring)

    def hook_points(self, model, adapter):
        return {f"layers.{i}": layer for i, layer in enumerate(adapter.decoder_layers(model))}

    def point_width(self, module, model, adapter) -> int:
        return adapter.hidden_size(model)

    def widths(self, model, adapter):
        return {"layers": len(adapter.decoder_layers(model))}

    def param_cost(self, model, adapter):
        """A layer: all of its parameters (the mean layer, when pruned widths differ)."""
        layers = adapter.decoder_layers(model)
        return {"layers": sum(numel(*layer.parameters()) for layer in layers) / len(layers)}

    def aggregate(self, per_point):
        points = sorted(per_point, key=group_index)
        return {"layers": torch.cat([per_point[p].reshape(-1) for p in points])}

    def multiple_of(self, model, adapter, multiple_of: int) -> int:
        return 1

    def rounding(self, multiple_of: int) -> str:
        return "whole layers: round(sparsity x layers)"

    def budget(self, model, adapter) -> int:
        """How many layers go: round(sparsity x L), which must leave at least one layer and, at a sparsity above
        0, remove at least one."""
        n = len(adapter.decoder_layers(model))
        k = removed_count(n, self.sparsity)
        if k >= n or (self.sparsity > 0 and k == 0):
            if n < 2:
                allowed = "0 (a model of 1 layer has no layer to spare)"
            else:  # k in [1, n - 1] <=> sparsity in [0.5 / n, (n - 0.5) / n)
                allowed = (f"a sparsity that removes 1 to {n - 1} of the {n} layers "
                           f"({0.5 / n:.4g} <= sparsity < {(n - 0.5) / n:.4g}), or 0")
            raise DietError(f"sparsity: {self.sparsity} removes round({self.sparsity} x {n}) = {k} of the {n} decoder "
                            f"layers with prune.target=layers; allowed: {allowed}")
        return k

    def vote(self, model, adapter, scores, rules):
        self.budget(model, adapter)
        return super().vote(model, adapter, scores, rules)

    def prune(self, model, adapter, kept):
        from diet.prune import remove_layers  # diet.prune imports diet.targets: import it when called

        remove_layers(model, adapter, kept["layers"].tolist())

    def zero_masked(self, model, adapter, masks):
        skip_layers(model, adapter, (~masks["layers"]).nonzero().flatten().tolist())
