"""Removing whole decoder layers: the smaller model equals the dense one with those layers skipped, for every
family, each kept layer keeping its sliding/full attention type; KV-cached generation; save and reload."""
import copy
import json

import pytest
import torch
import transformers
from test_prune import ATOL, FAMILIES, RTOL, input_ids, logits, random_keep, tiny_model, tiny_tokenizer

from diet import DietError
from diet.models.adapters import get_adapter
from diet.prune import load_pruned, prune_model, remove_layers, save_pruned, zero_masked_reference

LAYERS = 4
# Mixed attention types where the family has them; tiny_config's sliding window (8) is shorter than the
# 12-token test inputs, so a layer run with the wrong type computes something else.
MIXED = {
    "gemma2": {},  # default: sliding, full, sliding, full
    "gemma3_text": dict(sliding_window_pattern=2),  # the same pattern (the default 6 would make all 4 sliding)
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),  # full, full, sliding, sliding
}
KEEPS = [(0, 2, 3), (1, 3)]


def layered_model(family: str):
    return tiny_model(family, num_hidden_layers=LAYERS, **MIXED.get(family, {}))


def skip_layers(model, removed):
    """The dense model with each removed layer's output replaced by its input (a decoder layer returns the
    hidden states tensor in transformers 5.23)."""
    def passthrough(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    for i in removed:
        get_adapter(model).decoder_layers(model)[i].register_forward_hook(passthrough, with_kwargs=True)
    return model


def removed_and_reference(family, keep):
    dense = layered_model(family)
    reference = skip_layers(copy.deepcopy(dense), [i for i in range(LAYERS) if i not in keep])
    pruned = remove_layers(copy.deepcopy(dense), get_adapter(dense), list(keep))
    return dense, pruned, reference


def greedy(model, new_tokens=6):
    """Greedy continuation with the KV cache: 12 + 6 tokens, past the sliding window."""
    ids = input_ids()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=True,
                             return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("family", FAMILIES)
def test_removed_layers_equal_dense_with_those_layers_skipped(family, keep):
    dense, pruned, reference = removed_and_reference(family, keep)
    adapter = get_adapter(pruned)

    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)
    assert (logits(reference) - logits(dense)).abs().max() > 100 * ATOL  # skipping really changes the model
    layers = adapter.decoder_layers(pruned)
    assert len(layers) == pruned.config.num_hidden_layers == len(keep)
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(len(keep)))
    dense_layers = adapter.decoder_layers(dense)
    for layer, i in zip(layers, keep):
        window = getattr(dense_layers[i].self_attn, "sliding_window", None)
        assert getattr(layer.self_attn, "sliding_window", None) == window
    dense_types = getattr(dense.config, "layer_types", None)
    if dense_types is not None:
        assert pruned.config.layer_types == [dense_types[i] for i in keep]

    sequences, step_logits = greedy(pruned)
    reference_sequences, reference_logits = greedy(reference)
    assert sequences.shape[1] == input_ids().shape[1] + 6
    assert torch.equal(sequences, reference_sequences)
    torch.testing.assert_close(step_logits, reference_logits, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("family", list(MIXED))
def test_a_kept_layer_run_with_the_next_layers_type_would_differ(family, keep):
    """The families with mixed types: the first len(keep) types instead of the kept layers' own are wrong."""
    dense, pruned, _ = removed_and_reference(family, keep)
    wrong_types = dense.config.layer_types[:len(keep)]
    assert wrong_types != pruned.config.layer_types
    wrong = copy.deepcopy(pruned)
    wrong.config.layer_types = wrong_types
    assert (logits(wrong) - logits(pruned)).abs().max() > 100 * ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_model_with_layers_removed_round_trips_through_plain_from_pretrained(family, tmp_path):
    _, pruned, reference = removed_and_reference(family, (0, 2, 3))
    save_pruned(pruned, tiny_tokenizer(), tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 3

    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    assert plain.config.num_hidden_layers == 3 and len(get_adapter(plain).decoder_layers(plain)) == 3
    assert getattr(plain.config, "layer_types", None) == getattr(pruned.config, "layer_types", None)
    torch.testing.assert_close(logits(plain), logits(pruned), atol=0, rtol=0)
    assert torch.equal(greedy(plain)[0], greedy(reference)[0])
    loaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(loaded), logits(pruned), atol=0, rtol=0)

    if family == "qwen2":  # max_window_layers alone (without the saved layer_types) derives the same types
        del saved["layer_types"]
        assert transformers.Qwen2Config(**saved).layer_types == pruned.config.layer_types


# per-layer widths and head counts of the 4 layers: query / KV heads (4, 2), (2, 2), (2, 2), (1, 1)
# (heads 0, 1 share KV head 0; heads 2, 3 share KV head 1)
MLP_KEEP = [40, 88, 88, 64]
HEADS_MASKS = {f"heads.{i}": torch.tensor(row, dtype=torch.bool)
               for i, row in enumerate([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [0, 1, 0, 0]])}


@pytest.mark.parametrize("keep, uniform", [((0, 3), False), ((1, 2), True)])
@pytest.mark.parametrize("family", ["gemma3_text", "llama_tied", "qwen2"])
def test_per_layer_widths_follow_the_kept_layers(family, keep, uniform, tmp_path):
    dense = layered_model(family)
    adapter = get_adapter(dense)
    masks = {**HEADS_MASKS, **{f"mlp.{i}": random_keep(96, n, seed=10 + i) for i, n in enumerate(MLP_KEEP)}}
    pruned = prune_model(copy.deepcopy(dense), adapter, masks, ["mlp", "heads"])
    assert pruned.config.intermediate_sizes == MLP_KEEP and pruned.config.attention_heads == [4, 2, 2, 1]
    remove_layers(pruned, adapter, list(keep))
    reference = zero_masked_reference(copy.deepcopy(dense), adapter, masks, ["mlp", "heads"])
    skip_layers(reference, [i for i in range(LAYERS) if i not in keep])
    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)

    config = pruned.config
    widths, heads, kv_heads = ([values[i] for i in keep] for values in (MLP_KEEP, [4, 2, 2, 1], [2, 2, 2, 1]))
    assert adapter.intermediate_sizes(pruned) == widths
    assert [adapter.num_heads(layer) for layer in adapter.decoder_layers(pruned)] == heads
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (
        max(widths), max(heads), max(kv_heads))
    save_pruned(pruned, None, tmp_path / "model")
    if uniform:  # the lists go, so that plain loading works again
        assert not any(hasattr(config, key) for key in ("intermediate_sizes", "attention_heads", "key_value_heads"))
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
        torch.testing.assert_close(logits(plain), logits(pruned), atol=0, rtol=0)
    else:
        assert (config.intermediate_sizes, config.attention_heads, config.key_value_heads) == (widths, heads, kv_heads)
    loaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(loaded), logits(pruned), atol=0, rtol=0)
    assert get_adapter(loaded).intermediate_sizes(loaded) == widths


BAD_KEEPS = [
    ([], "keep: [] keeps no layer"),
    ([0, 4], "keep: [0, 4] holds layer 4, out of range for 4 layers"),
    ([-1, 2], "keep: [-1, 2] holds layer -1, out of range for 4 layers"),
    ([2, 1], "keep: [2, 1] is not strictly increasing (unsorted or duplicated)"),
    ([1, 1, 2], "keep: [1, 1, 2] is not strictly increasing (unsorted or duplicated)"),
    ([True, False, True, True], "keep: [True, False, True, True] is not a list of integer layer indices"),
    (2, "keep: 2 is not a list of integer layer indices"),
    ([0.0, 1.0], "keep: [0.0, 1.0] is not a list of integer layer indices"),
]


@pytest.mark.parametrize("keep, message", BAD_KEEPS)
def test_bad_keep_is_a_one_line_diet_error_and_leaves_the_model_alone(keep, message):
    model = layered_model("gemma2")
    before = logits(model)
    with pytest.raises(DietError) as error:
        remove_layers(model, get_adapter(model), keep)
    assert str(error.value) == (
        f"{message}; allowed: a non-empty, strictly increasing list of layer indices in 0..3")
    assert len(get_adapter(model).decoder_layers(model)) == model.config.num_hidden_layers == LAYERS
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


def test_tensor_and_tuple_keeps_are_accepted():
    model = layered_model("llama")
    remove_layers(model, get_adapter(model), torch.tensor([0, 3]))
    remove_layers(model, get_adapter(model), (1,))
    assert model.config.num_hidden_layers == 1
