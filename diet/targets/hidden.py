"""target=hidden: residual-stream dimensions, one mask `hidden` shared by every layer.

Hook points `hidden.<i>`: the residual stream entering decoder layer i, and `hidden.<L>` entering the final norm.
Scores are computed per hook point and the normalised point scores averaged (later layers have far larger
activations; a plain sum would let the last few layers decide alone).

Weight norms:
  hidden.<i>: the readers of the residual stream entering layer i: column d of q, k, v, gate and up stacked into
              one matrix, each multiplied by the effective scale (norm_offset + weight) of the RMSNorm in front
              of it (adapter.residual_norms(layer).pre: the first feeds attention, the last feeds the MLP), i.e.
              sqrt(sum over those readers of (s_d * ||W[:, d]||)^2).
  hidden.<L>: the LM head's column d times the final norm's effective scale (tied heads read the embedding).

Slicing keeps the RMS statistics exact by carrying the pruned stream multiplied by c = sqrt(d'/d); see prune.py.

A model whose residual stream was rotated (`config.rotated_residual`: method=slicegpt, prune.rotate=pca; see
diet/transforms/rotation.py) has its dimensions in principal bases: index j is the j-th principal direction of
every rotated point. Its hook points are then `hidden.<i>`, the stream entering layer i's MLP pre-norm (always in
a rotated basis, also where a tied model keeps layer 0's input and the final norm's in the original one), and
slicing, parameter costs and restoring on load go to rotation.py.
"""
from __future__ import annotations

import math

import torch

from diet import vote
from diet.targets.base import (Target, column_sq_norms, group_index, keep_inputs, keep_norm, keep_outputs,
                               norm_scale, scaled, set_parameter)
from diet.transforms import rotation


class HiddenTarget(Target):
    name = "hidden"

    def hook_points(self, model, adapter):
        layers = adapter.decoder_layers(model)
        if adapter.is_rotated(model):
            return {f"hidden.{i}": adapter.residual_norms(layer).pre[-1] for i, layer in enumerate(layers)}
        points = {f"hidden.{i}": layer for i, layer in enumerate(layers)}
        points[f"hidden.{len(layers)}"] = adapter.final_norm(model)
        return points

    def point_width(self, module, model, adapter) -> int:
        return adapter.hidden_size(model)

    def widths(self, model, adapter):
        return {"hidden": adapter.hidden_size(model)}

    def aggregate(self, per_point):
        points = sorted(per_point, key=group_index)
        return {"hidden": torch.stack([vote.normalise(per_point[p]) for p in points]).mean(dim=0)}

    def multiple_of(self, model, adapter, multiple_of: int) -> int:
        # transformers refuses to save or load a config whose hidden_size is not a multiple of num_attention_heads
        # (head_dim is explicit after pruning, so only that check needs it); a rotated model keeps hidden_size
        if adapter.is_rotated(model):
            return multiple_of
        return math.lcm(multiple_of, model.config.num_attention_heads)

    def param_cost(self, model, adapter):
        """A residual dimension, in every layer: a column of each reader, a row (and bias) of each writer, a norm
        weight of each norm (the embedding, LM head and final norm are outside the decoder layers)."""
        if adapter.is_rotated(model):  # the average over the full width (shortcuts are k x k: not linear in k; the
            d = model.config.rotated_residual["width"]  # budget solves for the width instead: fraction_for_params)
            return {"hidden": (rotation.decoder_params_at(model, adapter, d)
                               - rotation.decoder_params_at(model, adapter, 0)) // d}
        total = 0
        for layer in adapter.decoder_layers(model):
            total += sum(r.out_features for r in adapter.residual_readers(layer))
            total += sum(w.in_features + (w.bias is not None) for w in adapter.residual_writers(layer))
            norms = adapter.residual_norms(layer)
            total += len(norms.pre) + len(norms.post)
        return {"hidden": total}

    def fraction_for_params(self, model, adapter, fraction: float, multiple_of: int, dense_decoder: int):
        """prune.budget=params on a rotated model: the fraction of directions whose slicing leaves at most
        (1 - fraction) of the unrotated decoder's parameters (shortcut matrices and post maps counted; one
        DietError line when no width does); None on an unrotated model (the linear cost of `param_cost` is exact
        there)."""
        if not adapter.is_rotated(model):
            return None
        k = rotation.slicegpt_width(model, adapter, fraction, self.multiple_of(model, adapter, multiple_of), "params",
                                    dense_decoder)
        return 1 - k / model.config.rotated_residual["width"]

    @torch.no_grad()
    def weight_norms(self, model, adapter):
        layers = adapter.decoder_layers(model)
        if adapter.is_rotated(model):  # the readers of each MLP's (rotated) input, the norm has unit scale there
            return {f"hidden.{i}": sum(column_sq_norms(r.weight) for r in adapter.mlp_projections(layer)[:2]
                                       ).sqrt().cpu() for i, layer in enumerate(layers)}
        offset = adapter.norm_offset
        norms = {}
        for i, layer in enumerate(layers):
            gate, up, _ = adapter.mlp_projections(layer)
            pre = adapter.residual_norms(layer).pre
            total = None
            for reader in adapter.residual_readers(layer):
                norm = pre[-1] if (reader is gate or reader is up) else pre[0]
                sq = column_sq_norms(reader.weight) * norm_scale(norm, offset).to(reader.weight.device).square()
                total = sq if total is None else total + sq
            norms[f"hidden.{i}"] = total.sqrt().cpu()
        head = adapter.lm_head(model).weight
        scale = norm_scale(adapter.final_norm(model), offset).to(head.device)
        norms[f"hidden.{len(layers)}"] = (column_sq_norms(head) * scale.square()).sqrt().cpu()
        return norms

    def prune(self, model, adapter, kept):
        if adapter.is_rotated(model):
            rotation.slice_rotated(model, adapter, kept["hidden"])
            return
        indices = kept["hidden"]
        width, kept_width = adapter.hidden_size(model), indices.numel()
        c = (kept_width / width) ** 0.5
        offset = adapter.norm_offset
        head_dim = adapter.head_dim(model)
        tied = adapter.word_embeddings_tied(model)

        embedding = adapter.embedding(model)
        embedding_factor = 1.0 if adapter.embedding_scaled_by_sqrt_width else c
        embedding_weight = embedding.weight.detach().index_select(1, indices.to(embedding.weight.device))
        set_parameter(embedding, "weight", scaled(embedding_weight, embedding_factor))
        embedding.embedding_dim = kept_width

        lm_head = adapter.lm_head(model)
        if tied:
            lm_head.weight = embedding.weight
            lm_head.in_features = kept_width
            lm_head_factor = embedding_factor
        else:
            keep_inputs(lm_head, indices)
            lm_head_factor = 1.0

        for layer in adapter.decoder_layers(model):
            for reader in adapter.residual_readers(layer):
                keep_inputs(reader, indices)
            for writer in adapter.residual_writers(layer):
                keep_outputs(writer, indices, factor=c)
            norms = adapter.residual_norms(layer)
            for norm in norms.pre:
                keep_norm(norm, indices, offset, divisor=c)
            for norm in norms.post:
                keep_norm(norm, indices, offset)
            adapter.set_hidden_size_attribute(layer, kept_width)
        keep_norm(adapter.final_norm(model), indices, offset, divisor=c * lm_head_factor)

        model.config.hidden_size = kept_width
        model.config.head_dim = head_dim
        adapter.refresh_embedding_scale(model)

    def restore(self, model, adapter, config):
        if getattr(config, "rotated_residual", None):
            rotation.restore_rotated(model, adapter, config)

    def zero_masked(self, model, adapter, masks):
        if adapter.is_rotated(model):
            raise NotImplementedError("zero_masked of a rotated model: its streams have several bases")
        removed = ~masks["hidden"]
        adapter.embedding(model).weight[:, removed.to(adapter.embedding(model).weight.device)] = 0
        for layer in adapter.decoder_layers(model):
            for writer in adapter.residual_writers(layer):
                writer.weight[removed.to(writer.weight.device)] = 0
                if writer.bias is not None:
                    writer.bias[removed.to(writer.bias.device)] = 0
