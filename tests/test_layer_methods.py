"""prune.target=layers with method=shortgpt, method=sleb and the block_influence scoring: checked against plain-Python
references written from the formulas (cosines of captured layer inputs and outputs; a brute-force greedy over the
NLL of physically smaller models), exact removal for every family, end-to-end runs and one-line errors."""
import copy
import json

import pytest
import safetensors.torch
import torch
import transformers
from test_layers import layered_model, skip_layers
from test_prune import FAMILIES, logits, tiny_tokenizer

from diet import DietError, config, layer_methods, methods, profile, targets, vote
from diet.models import tiny
from diet.models.adapters import get_adapter
from diet.prune import load_pruned, prune_model, save_pruned, zero_masked_reference
from diet.tasks.calibration import CalibrationSet

TEXTS = ["The capital of France is Paris.", "3 + 4 = 7", "hot cold", "A man is sitting on a roof of a house.",
         "Question: is the sky blue? Answer: yes.", "one two three four five six seven eight nine ten"]
LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 1024, "tie_word_embeddings": False}


def tiny_llama(n_layers: int):
    return tiny.build("llama", {**LLAMA, "num_hidden_layers": n_layers}, seed=0)


# ------------------------------------------------------------------------------------------------ the target

@pytest.mark.parametrize("family", FAMILIES)
def test_the_layers_target_removes_its_masked_layers_exactly_and_the_checkpoint_loads_plainly(family, tmp_path):
    dense = layered_model(family)  # 4 layers, mixed attention types where the family has them
    adapter = get_adapter(dense)
    layers = targets.get("layers")
    assert layers.widths(dense, adapter) == {"layers": 4} and layers.hook_kind == "layer_io"
    assert list(layers.hook_points(dense, adapter)) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    masks = {"layers": torch.tensor([False, True, False, True])}  # layer 0 goes too
    pruned = prune_model(copy.deepcopy(dense), adapter, masks, "layers")
    hooked = skip_layers(copy.deepcopy(dense), [0, 2])  # an independent reference: forward hooks return the input
    zeroed = zero_masked_reference(copy.deepcopy(dense), adapter, masks, "layers")
    torch.testing.assert_close(logits(zeroed), logits(hooked), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits(pruned), logits(hooked), atol=1e-5, rtol=1e-4)
    assert (logits(hooked) - logits(dense)).abs().max() > 1e-3
    assert pruned.config.num_hidden_layers == 2
    if getattr(dense.config, "layer_types", None) is not None:  # Gemma's (and Qwen2's) types kept per layer
        assert pruned.config.layer_types == [dense.config.layer_types[i] for i in (1, 3)]

    save_pruned(pruned, tiny_tokenizer(), tmp_path / "model")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    assert plain.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(plain), logits(pruned), atol=0, rtol=0)
    torch.testing.assert_close(logits(load_pruned(tmp_path / "model", attn_implementation="eager")[0]),
                               logits(pruned), atol=0, rtol=0)


def test_the_layer_budget_is_round_sparsity_times_layers_and_never_every_layer():
    model, _ = tiny_llama(4)
    adapter = get_adapter(model)
    assert [targets.get("layers", sparsity=s).budget(model, adapter) for s in (0, 0.125, 0.25, 0.5, 0.75, 0.85)] == \
        [0, 1, 1, 2, 3, 3]
    with pytest.raises(DietError) as err:
        targets.get("layers", sparsity=0.9).budget(model, adapter)
    assert str(err.value) == ("sparsity: 0.9 removes round(0.9 x 4) = 4 of the 4 decoder layers with "
                              "prune.target=layers; allowed: a sparsity that removes 1 to 3 of the 4 layers "
                              "(0.125 <= sparsity < 0.875), or 0")
    with pytest.raises(DietError, match=r"^sparsity: 0.1 removes round\(0.1 x 4\) = 0 of the 4 decoder layers"):
        targets.get("layers", sparsity=0.1).budget(model, adapter)

    scores = {"t": {"layers": torch.tensor([0.4, 0.1, 0.3, 0.2])}}
    # prune.multiple_of does not apply to layers (a model's width_multiple is 128)
    masks, _, _ = targets.get("layers", sparsity=0.5).vote(model, adapter, scores, vote.Rules(multiple_of=128))
    assert masks["layers"].tolist() == [True, False, True, False]
    # prune.min_keep: at least ceil(min_keep x L) layers stay
    with pytest.raises(DietError, match=r"^prune.min_keep: 0.5 is not allowed .* it needs 2 of the 4 dimensions of "
                                        r"layers, which keeps 1"):
        targets.get("layers", sparsity=0.75).vote(model, adapter, scores, vote.Rules(min_keep=0.5))


# ------------------------------------------------------------------------------------------------ ShortGPT

def captured_cosines(model, texts, tokenizer):
    """Reference: each text alone (no padding), cos(input, output) of every decoder layer at every token."""
    layers = get_adapter(model).decoder_layers(model)
    inputs, outputs = {i: [] for i in range(len(layers))}, {i: [] for i in range(len(layers))}

    def record(i):
        def hook(_module, args, kwargs, out):
            inputs[i].append((args[0] if args else kwargs["hidden_states"])[0].double())
            outputs[i].append((out[0] if isinstance(out, tuple) else out)[0].double())
        return hook

    handles = [layer.register_forward_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for text in texts:
            model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"])
    for h in handles:
        h.remove()
    return {i: torch.nn.functional.cosine_similarity(torch.cat(inputs[i]), torch.cat(outputs[i]), dim=-1)
            for i in inputs}


def test_block_influence_is_one_minus_the_mean_cosine_and_shortgpt_removes_the_lowest():
    model, tokenizer = tiny_llama(6)
    adapter = get_adapter(model)
    with torch.no_grad():  # layers that differ clearly: scale each layer's output projections
        for i, layer in enumerate(adapter.decoder_layers(model)):
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.mul_([3.0, 0.5, 8.0, 1.0, 0.2, 4.0][i])
    layers = targets.get("layers", sparsity=0.5)
    stats = profile.profile_texts(model, adapter, tokenizer, TEXTS, layers, max_length=32, batch_size=4,
                                  statistics=("layer_cos",), fused_stats=False)  # padded batches
    cosines = captured_cosines(model, TEXTS, tokenizer)
    want = torch.stack([1 - cosines[i].mean() for i in range(6)])

    scores = methods.METHODS["shortgpt"].scores(layers, model, adapter, {"generic": stats}, None, 0)
    torch.testing.assert_close(scores["generic"]["layers"].double(), want, rtol=1e-5, atol=1e-6)
    masks, _, _ = layers.vote(model, adapter, scores, vote.Rules())
    removed = sorted(torch.argsort(want)[:3].tolist())
    assert (~masks["layers"]).nonzero().flatten().tolist() == removed
    assert len(set(removed)) == 3 and removed != [3, 4, 5]  # not simply the last layers


# ------------------------------------------------------------------------------------------------ SLEB

def reference_nll(model, removed, texts, tokenizer) -> float:
    """Plain Python: a copy of the model with the layers physically deleted, each text alone, the mean over every
    predicted token of -log softmax(logits)[next token], in float64."""
    smaller = copy.deepcopy(model)
    kept = [layer for i, layer in enumerate(smaller.model.layers) if i not in removed]
    smaller.model.layers = torch.nn.ModuleList(kept)
    for new_index, layer in enumerate(smaller.model.layers):
        layer.self_attn.layer_idx = new_index
    smaller.config.num_hidden_layers = len(smaller.model.layers)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
            log_probs = smaller(input_ids=ids[None]).logits[0].double().log_softmax(dim=-1)
            total -= float(log_probs[torch.arange(len(ids) - 1), ids[1:]].sum())  # position t predicts token t + 1
            count += len(ids) - 1
    return total / count


def brute_force_greedy(model, n_remove, early, latter, texts, tokenizer):
    alive, removed, losses = list(range(len(model.model.layers))), [], []
    for _ in range(n_remove):
        candidates = {alive[j]: reference_nll(model, removed + [alive[j]], texts, tokenizer)
                      for j in range(early, len(alive) - latter)}
        best = min(candidates.values())
        chosen = min(layer for layer, loss in candidates.items() if loss == best)
        removed.append(chosen)
        alive.remove(chosen)
        losses.append(best)
    return removed, losses


# Without barriers the greedy removes the last layer second; with (1, 1) it may not, and with either barrier alone
# it would remove layer 4 (early only) or layer 0 (latter only) instead of 3.
@pytest.mark.parametrize("barriers", [(0, 0), (1, 1)])
def test_sleb_is_the_greedy_over_calibration_nll(barriers):
    model, tokenizer = tiny_llama(5)
    adapter = get_adapter(model)
    with torch.no_grad():
        for i, layer in enumerate(adapter.decoder_layers(model)):
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.weight.mul_([0.3, 1.0, 3.0, 0.5, 0.1][i])
    layers = targets.get("layers", sparsity=0.4)
    n_remove = layers.budget(model, adapter)
    texts = TEXTS[:4]
    want_order, want_losses = brute_force_greedy(model, n_remove, *barriers, texts, tokenizer)

    batches = profile.tokenize(tokenizer, texts, 32, 3)  # padded: padding must not count
    assert not all(bool(b["attention_mask"].all()) for b in batches)
    order, losses = layer_methods.greedy_removal(model, adapter, batches, n_remove, *barriers)
    assert order == want_order == ([1, 4] if barriers == (0, 0) else [1, 3])
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(want_losses, dtype=torch.float64), rtol=1e-6, atol=0)

    context = methods.ScoreContext(tokenizer, {"generic": CalibrationSet("generic", texts, "train", [0] * 4, False)},
                                   {"max_length": 32, "batch_size": 3},
                                   dict(zip(("early_barrier", "latter_barrier"), barriers)))
    scores = methods.METHODS["sleb"].scores(layers, model, adapter, {}, None, 0, context=context)
    masks, _, _ = layers.vote(model, adapter, scores, vote.Rules())
    assert (~masks["layers"]).nonzero().flatten().tolist() == sorted(want_order)
    assert [int(i) for i in torch.argsort(scores["generic"]["layers"], stable=True)[:n_remove]] == want_order
    assert [layer.mlp.down_proj for layer in adapter.decoder_layers(model)] == [
        layer.mlp.down_proj for layer in model.model.layers] and len(model.model.layers) == 5  # left as it was


def test_sleb_barriers_that_leave_too_few_candidates_are_one_line():
    model, tokenizer = tiny_llama(4)
    context = methods.ScoreContext(tokenizer, {}, {"max_length": 32, "batch_size": 4},
                                   {"early_barrier": 1, "latter_barrier": 1})
    with pytest.raises(DietError) as err:
        methods.METHODS["sleb"].scores(targets.get("layers", sparsity=0.75), model, get_adapter(model), {}, None, 0,
                                       context=context)
    assert str(err.value) == ("sparsity: 0.75 removes 3 of the 4 layers, but method=sleb never removes the first 1 "
                              "and the last 1 (method.early_barrier, method.latter_barrier); allowed: a sparsity "
                              "that removes at most 2 layers, or smaller barriers")


# ------------------------------------------------------------------------------------------------ runs

QUICK = ["model=tiny_llama", "tasks=demo", "model.config.num_hidden_layers=4", "prune.target=layers", "sparsity=0.5",
         "calib.n_samples=4", "calib.max_length=32", "eval.limit=2", "eval.bootstrap_iters=0", "logger=none"]


def run_layers(tmp_path, *overrides):
    from diet import run

    cfg = config.compose([*QUICK, f"cache_dir={tmp_path / 'cache'}", "calib.text=pydoc", *overrides])
    run.run(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    masks = safetensors.torch.load_file(tmp_path / "run" / "mask.safetensors")
    with safetensors.safe_open(tmp_path / "run" / "mask.safetensors", "pt") as f:
        metadata = f.metadata()
    return results, masks, metadata


def test_a_shortgpt_run_saves_a_smaller_checkpoint_that_computes_the_dense_model_with_those_layers_skipped(tmp_path):
    results, masks, metadata = run_layers(tmp_path, "method=shortgpt", "prune.save=true")
    assert (results["method"], results["target"]) == ("shortgpt", "layers")
    params = results["params"]
    assert results["sparsity"] == {"requested": 0.5, "achieved": 0.5, "params": {
        "decoder": 0.5, "model": (params["dense"] - params["pruned"]) / params["dense"]}}  # 2 of 4 equal layers
    assert list(masks) == ["layers"] and masks["layers"].dtype == torch.bool and int(masks["layers"].sum()) == 2
    assert metadata["target"] == "layers" and metadata["method"] == "shortgpt"

    dense, _ = tiny_llama(4)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "pruned_model")
    assert plain.config.num_hidden_layers == 2
    layer_params = lambda m: sum(p.numel() for layer in m.model.layers for p in layer.parameters())  # noqa: E731
    assert results["params"] == {"dense": sum(p.numel() for p in dense.parameters()),
                                 "pruned": sum(p.numel() for p in plain.parameters()),
                                 "decoder_dense": layer_params(dense), "decoder_pruned": layer_params(plain)}
    reference = zero_masked_reference(copy.deepcopy(dense), get_adapter(dense), masks, "layers")
    ids = torch.randint(0, 384, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-4)


def test_a_sleb_run_keeps_the_first_and_last_layer_by_default(tmp_path):
    results, masks, _ = run_layers(tmp_path, "method=sleb")
    assert results["method"] == "sleb" and results["sparsity"]["achieved"] == 0.5
    assert masks["layers"].tolist() == [True, False, False, True]  # 2 to remove, candidates 1 and 2 only


def test_task_voted_layer_removal_is_a_configuration(tmp_path):
    results, masks, _ = run_layers(tmp_path, "method=diet", "scoring=block_influence")
    tasks = config.compose(QUICK).tasks.names
    assert results["scoring"] == "block_influence" and results["sparsity"]["achieved"] == 0.5
    assert sorted(masks) == sorted(["layers", *(f"task.{t}.layers" for t in tasks)])
    assert all(int(m.sum()) == 2 for m in masks.values())


def test_a_budget_that_removes_every_layer_is_one_line_and_writes_no_result(tmp_path):
    with pytest.raises(DietError, match=r"^sparsity: 0.9 removes round\(0.9 x 4\) = 4 of the 4 decoder layers"):
        run_layers(tmp_path, "method=shortgpt", "sparsity=0.9")
    assert not (tmp_path / "run" / "results.json").exists()


# (overrides, the line's start, names the allowed list must not hold): lists are checked by membership, so methods
# and scorings added later do not break them
@pytest.mark.parametrize("overrides, message, left_out", [
    (["prune.target=layers"], "scoring: 'act_l2' is not allowed; allowed: a scoring of what prune.target=layers "
                              "records at its layer_io hooks: block_influence", ["act_l2", "wanda"]),
    (["prune.target=layers", "method=magnitude"],
     "method: 'magnitude' is not allowed; allowed: a method that ranks prune.target=layers: diet, generic, random, "
     "per_task", ["magnitude"]),
    (["method=shortgpt"], "method: 'shortgpt' is not allowed; allowed: a method that ranks prune.target=mlp: diet, "
                          "generic, magnitude", ["sleb", "shortgpt,"]),
    (["method=sleb", "prune.target=heads"], "method: 'sleb' is not allowed; allowed: a method that ranks "
                                            "prune.target=heads: diet, generic, magnitude", ["shortgpt", "sleb,"]),
    (["scoring=block_influence"], "scoring: 'block_influence' is not allowed; allowed: a scoring of what "
                                  "prune.target=mlp records at its input hooks: act_l1, act_l2", ["block_influence,"]),
    (["prune.target=[mlp,layers]"], "prune.target: ['mlp', 'layers'] is not allowed; allowed: layers alone (a run "
                                    "has one scoring and one method, and none ranks both whole layers and channels: "
                                    "prune them in two runs, the second on the first's pruned_model)", []),
    (["prune.target=layers", "method=shortgpt", "prune.compensation=mean"],
     "prune.compensation: 'mean' is not allowed; allowed: none with prune.target=layers", []),
    (["prune.target=layers", "method=sleb", "method.early_barrier=-1"],
     "method.early_barrier: -1 is not allowed with method=sleb; allowed: an integer >= 0", []),
])
def test_what_cannot_rank_layers_is_one_line(overrides, message, left_out):
    with pytest.raises(DietError) as err:
        config.plan(config.compose(["model=tiny_llama", "tasks=demo", *overrides]))
    line = str(err.value)
    assert line.startswith(message) and "\n" not in line
    allowed = line.split("allowed: ", 1)[1].split(" (method=")[0]
    assert not [name for name in left_out if name in allowed]
    if overrides[0].startswith("method=s"):  # says which target the method does rank
        assert line.endswith(f"({overrides[0]} ranks prune.target=layers)")


def test_the_plan_of_each_layer_method():
    plan = lambda *o: config.plan(config.compose(["model=tiny_llama", "tasks=demo", "prune.target=layers", *o]))  # noqa
    shortgpt, sleb, voted = plan("method=shortgpt"), plan("method=sleb"), plan("scoring=block_influence")
    assert [type(t).__name__ for t in shortgpt.targets] == ["LayersTarget"]
    assert "layer_cos" in shortgpt.statistics and "layer_cos" in voted.statistics and "layer_cos" not in sleb.statistics
    assert shortgpt.method.calibration_for("task") == sleb.method.calibration_for("task") == "pooled"
    assert voted.method.calibration_for("task") == "task"
    assert sleb.method_options == {"early_barrier": 1, "latter_barrier": 1} and sleb.method.uses_model


@pytest.mark.parametrize("method,expected", [
    ("shortgpt", {"source": "text", "text": "pg19", "n_samples": 128, "max_length": 256}),
    ("sleb", {"source": "text", "text": "wikitext2", "n_samples": 128, "max_length": 2048, "batch_size": 1}),
])
def test_each_layer_method_calibrates_as_its_paper_unless_told_otherwise(method, expected):
    calib = config.compose([f"method={method}"]).calib
    assert {k: calib[k] for k in expected} == expected
    told = config.compose([f"method={method}", "calib.source=generic", "calib.n_samples=7"]).calib
    assert (told.source, told.n_samples) == ("generic", 7)
