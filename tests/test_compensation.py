"""Added output biases (FLAP-style compensation): the model equals the dense one with the delta added to the
projection's output, for every family; save and reload; combined with per-layer MLP widths and removed layers."""
import copy
import json

import pytest
import torch
import transformers
from test_layers import LAYERS, layered_model, skip_layers
from test_prune import ATOL, FAMILIES, HIDDEN, RTOL, logits, random_keep, tiny_model

from diet import DietError, targets
from diet.models.adapters import get_adapter
from diet.prune import (add_output_bias, count_params, load_pruned, prune_model, remove_layers, save_pruned,
                        zero_masked_reference)

# (layer, block): layer 1's MLP twice, so the second addition must accumulate
ADDITIONS = [(0, "mlp"), (1, "attention"), (1, "mlp"), (1, "mlp")]
# what each family's config says afterwards: the flags set, and the biases only added_biases can record
EXPECTED = {
    "llama": ({"attention_bias": True, "mlp_bias": True}, None),
    "llama_tied": ({"attention_bias": True, "mlp_bias": True}, None),  # had every bias already
    "gemma2": ({"attention_bias": True}, {"mlp": [0, 1]}),
    "gemma3_text": ({"attention_bias": True}, {"mlp": [0, 1]}),
    "qwen2": ({}, {"attention": [1], "mlp": [0, 1]}),
    "mistral": ({}, {"attention": [1], "mlp": [0, 1]}),
}


def deltas(additions, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [(layer, block, 0.5 * torch.randn(HIDDEN, generator=generator)) for layer, block in additions]


def add_to_outputs(model, added):
    """The reference: the dense model with each delta added to the projection's output by a forward hook."""
    adapter = get_adapter(model)
    for layer, block, delta in added:
        projection = adapter.output_projection(adapter.decoder_layers(model)[layer], block)
        projection.register_forward_hook(lambda _module, _args, output, delta=delta: output + delta)
    return model


def with_biases(model, added):
    for layer, block, delta in added:
        add_output_bias(model, get_adapter(model), layer, block, delta)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_added_biases_equal_the_deltas_added_to_the_outputs(family, tmp_path):
    dense = tiny_model(family)
    added = deltas(ADDITIONS)
    reference = add_to_outputs(copy.deepcopy(dense), added)
    model = with_biases(copy.deepcopy(dense), added)

    torch.testing.assert_close(logits(model), logits(reference), atol=ATOL, rtol=RTOL)
    assert (logits(reference) - logits(dense)).abs().max() > 100 * ATOL
    flags, record = EXPECTED[family]
    for flag, value in flags.items():
        assert getattr(model.config, flag) is value
    assert getattr(model.config, "added_biases", None) == record
    flagged = {{"attention_bias": "attention", "mlp_bias": "mlp"}[flag] for flag in flags}
    adapter = get_adapter(model)
    for i, (layer, dense_layer) in enumerate(zip(adapter.decoder_layers(model), adapter.decoder_layers(dense))):
        for block in ("attention", "mlp"):
            has = [linear.bias is not None for linear in adapter.block_projections(layer, block)]
            had = [linear.bias is not None for linear in adapter.block_projections(dense_layer, block)]
            if block in flagged:  # the flag covers every projection of the block, in every layer
                assert all(has)
            else:  # only the output projections the record names gained one
                assert has == had[:-1] + [had[-1] or i in (record or {}).get(block, [])]
    if family == "llama_tied":
        assert count_params(model) == count_params(dense)

    save_pruned(model, None, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved.get("added_biases") == record
    loaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(loaded), logits(model), atol=0, rtol=0)
    assert count_params(loaded) == count_params(model)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    if record is None:  # the flags alone describe the model
        torch.testing.assert_close(logits(plain), logits(model), atol=0, rtol=0)
    else:  # plain loading drops the biases no flag gives (UNEXPECTED keys): load_pruned is the way
        assert count_params(plain) < count_params(model)
        assert (logits(plain) - logits(model)).abs().max() > 100 * ATOL


def test_a_new_bias_takes_the_weights_dtype():
    model = tiny_model("qwen2").to(torch.bfloat16)
    delta = torch.full((HIDDEN,), 1 / 3)
    add_output_bias(model, get_adapter(model), 0, "attention", delta)
    bias = get_adapter(model).output_projection(get_adapter(model).decoder_layers(model)[0], "attention").bias
    assert bias.dtype == torch.bfloat16 and bias.device == torch.device("cpu")
    assert torch.equal(bias, delta.to(torch.bfloat16))


def test_a_model_without_added_biases_loads_with_the_plain_class(tmp_path):
    model = tiny_model("gemma2")
    save_pruned(model, None, tmp_path / "model")
    assert "added_biases" not in json.loads((tmp_path / "model" / "config.json").read_text())
    loaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    assert type(loaded) is transformers.Gemma2ForCausalLM
    assert all(not name.endswith("bias") for name, _ in loaded.named_parameters())


BAD_ARGUMENTS = [
    (0, "ffn", torch.zeros(HIDDEN), "block: 'ffn' is not allowed; allowed: attention, mlp"),
    (2, "mlp", torch.zeros(HIDDEN), "layer: 2 is not allowed; allowed: a layer index in 0..1"),
    (True, "mlp", torch.zeros(HIDDEN), "layer: True is not allowed; allowed: a layer index in 0..1"),
    (0, "mlp", torch.zeros(HIDDEN + 1),
     "delta: shape (65,) is not allowed; allowed: a 1-D tensor of length 64 (the residual width)"),
    (0, "attention", [0.0] * HIDDEN,
     "delta: a list is not allowed; allowed: a 1-D tensor of length 64 (the residual width)"),
]


@pytest.mark.parametrize("layer, block, delta, message", BAD_ARGUMENTS)
def test_bad_bias_arguments_are_one_line_diet_errors_and_leave_the_model_alone(layer, block, delta, message):
    model = tiny_model("mistral")
    before = logits(model)
    with pytest.raises(DietError) as error:
        add_output_bias(model, get_adapter(model), layer, block, delta)
    assert str(error.value) == message
    assert not hasattr(model.config, "added_biases")
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gemma2", "qwen2", "llama"])
def test_mlp_widths_added_biases_and_removed_layers_together(family, tmp_path):
    dense = layered_model(family)
    adapter = get_adapter(dense)
    masks = {f"mlp.{i}": random_keep(96, n, seed=10 + i) for i, n in enumerate([40, 88, 64, 72])}
    added = deltas([(0, "mlp"), (2, "attention"), (3, "mlp")])
    keep = [1, 2, 3]
    reference = zero_masked_reference(copy.deepcopy(dense), adapter, masks, "mlp")
    skip_layers(add_to_outputs(reference, added), [i for i in range(LAYERS) if i not in keep])

    model = prune_model(copy.deepcopy(dense), adapter, masks, "mlp")
    with_biases(model, added)
    remove_layers(model, adapter, keep)
    torch.testing.assert_close(logits(model), logits(reference), atol=ATOL, rtol=RTOL)
    assert model.config.intermediate_sizes == [88, 64, 72] and model.config.intermediate_size == 88
    assert getattr(model.config, "added_biases", None) == {
        "gemma2": {"mlp": [2]}, "qwen2": {"attention": [1], "mlp": [2]}, "llama": None}[family]

    save_pruned(model, None, tmp_path / "model")
    loaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(loaded), logits(model), atol=0, rtol=0)
    assert get_adapter(loaded).intermediate_sizes(loaded) == [88, 64, 72]
    assert loaded.config.num_hidden_layers == 3 and count_params(loaded) == count_params(model)


# ------------------------------------------------------------------------- prune.compensation=mean, end to end

def calibration_stats(model, target_names, seed=5):
    """Two calibration sets' signed sums and counts at every hook point (the pooled mean is what compensates)."""
    adapter = get_adapter(model)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, count in (("a", 2.0), ("b", 6.0)):
        out[name] = {}
        for target in target_names:
            for point, module in targets.get(target).hook_points(model, adapter).items():
                width = module.in_features
                out[name][point] = {"sum": torch.randn(width, generator=generator) * count,
                                    "count": torch.tensor([count])}
    return out


def hold_removed_inputs_at_their_mean(model, masks, stats):
    """The reference: the dense model whose removed channels' inputs (down_proj's for mlp, o_proj's for heads) are
    replaced by their pooled calibration mean before the projection."""
    adapter = get_adapter(model)
    for target in {k.split(".")[0] for k in masks}:
        for point, module in targets.get(target).hook_points(model, adapter).items():
            layer = adapter.decoder_layers(model)[int(point.split(".")[1])]
            removed = ~masks[point]
            if target == "heads":
                removed = removed.repeat_interleave(adapter.layer_head_dim(layer))
            mean = (stats["a"][point]["sum"] + stats["b"][point]["sum"]) / 8.0

            def hold(_module, args, removed=removed, mean=mean):
                x = args[0].clone()
                x[..., removed] = mean[removed]
                return (x,)

            module.register_forward_pre_hook(hold)
    return model


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "mistral"])
@pytest.mark.parametrize("target", [["mlp"], ["heads"], ["mlp", "heads"]])
def test_mean_compensation_equals_the_dense_model_with_removed_inputs_at_their_mean(family, target, tmp_path):
    dense = tiny_model(family)
    adapter = get_adapter(dense)
    masks = {}
    if "mlp" in target:
        masks.update({f"mlp.{i}": random_keep(96, 40 + 16 * i, seed=20 + i)
                      for i in range(dense.config.num_hidden_layers)})
    if "heads" in target:  # one query head of each KV group (4 heads in 2 groups) per layer
        masks.update({"heads.0": torch.tensor([True, False, False, True]),
                      "heads.1": torch.tensor([False, True, True, False])})
    stats = calibration_stats(dense, target)
    reference = hold_removed_inputs_at_their_mean(copy.deepcopy(dense), masks, stats)
    compensated = prune_model(copy.deepcopy(dense), adapter, masks, target, compensation="mean", stats=stats)
    plain = prune_model(copy.deepcopy(dense), adapter, masks, target)
    torch.testing.assert_close(logits(compensated), logits(reference), atol=ATOL, rtol=RTOL)
    assert not torch.allclose(logits(plain), logits(reference), atol=1e-3)  # the compensation is what matches
    save_pruned(compensated, None, tmp_path / "m")
    reloaded, _ = load_pruned(tmp_path / "m", attn_implementation="eager")
    torch.testing.assert_close(logits(reloaded), logits(compensated), atol=0, rtol=0)


def test_mean_compensation_needs_the_signed_sum():
    dense = tiny_model("llama")
    layers = range(dense.config.num_hidden_layers)
    masks = {f"mlp.{i}": random_keep(96, 48, seed=i) for i in layers}
    stats = {"a": {f"mlp.{i}": {"count": torch.tensor([1.0])} for i in layers}}
    with pytest.raises(ValueError, match="statistics of mlp.0 have no signed 'sum'"):
        prune_model(dense, get_adapter(dense), masks, "mlp", compensation="mean", stats=stats)
