"""target=mlp: the FFN neurons of each layer. Mask groups `mlp.<i>`, width = layer i's intermediate size.

Hook point `mlp.<i>`: the input of layer i's down projection (a neuron's activation). Weight norm: column j of
down_proj (the weights that write neuron j's output). Slicing: gate/up rows (and biases), down columns. Non-uniform
widths are stored in `config.intermediate_sizes` beside `intermediate_size` = the largest (see prune.py).
"""
from __future__ import annotations

import torch

from diet.targets.base import (Target, column_abs_means, column_sq_norms, keep_inputs, keep_outputs,
                               removed_contribution)


def set_mlp_width(model, adapter, kept: list[torch.Tensor]) -> None:
    for layer, indices in zip(adapter.decoder_layers(model), kept):
        gate, up, down = adapter.mlp_projections(layer)
        keep_outputs(gate, indices)
        keep_outputs(up, indices)
        keep_inputs(down, indices)
        adapter.set_mlp_width_attribute(layer, indices.numel())
    widths = adapter.intermediate_sizes(model)
    config = model.config
    if len(set(widths)) == 1:
        config.intermediate_size = widths[0]
        if hasattr(config, "intermediate_sizes"):
            del config.intermediate_sizes
    else:
        config.intermediate_size = max(widths)
        config.intermediate_sizes = widths


class MlpTarget(Target):
    name = "mlp"
    compensable = True
    sequential = True
    weight_kinds = ("l2", "mean_abs")

    def hook_points(self, model, adapter):
        return {f"mlp.{i}": adapter.mlp_projections(layer)[2] for i, layer in enumerate(adapter.decoder_layers(model))}

    def point_width(self, module, model, adapter) -> int:
        return module.in_features

    def widths(self, model, adapter):
        return {f"mlp.{i}": width for i, width in enumerate(adapter.intermediate_sizes(model))}

    def param_cost(self, model, adapter):
        """A neuron: its gate and up rows (and biases) and its down column."""
        cost = {}
        for i, layer in enumerate(adapter.decoder_layers(model)):
            gate, up, down = adapter.mlp_projections(layer)
            cost[f"mlp.{i}"] = (gate.in_features + up.in_features + down.out_features
                                + (gate.bias is not None) + (up.bias is not None))
        return cost

    @torch.no_grad()
    def weight_norms(self, model, adapter):
        return {f"mlp.{i}": column_sq_norms(adapter.mlp_projections(layer)[2].weight).sqrt().cpu()
                for i, layer in enumerate(adapter.decoder_layers(model))}

    @torch.no_grad()
    def column_mean_abs(self, model, adapter):
        return {f"mlp.{i}": column_abs_means(adapter.mlp_projections(layer)[2].weight).cpu()
                for i, layer in enumerate(adapter.decoder_layers(model))}

    def compensation(self, model, adapter, kept, mean_inputs):
        deltas = {}
        for i, layer in enumerate(adapter.decoder_layers(model)):
            down = adapter.mlp_projections(layer)[2]
            removed = torch.ones(down.in_features, dtype=torch.bool)
            removed[kept[f"mlp.{i}"]] = False
            deltas[(i, "mlp")] = removed_contribution(down, removed, mean_inputs[f"mlp.{i}"])
        return deltas

    def prune(self, model, adapter, kept):
        set_mlp_width(model, adapter, [kept[f"mlp.{i}"] for i in range(len(adapter.decoder_layers(model)))])

    def zero_masked(self, model, adapter, masks):
        for i, layer in enumerate(adapter.decoder_layers(model)):
            gate, up, down = adapter.mlp_projections(layer)
            removed = ~masks[f"mlp.{i}"].to(down.weight.device)
            for linear in (gate, up):
                linear.weight[removed] = 0
                if linear.bias is not None:
                    linear.bias[removed] = 0
            down.weight[:, removed] = 0

    def restore(self, model, adapter, config):
        if getattr(config, "intermediate_sizes", None):
            set_mlp_width(model, adapter, [torch.arange(width) for width in config.intermediate_sizes])
