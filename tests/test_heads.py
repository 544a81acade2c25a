"""target=heads: physical removal equals the dense model with those heads' outputs zeroed, for every family,
grouped-query attention included; config head counts and save/load; the GQA rules of the vote; per-head stats."""
import copy
import json

import pytest
import torch
import transformers
from test_prune import ATOL, FAMILIES, LAYERS, RTOL, logits, tiny_model, tiny_tokenizer

from diet import DietError, methods, profile, scoring, targets, vote
from diet.models.adapters import get_adapter
from diet.prune import count_params, load_pruned, prune_model, save_pruned, zero_masked_reference

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16  # tiny_config: heads 0,1 share KV head 0; heads 2,3 share KV head 1


def heads_masks(*rows):
    return {f"heads.{i}": torch.tensor(row, dtype=torch.bool) for i, row in enumerate(rows)}


# (masks, expected (query heads, KV heads) per layer)
CASES = {
    "per_group": (heads_masks([1, 0, 0, 1], [0, 1, 1, 0]), [(2, 2), (2, 2)]),
    "kv_group": (heads_masks([1, 1, 0, 0], [0, 0, 1, 1]), [(2, 1), (2, 1)]),
    "per_layer": (heads_masks([1, 0, 1, 0], [0, 0, 1, 1]), [(2, 2), (2, 1)]),
    "per_layer_counts": (heads_masks([1, 1, 1, 1], [0, 1, 0, 0]), [(4, 2), (1, 1)]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_heads_equal_dense_with_those_heads_zeroed(family, case, tmp_path):
    masks, counts = CASES[case]
    dense = tiny_model(family)
    adapter = get_adapter(dense)
    reference = zero_masked_reference(copy.deepcopy(dense), adapter, masks, "heads")
    pruned = prune_model(copy.deepcopy(dense), adapter, masks, "heads")

    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)
    assert (logits(reference) - logits(dense)).abs().max() > 100 * ATOL
    layers = adapter.decoder_layers(pruned)
    for layer, (n, n_kv) in zip(layers, counts):
        q, k, v, o = adapter.attention_projections(layer)
        assert q.weight.shape[0] == n * HEAD_DIM and o.weight.shape[1] == n * HEAD_DIM
        assert k.weight.shape[0] == v.weight.shape[0] == n_kv * HEAD_DIM
        assert (adapter.num_heads(layer), adapter.num_kv_heads(layer)) == (n, n_kv)
    assert count_params(pruned) < count_params(dense)
    config = pruned.config
    assert config.head_dim == HEAD_DIM
    uniform = len(set(counts)) == 1
    if uniform:
        assert (config.num_attention_heads, config.num_key_value_heads) == counts[0]
        assert not hasattr(config, "attention_heads")
    else:
        assert config.attention_heads == [n for n, _ in counts] and config.key_value_heads == [k for _, k in counts]

    save_pruned(pruned, tiny_tokenizer(), tmp_path / "model")
    if uniform:
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
        torch.testing.assert_close(logits(plain), logits(pruned), atol=ATOL, rtol=RTOL)
    else:
        with pytest.raises(Exception, match="(?i)size|shape"):
            transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    reloaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=ATOL, rtol=RTOL)
    assert count_params(reloaded) == count_params(pruned)
    assert get_adapter(reloaded).word_embeddings_tied(reloaded) == adapter.word_embeddings_tied(dense)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_and_heads_together_equal_both_zeroings(family, tmp_path):
    masks = {**CASES["per_layer"][0], "mlp.0": torch.arange(96) % 3 != 0, "mlp.1": torch.arange(96) < 40}
    dense = tiny_model(family)
    adapter = get_adapter(dense)
    reference = zero_masked_reference(copy.deepcopy(dense), adapter, masks, ["mlp", "heads"])
    pruned = prune_model(copy.deepcopy(dense), adapter, masks, ["mlp", "heads"])
    torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)
    heads_only = zero_masked_reference(copy.deepcopy(dense), adapter, CASES["per_layer"][0], "heads")
    assert (logits(reference) - logits(heads_only)).abs().max() > 100 * ATOL  # the MLP half really acted
    assert adapter.intermediate_sizes(pruned) == [64, 40]
    save_pruned(pruned, None, tmp_path / "model")
    reloaded, _ = load_pruned(tmp_path / "model", attn_implementation="eager")
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=ATOL, rtol=RTOL)
    assert reloaded.config.intermediate_sizes == [64, 40] and reloaded.config.attention_heads == [2, 2]


def test_masks_that_break_grouped_query_attention_are_one_line_errors():
    model = tiny_model("llama")
    before = logits(model)
    bad = heads_masks([1, 1, 1, 0], [1, 1, 1, 1])
    for function in (prune_model, zero_masked_reference):
        with pytest.raises(DietError) as err:
            function(model, get_adapter(model), bad, "heads")
        assert str(err.value) == ("masks['heads.0']: keeps [2, 1] query heads per key/value group; allowed: the "
                                  "same number in every group that keeps any (grouped-query attention), whole "
                                  "groups removed")
    with pytest.raises(DietError, match=r"masks\['heads.1'\]: missing for target 'heads'"):
        prune_model(model, get_adapter(model), {"heads.0": torch.ones(4, dtype=torch.bool)}, "heads")
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- the vote

def scores_of(*rows):
    return {f"heads.{i}": torch.tensor(row, dtype=torch.float32) for i, row in enumerate(rows)}


def test_per_group_vote_removes_the_same_number_of_query_heads_from_every_kv_group():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    heads = targets.get("heads", sparsity=0.5)
    # the two best heads of layer 0 (0 and 1) share KV group 0: per_group keeps the best of each group instead
    one_task = {"t": scores_of([9, 8, 1, 2], [1, 2, 3, 4])}
    masks, per_task, _ = heads.vote(model, adapter, one_task, vote.Rules(scope="layer", min_keep=0.0,
                                                                         multiple_of=128))
    assert masks["heads.0"].tolist() == [True, False, False, True]
    assert masks["heads.1"].tolist() == [False, True, False, True]
    assert per_task["t"]["heads.0"].tolist() == masks["heads.0"].tolist()
    # kv_group: whole groups by the mean score of their query heads
    masks, _, _ = targets.get("heads", sparsity=0.5, gqa="kv_group").vote(
        model, adapter, one_task, vote.Rules(scope="layer", min_keep=0.0, multiple_of=128))
    assert masks["heads.0"].tolist() == [True, True, False, False]
    assert masks["heads.1"].tolist() == [False, False, True, True]
    # several tasks: votes decide, then each KV group keeps its most voted heads
    tasks = {"a": scores_of([9, 8, 1, 2], [4, 3, 2, 1]), "b": scores_of([9, 1, 8, 2], [4, 3, 2, 1]),
             "c": scores_of([1, 9, 8, 2], [4, 3, 2, 1])}
    masks, per_task, votes = heads.vote(model, adapter, tasks, vote.Rules(scope="layer", min_keep=0.0, multiple_of=1,
                                                                          vote_method="majority"))
    for task_masks in [masks, *per_task.values()]:
        for mask in task_masks.values():
            assert mask.reshape(KV_HEADS, -1).sum(dim=1).tolist() == [1, 1]
    # build_masks' own per-task masks before balancing: a [0,1], b [0,2], c [1,2] -> votes 2, 2, 2, 0;
    # group 0 keeps head 0 (tie on votes, mean normalised score 0 > 1), group 1 head 2
    assert votes["heads.0"].tolist() == [2, 2, 2, 0]
    assert masks["heads.0"].tolist() == [True, False, True, False]


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("gqa", ["per_group", "kv_group"])
def test_heads_masks_from_every_method_prune_to_a_valid_model(scope, gqa):
    model = tiny_model("qwen2")
    adapter = get_adapter(model)
    heads = targets.get("heads", sparsity=0.5, gqa=gqa)
    channels = HEADS * HEAD_DIM
    stats = {task: {f"heads.{i}": {"sum_abs": torch.rand(channels, generator=g),
                                   "sum_sq": torch.rand(channels, generator=g),
                                   "max_abs": torch.rand(channels, generator=g), "count": torch.tensor([5.0])}
                    for i in range(LAYERS)}
             for task, g in ((t, torch.Generator().manual_seed(s)) for s, t in enumerate("abc"))}
    for name, method in methods.METHODS.items():
        if method.targets and "heads" not in method.targets:  # shortgpt, sleb: whole layers only
            continue
        calibrated = stats if method.calibration == "task" else {"generic": stats["a"]}
        scores = method.scores(heads, model, adapter, calibrated, scoring.get("wanda"), 0)
        masks, _, _ = heads.vote(model, adapter, scores, vote.Rules(scope=scope, min_keep=0.25, multiple_of=128))
        assert all(int(m.sum()) >= 1 for m in masks.values()), name
        assert 0 < vote.achieved_sparsity(masks) <= 0.5, name
        reference = zero_masked_reference(copy.deepcopy(model), adapter, masks, "heads")
        pruned = prune_model(copy.deepcopy(model), adapter, masks, "heads")
        torch.testing.assert_close(logits(pruned), logits(reference), atol=ATOL, rtol=RTOL)


def test_heads_weight_norms_are_the_o_proj_column_norms_and_a_heads_their_frobenius_norm():
    model = tiny_model("gemma3_text")
    adapter = get_adapter(model)
    norms = targets.get("heads").weight_norms(model, adapter)
    for i, layer in enumerate(model.model.layers):
        o = layer.self_attn.o_proj.weight.double()
        torch.testing.assert_close(norms[f"heads.{i}"], o.norm(dim=0).float())
        want = torch.stack([o[:, h * HEAD_DIM:(h + 1) * HEAD_DIM].norm() for h in range(HEADS)]).float()
        torch.testing.assert_close(scoring.reduce_channels(norms[f"heads.{i}"], HEAD_DIM, "l2"), want)


# ------------------------------------------------------------------------------------------------ the profile

def test_per_head_scores_equal_a_naive_recomputation():
    """Statistics stay per channel; each scoring's declared reduction gives the head's score: act_l1 the mean over
    tokens of the head output's L1 norm, act_l2 the RMS of its L2 norm, act_max its largest element."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = "[UNK]"
    texts = ["w1 w2 w3 w4 w5", "w7 w8", "w9 w10 w11 w12 w13 w14 w15"]
    stats = profile.profile_texts(model, adapter, tokenizer, texts, "heads", max_length=16, batch_size=2)
    assert sorted(stats) == ["heads.0", "heads.1"]
    captured = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda _m, args, i=i: captured.setdefault(i, []).append(args[0][0].double()))
        for i, layer in enumerate(model.model.layers)]
    with torch.inference_mode():
        for text in texts:  # one unpadded text at a time
            model(tokenizer(text, return_tensors="pt")["input_ids"])
    for handle in handles:
        handle.remove()
    heads = targets.get("heads")
    sizes = heads.group_sizes(model, adapter)
    scores = {name: scoring.group_scores(stats, scoring.get(name), heads, group_sizes=sizes)
              for name in ("act_l1", "act_l2", "act_max")}
    for i in range(LAYERS):
        x = torch.cat(captured[i]).reshape(-1, HEADS, HEAD_DIM)  # tokens x heads x head_dim
        got = stats[f"heads.{i}"]
        tokens = x.shape[0]
        assert got["count"].item() == tokens and got["sum_abs"].shape == (HEADS * HEAD_DIM,)
        torch.testing.assert_close(got["sum_abs"].double(), x.abs().sum(dim=0).reshape(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["sum_sq"].double(), x.square().sum(dim=0).reshape(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["max_abs"].double(), x.abs().amax(dim=0).reshape(-1), rtol=1e-5, atol=1e-6)
        for name, want in (("act_l1", x.abs().sum(dim=(0, 2)) / tokens),
                           ("act_l2", (x.square().sum(dim=(0, 2)) / tokens).sqrt()),
                           ("act_max", x.abs().amax(dim=(0, 2)))):
            torch.testing.assert_close(scores[name][f"heads.{i}"].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
def test_a_kept_head_count_that_does_not_divide_the_hidden_size_saves_and_loads_back(family, tmp_path):
    """Gemma-3 270M has 4 heads and 1 KV head: removing one leaves 3, which transformers refuses as a headline
    count (hidden 640 % 3; Llama's config validates the same way). The checkpoint headlines a count it accepts and stores the real per-layer counts;
    load_pruned rebuilds them exactly, and plain from_pretrained refuses the shapes instead of loading wrong ones."""
    model = tiny_model(family, num_key_value_heads=1)
    adapter = get_adapter(model)
    pruned = prune_model(model, adapter, heads_masks([1, 1, 0, 1], [0, 1, 1, 1]), "heads")
    assert [adapter.num_heads(layer) for layer in adapter.decoder_layers(pruned)] == [3, 3]
    save_pruned(pruned, None, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    reloaded, _ = load_pruned(tmp_path / "m", attn_implementation="eager")
    torch.testing.assert_close(logits(reloaded), logits(pruned), atol=0, rtol=0)
    assert saved["num_attention_heads"] == 4 and saved["attention_heads"] == [3, 3]
    with pytest.raises(Exception, match="mismatch|size"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
