"""The literature's metrics (FLAP's IFV / WIFV / WIFN, Wanda-sp, Minitron) as scorings, method=flap's structures,
method=wanda_sp and sequential profiling, each against a plain-Python reference written from the formulas;
FLAP's compensation; checkpoints; end-to-end runs; bad input."""
import copy
import math

import pytest
import torch
import transformers

from diet import DietError, config, methods, prune, run, scoring, stages, vote
from diet import stats as stats_lib
from diet.models import LoadedModel, tiny
from diet.models.adapters import get_adapter
from diet.tasks.calibration import CalibrationSet

TEXTS = [
    "The capital of France is Paris. The capital of Japan is Tokyo. The opposite of hot is cold.",
    "Question: is the sky blue? Answer: yes. Question: can fish fly? Answer: no.",
    "3 + 4 = 7. 2 + 2 = 4. 9 + 0 = 9. one two three four five six seven eight nine ten",
    "A man is sitting on a roof. He starts pulling up roofing.",
    "Which of these is a mammal? A. shark B. dolphin C. trout D. eel.",
    "hot cold",
]
MODELS = {"llama": ["model=tiny_llama"], "gemma2": ["model=tiny_gemma2"],
          "llama_mha": ["model=tiny_llama", "model.config.num_key_value_heads=4"],
          # more heads and layers, so head rankings decide something: 8 heads of 8 channels (MHA, and 4 per KV group)
          "llama_mha8": ["model=tiny_llama", "model.config.num_attention_heads=8", "model.config.num_key_value_heads=8",
                         "model.config.num_hidden_layers=3"],
          "llama_gqa8": ["model=tiny_llama", "model.config.num_attention_heads=8", "model.config.num_key_value_heads=2",
                         "model.config.num_hidden_layers=3"],
          "gemma2_gqa8": ["model=tiny_gemma2", "model.config.num_attention_heads=8",
                          "model.config.num_key_value_heads=4", "model.config.num_hidden_layers=3"]}


def setup(family, *overrides):
    """(plan, loaded) for a composed config on a freshly built tiny model (float32)."""
    cfg = config.compose([*MODELS[family], "tasks=demo", "calib.text=pydoc", "calib.max_length=64",
                          "calib.batch_size=4", "calib.fused_stats=false", *overrides])
    model, tokenizer = tiny.build(cfg.model.family, dict(cfg.model.config), seed=0)
    return config.plan(cfg), LoadedModel(model, tokenizer, get_adapter(model), family)


def profiled(plan, loaded, cache_dir):
    calib_set = CalibrationSet(task="text", texts=TEXTS, split="test", doc_ids=[], held_out_of_eval=False)
    return stages.profile(plan, loaded, {"text": calib_set}, cache_dir=cache_dir, dtype="float32")[0]


def captured(model, adapter, tokenizer):
    """Reference inputs: each text alone (no padding), every token of every hook point, float64, per text."""
    seen = {}
    layers = adapter.decoder_layers(model)
    modules = {**{f"mlp.{i}": adapter.mlp_projections(layer)[2] for i, layer in enumerate(layers)},
               **{f"heads.{i}": adapter.attention_projections(layer)[3] for i, layer in enumerate(layers)}}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=name: seen.setdefault(n, []).append(
        args[0][0].double())) for name, m in modules.items()]
    with torch.no_grad():
        for t in TEXTS:
            model(input_ids=tokenizer(t, truncation=True, max_length=64, return_tensors="pt")["input_ids"])
    for h in handles:
        h.remove()
    return seen


def out_weight(model, adapter, point):
    layer = adapter.decoder_layers(model)[int(point.split(".")[1])]
    linear = adapter.mlp_projections(layer)[2] if point.startswith("mlp") else adapter.attention_projections(layer)[3]
    return linear.weight.detach().double()


def channel_formula(name, sequences, w):
    """The papers' per-channel metrics from the raw inputs [tokens, d] (one tensor per sequence)."""
    x = torch.cat(sequences)
    if name == "minitron":
        return torch.stack([s.abs().mean(dim=0) for s in sequences]).norm(dim=0)
    variance = ((x - x.mean(dim=0)) ** 2).mean(dim=0)
    rms_times_mean_abs = (x * x).mean(dim=0).sqrt() * w.abs().mean(dim=0)
    return {"ifv": variance, "wifv": variance * (w * w).sum(dim=0), "wifn": rms_times_mean_abs,
            "wanda_sp": rms_times_mean_abs}[name]


def head_formula(name, channels, head_dim):
    per_head = channels.reshape(-1, head_dim)
    if name == "wanda_sp":
        return per_head.sum(dim=1)           # prune_wanda_sp: W_metric.mean(axis=0).reshape(-1, 128).sum(dim=1)
    if name == "minitron":
        return per_head.norm(dim=1)
    return (per_head ** 2).sum(dim=1)        # FLAP squares o_proj's metric, then sums a head's channels


def top(scores, k):
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return torch.tensor([j in order[:k] for j in range(len(scores))])


def best_per_group(scores, n_kv, keep_per_group):
    """Each KV group keeps its best heads (per_group)."""
    size = len(scores) // n_kv
    mask = torch.zeros(len(scores), dtype=torch.bool)
    for g in range(n_kv):
        for j in sorted(range(g * size, (g + 1) * size), key=lambda j: (-float(scores[j]), j))[:keep_per_group]:
            mask[j] = True
    return mask


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_literature_scorings_and_their_masks_match_the_formulas(family, tmp_path):
    import dataclasses

    plan, loaded = setup(family, "scoring=minitron", "method=diet", "prune.target=[mlp,heads]", "sparsity=0.25",
                         "prune.sparsity_per_target.heads=0.5")
    model, adapter = loaded.model, loaded.adapter
    names = ("ifv", "wifv", "wifn", "wanda_sp", "minitron")
    every = dataclasses.replace(plan, statistics=stats_lib.resolve(s for n in names for s in scoring.get(n).stats))
    stats = profiled(every, loaded, tmp_path)
    inputs = captured(model, adapter, loaded.tokenizer)
    head_dim, n_kv = adapter.layer_head_dim(adapter.decoder_layers(model)[0]), model.config.num_key_value_heads
    for name in names:
        chosen = dataclasses.replace(plan, scoring=scoring.get(name))
        masks = stages.vote(chosen, loaded, stats).masks
        for target in plan.targets:
            own = {"text": {p: s for p, s in stats["text"].items() if p.startswith(f"{target.name}.")}}
            scores = methods.activation_scores(target, model, adapter, own, chosen.scoring, 0)["text"]
            for point, score in scores.items():
                want = channel_formula(name, inputs[point], out_weight(model, adapter, point))
                if target.name == "heads":
                    want = head_formula(name, want, head_dim)
                    assert torch.equal(masks[point], best_per_group(want, n_kv, 1)), (name, point)
                else:
                    assert torch.equal(masks[point], top(want, 96)), (name, point)  # 32 of 128 removed a layer
                torch.testing.assert_close(score.double(), want, rtol=2e-4, atol=1e-7, msg=f"{name} {point}")


# ------------------------------------------------------------------------------------------------ FLAP

def flap_reference(model, adapter, inputs, *, names, structure, metric, sparsity, heads_sparsity, gqa, min_keep):
    """FLAP's selection written out from diet/flap.py's definition with Python lists: metric (heads squared),
    standardised per layer for the adaptive structures (a head: the mean of its channels), units (neurons; heads
    per GQA mode), min_keep reserved, the kept prefix whose parameters come closest to the budget."""
    layers = adapter.decoder_layers(model)
    d = model.config.hidden_size
    adaptive = structure.startswith("AL")
    units = {}  # (name, layer) -> [(score, members, weight)] best first; plus lo, fixed, width
    for i, layer in enumerate(layers):
        q, k, v, o = adapter.attention_projections(layer)
        n_heads, n_kv, hd = adapter.num_heads(layer), adapter.num_kv_heads(layer), adapter.layer_head_dim(layer)
        size = n_heads // n_kv
        for name in names:
            point = f"{name}.{i}"
            c = channel_formula(metric.lower(), inputs[point], out_weight(model, adapter, point))
            if name == "heads":
                c = c ** 2
            if adaptive:
                c = (c - c.mean()) / c.std()
            if name == "mlp":
                width = len(c)
                items = [(float(c[j]), [j], 3 * d) for j in range(width)]
                lo, fixed = max(1, math.ceil(min_keep * width)), 0
            else:
                head = [float(s) for s in (c.reshape(n_heads, hd).mean(dim=1) if adaptive else
                                            c.reshape(n_heads, hd).sum(dim=1))]
                least = max(1, math.ceil(min_keep * n_heads))
                if gqa == "kv_group" or size == 1:
                    items = [(sum(head[g * size:(g + 1) * size]) / size, list(range(g * size, (g + 1) * size)),
                              size * 2 * hd * d + 2 * hd * k.in_features) for g in range(n_kv)]
                    lo, fixed = math.ceil(least / size), 0
                else:
                    ranked = [sorted(range(g * size, (g + 1) * size), key=lambda j: (-head[j], j))
                              for g in range(n_kv)]
                    items = [(sum(head[ranked[g][r]] for g in range(n_kv)) / n_kv, [ranked[g][r] for g in range(n_kv)],
                              n_kv * 2 * hd * d) for r in range(size)]
                    lo, fixed = math.ceil(least / n_kv), n_kv * 2 * hd * k.in_features
                width = n_heads
            if name == "mlp" or gqa == "kv_group" or size == 1:  # per_group's ranked units are in order already
                items = sorted(items, key=lambda u: -u[0])
            units[(name, i)] = {"items": items, "lo": lo, "fixed": fixed, "width": width,
                                "whole_groups": name == "heads" and (gqa == "kv_group" or size == 1)}
    block = {"mlp": sum(3 * d * adapter.mlp_projections(l)[2].in_features for l in layers),
             "heads": sum(sum(p.weight.numel() for p in adapter.attention_projections(l)) for l in layers)}

    def closest(keys, keep, weight=lambda u: u[2], with_fixed=True):
        base = sum((units[key]["fixed"] if with_fixed else 0)
                   + sum(weight(u) for u in units[key]["items"][:units[key]["lo"]]) for key in keys)
        rest = [(u[0], key, weight(u)) for key in keys for u in units[key]["items"][units[key]["lo"]:]]
        order = sorted(range(len(rest)), key=lambda r: -rest[r][0])  # stable: heads first, then layer order
        best, total, prefix = abs(base - keep), base, 0
        for p, r in enumerate(order, start=1):
            total += rest[r][2]
            if abs(total - keep) < best:
                best, prefix = abs(total - keep), p
        counts = {key: units[key]["lo"] for key in keys}
        for r in order[:prefix]:
            counts[rest[r][1]] += 1
        return counts

    def uniform(key, fraction):
        u = units[key]
        if key[0] == "mlp" or u["whole_groups"]:  # neurons, or KV groups voted as units
            return len(u["items"]) - math.floor(fraction * len(u["items"]) + 0.5)
        kept = u["width"] - math.floor(fraction * u["width"] + 0.5)   # heads, a multiple of the KV groups
        return max(1, min(len(u["items"]), round_half_down(kept / len(u["items"][0][1]))))

    def removed_head_params(counts):
        out = 0
        for key, c in counts.items():
            if key[0] == "heads":
                out += sum(u[2] for u in units[key]["items"][c:])
        return out

    keys = sorted(units, key=lambda key: (key[0] != "heads", key[1]))
    heads_keys, mlp_keys = [k for k in keys if k[0] == "heads"], [k for k in keys if k[0] == "mlp"]
    total = sum(block[n] for n in names)
    if structure == "AL-AM":
        counts = closest(keys, (1 - sparsity) * total)
    elif structure == "UL-UM":
        counts = {key: uniform(key, heads_sparsity if key[0] == "heads" else sparsity) for key in keys}
    else:
        counts = {}
        if heads_keys:
            if structure == "AL-MM":
                n_heads = sum(units[k]["width"] for k in heads_keys)
                counts.update(closest(heads_keys, n_heads - math.floor(heads_sparsity * n_heads + 0.5),
                                      weight=lambda u: len(u[1]), with_fixed=False))
            else:
                counts.update({key: uniform(key, heads_sparsity) for key in heads_keys})
        fraction = (sparsity * total - removed_head_params(counts)) / block["mlp"]
        if structure == "AL-MM":
            counts.update(closest(mlp_keys, (1 - fraction) * block["mlp"]))
        else:
            counts.update({key: uniform(key, fraction) for key in mlp_keys})
    masks = {}
    for key, c in counts.items():
        mask = torch.zeros(units[key]["width"], dtype=torch.bool)
        for u in units[key]["items"][:c]:
            mask[u[1]] = True
        masks[f"{key[0]}.{key[1]}"] = mask
    return masks


def round_half_down(x):
    return math.ceil(x - 0.5)


CASES = [  # family, structure, metric, targets, gqa, heads' fraction (manual mix and uniform)
    ("llama", "AL-AM", "WIFV", "[mlp,heads]", "per_group", None),
    ("llama", "UL-UM", "WIFV", "[mlp,heads]", "per_group", 0.5),
    ("gemma2", "UL-MM", "IFV", "[mlp,heads]", "kv_group", 0.5),
    ("llama", "AL-AM", "IFV", "mlp", "per_group", None),
    ("llama_mha8", "AL-AM", "WIFV", "[mlp,heads]", "per_group", None),
    ("llama_mha8", "AL-MM", "WIFN", "heads", "per_group", 0.375),
    ("llama_mha8", "UL-UM", "IFV", "[mlp,heads]", "kv_group", 0.25),
    ("llama_gqa8", "AL-AM", "WIFV", "[mlp,heads]", "per_group", None),
    ("llama_gqa8", "AL-MM", "WIFV", "[mlp,heads]", "per_group", 0.25),
    ("llama_gqa8", "UL-MM", "WIFN", "[mlp,heads]", "per_group", 0.5),
    ("gemma2_gqa8", "AL-AM", "WIFN", "[mlp,heads]", "kv_group", None),
    ("gemma2_gqa8", "AL-MM", "WIFV", "[mlp,heads]", "per_group", 0.5),
]


@pytest.mark.parametrize("family,structure,metric,target,gqa,heads_sparsity", CASES)
def test_flap_masks_match_the_written_out_definition(family, structure, metric, target, gqa, heads_sparsity,
                                                     tmp_path):
    overrides = ["method=flap", f"method.structure={structure}", f"method.metric={metric}", f"prune.target={target}",
                 f"prune.heads_gqa={gqa}", "sparsity=0.3", "prune.min_keep=0.125"]
    if heads_sparsity is not None:
        overrides.append(f"prune.sparsity_per_target.heads={heads_sparsity}")
    plan, loaded = setup(family, *overrides)
    stats = profiled(plan, loaded, tmp_path)
    masks = stages.vote(plan, loaded, stats).masks
    names = [t.name for t in plan.targets]
    want = flap_reference(loaded.model, loaded.adapter, captured(loaded.model, loaded.adapter, loaded.tokenizer),
                          names=names, structure=structure, metric=metric, sparsity=0.3,
                          heads_sparsity=heads_sparsity or 0.3, gqa=gqa, min_keep=0.125)
    assert sorted(masks) == sorted(want)
    for key in want:
        assert masks[key].tolist() == want[key].tolist(), key
    assert any(not m.all() for m in masks.values())


def logits(model, tokenizer):
    ids = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits * ids["attention_mask"][..., None]


def held_at_mean(model, adapter, masks, inputs):
    """Reference: the dense model with every removed input of down_proj / o_proj held at its calibration mean."""
    model = copy.deepcopy(model)
    for i, layer in enumerate(adapter.decoder_layers(model)):
        heads = (f"heads.{i}", adapter.attention_projections(layer)[3], adapter.layer_head_dim(layer))
        for key, linear, size in ((f"mlp.{i}", adapter.mlp_projections(layer)[2], 1), heads):
            if key in masks:
                keep = masks[key].repeat_interleave(size)
                mean = torch.cat(inputs[key]).mean(dim=0).float()
                linear.register_forward_pre_hook(lambda _m, args, keep=keep, mean=mean: (
                    torch.where(keep, args[0], mean.to(args[0].dtype)),))
    return model


@pytest.mark.parametrize("family,structure", [("gemma2", "AL-AM"), ("llama", "UL-UM")])
def test_flap_pruned_and_compensated_equals_dense_with_removed_inputs_at_their_mean(family, structure, tmp_path):
    plan, loaded = setup(family, "method=flap", f"method.structure={structure}", "prune.target=[mlp,heads]",
                         "sparsity=0.3", "prune.sparsity_per_target.heads=0.5" if structure != "AL-AM" else "seed=0")
    assert plan.compensation == "mean"  # method.bias_compensation=true, whatever prune.compensation says
    model, adapter, tokenizer = loaded.model, loaded.adapter, loaded.tokenizer
    dense = copy.deepcopy(model)
    stats = profiled(plan, loaded, tmp_path)
    masks = stages.vote(plan, loaded, stats).masks
    reference = held_at_mean(dense, adapter, masks, captured(dense, adapter, tokenizer))
    stages.prune(plan, loaded, masks, stats)
    torch.testing.assert_close(logits(model, tokenizer), logits(reference, tokenizer), atol=2e-5, rtol=1e-4)
    unbiased = prune.prune_model(copy.deepcopy(dense), adapter, masks, plan.targets)
    assert (logits(unbiased, tokenizer) - logits(model, tokenizer)).abs().max() > 1e-3  # the bias matters

    prune.save_pruned(model, tokenizer, tmp_path / "pruned")
    if structure == "UL-UM":  # uniform widths, Llama's bias flags: an ordinary checkpoint
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
        torch.testing.assert_close(logits(plain, tokenizer), logits(model, tokenizer), atol=0, rtol=0)
    else:  # per-layer widths and Gemma's added MLP biases
        assert model.config.added_biases == {"mlp": [0, 1]} and model.config.intermediate_sizes
        loaded_back, _ = prune.load_pruned(tmp_path / "pruned")
        torch.testing.assert_close(logits(loaded_back, tokenizer), logits(model, tokenizer), atol=0, rtol=0)


def test_heads_of_multi_head_attention_vote_as_kv_groups_in_either_gqa_mode():
    from diet import targets

    model, _ = tiny.build("llama", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4), seed=0)
    adapter = get_adapter(model)
    scores = {"t": {"heads.0": torch.tensor([3.0, 1.0, 4.0, 2.0]), "heads.1": torch.tensor([1.0, 2.0, 3.0, 4.0])}}
    rules = vote.Rules(min_keep=0.0)
    got = {gqa: targets.get("heads", gqa=gqa, sparsity=0.5).vote(model, adapter, scores, rules)[0]
           for gqa in ("per_group", "kv_group")}
    assert {k: m.tolist() for k, m in got["per_group"].items()} == {k: m.tolist() for k, m in got["kv_group"].items()}
    assert got["per_group"]["heads.0"].tolist() == [True, False, True, False]


# ------------------------------------------------------------------------------------------------ sequential

def sequential_reference(model, adapter, tokenizer, mlp_sparsity):
    """Wanda-sp as prune_wanda_sp runs it, with full forwards: layer i scored on the inputs the model with layers
    0..i-1 already pruned (their removed columns of down_proj / o_proj zeroed) gives it."""
    model = copy.deepcopy(model)
    masks = {}
    for i, layer in enumerate(adapter.decoder_layers(model)):
        inputs = captured(model, adapter, tokenizer)
        down, o = adapter.mlp_projections(layer)[2], adapter.attention_projections(layer)[3]
        mlp = channel_formula("wanda_sp", inputs[f"mlp.{i}"], down.weight.detach().double())
        heads = head_formula("wanda_sp", channel_formula("wanda_sp", inputs[f"heads.{i}"], o.weight.detach().double()),
                             adapter.layer_head_dim(layer))
        masks[f"mlp.{i}"] = top(mlp, mlp.numel() - math.floor(mlp_sparsity * mlp.numel() + 0.5))
        masks[f"heads.{i}"] = best_per_group(heads, adapter.num_kv_heads(layer), 1)
        with torch.no_grad():
            down.weight[:, ~masks[f"mlp.{i}"]] = 0
            o.weight[:, ~masks[f"heads.{i}"].repeat_interleave(adapter.layer_head_dim(layer))] = 0
    return masks


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_wanda_sp_is_sequential_and_matches_the_reference_loop(family, tmp_path):
    plan, loaded = setup(family, "method=wanda_sp", "calib.text=pydoc", "prune.target=[mlp,heads]", "sparsity=0.25",
                         "prune.sparsity_per_target.heads=0.5")
    assert plan.calib["sequential"] and plan.calib["text"] == "pydoc"  # the method file's defaults, overridden
    stats = profiled(plan, loaded, tmp_path)
    masks = stages.vote(plan, loaded, stats).masks
    want = sequential_reference(loaded.model, loaded.adapter, loaded.tokenizer, 0.25)
    assert {k: m.tolist() for k, m in masks.items()} == {k: m.tolist() for k, m in want.items()}
    one_pass = dataclasses_replace_calib(plan, sequential=False)
    dense_stats = profiled(one_pass, loaded, tmp_path)
    torch.testing.assert_close(stats["text"]["mlp.0"]["sum_sq"], dense_stats["text"]["mlp.0"]["sum_sq"])
    assert not torch.allclose(stats["text"]["mlp.1"]["sum_sq"], dense_stats["text"]["mlp.1"]["sum_sq"], rtol=1e-3)


def dataclasses_replace_calib(plan, **calib):
    import dataclasses

    return dataclasses.replace(plan, calib={**plan.calib, **calib})


def test_sequential_statistics_are_those_of_the_model_pruned_so_far_with_compensation(tmp_path):
    """Layer 1's sequential statistics = a one-pass profile of the model whose layer 0 alone is pruned (and
    compensated): the trajectory holds removed inputs at their mean, as the pruned model does."""
    plan, loaded = setup("llama", "method=diet", "scoring=act_var", "calib.source=text", "calib.sequential=true",
                         "prune.compensation=mean", "prune.target=[mlp,heads]", "sparsity=0.5")
    stats = profiled(plan, loaded, tmp_path)
    masks = stages.vote(plan, loaded, stats).masks
    first = {k: (m if k.endswith(".0") else torch.ones_like(m)) for k, m in masks.items()}
    partly = prune.prune_model(copy.deepcopy(loaded.model), loaded.adapter, first, plan.targets, compensation="mean",
                               stats=stats)
    again = profiled(dataclasses_replace_calib(plan, sequential=False),
                     LoadedModel(partly, loaded.tokenizer, loaded.adapter, "partly"), tmp_path)
    for point in ("mlp.1", "heads.1"):
        for name in ("sum", "sum_sq", "count"):
            torch.testing.assert_close(stats["text"][point][name], again["text"][point][name], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ runs

QUICK = ["tasks=demo", "eval.tasks=[demo_sums]", "eval.limit=4", "eval.bootstrap_iters=0", "logger=none",
         "calib.n_samples=6", "calib.max_length=32", "calib.batch_size=3"]


def test_flap_and_wanda_sp_run_end_to_end_on_local_text_and_load_back(tmp_path):
    import json

    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 2))
    cfg = config.compose(["model=tiny_llama", *QUICK, "method=flap", f"calib.text={jsonl}", "prune.target=[mlp,heads]",
                          "prune.save=true", f"cache_dir={tmp_path / 'cache'}"])
    result = run.run(cfg, tmp_path / "flap")
    assert result.method == "flap" and result.profile_cache == {"text": "miss"}
    assert result.method_options == {"metric": "WIFV", "structure": "AL-AM", "bias_compensation": True}
    assert result.prune["compensation"] == "mean" and result.calib["source"] == "text"
    assert result.calibration == {"text": {"split": str(jsonl), "n_docs": 6, "held_out_of_eval": False}}
    model, _ = prune.load_pruned(tmp_path / "flap" / "pruned_model")
    assert prune.count_params(model) == result.params["pruned"] < result.params["dense"]
    assert run.run(cfg, tmp_path / "again").profile_cache == {"text": "hit"}

    txt = tmp_path / "calib.txt"
    txt.write_text(" ".join(TEXTS * 4))
    cfg = config.compose(["model=tiny_llama", *QUICK, "method=wanda_sp", f"calib.text={txt}",
                          "prune.target=[mlp,heads]", "prune.save=true", f"cache_dir={tmp_path / 'cache'}"])
    result = run.run(cfg, tmp_path / "wanda_sp")
    assert result.method == "wanda_sp" and result.profile_cache == {"text": "sequential"}
    # a .txt is one stream cut into windows: no documents drawn, and the record says how it was cut
    assert result.calibration == {"text": {"split": str(txt), "n_docs": 0, "held_out_of_eval": False,
                                           "windows": "consecutive"}}
    assert result.sparsity["per_target"] == {"mlp": 26 / 128, "heads": 0.5}  # uniform: every layer alike
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "wanda_sp" / "pruned_model")
    assert prune.count_params(plain) == result.params["pruned"]


@pytest.mark.parametrize("overrides,message", [
    (["method=flap", "method.structure=AL-XX"],
     r"^method.structure: 'AL-XX' is not allowed with method=flap; allowed: AL-AM, AL-MM, UL-UM, UL-MM$"),
    (["method=flap", "method.metric=WIFZ"],
     r"^method.metric: 'WIFZ' is not allowed with method=flap; allowed: WIFV, IFV, WIFN$"),
    (["method=flap", "+method.strcture=AL-AM"],
     r"^method.strcture: unknown key \(no part of diet reads it\); allowed: a known key \(the nearest known key is "
     r"method.structure\)$"),
    (["method=flap", "calib.sequential=true"],
     r"^calib.sequential: true is not allowed with method=flap \(its masks are not chosen layer by layer"),
    (["method=flap", "prune.target=[mlp,heads]", "prune.sparsity_per_target.heads=0.5"],
     r"^prune.sparsity_per_target: \{mlp: 0.2, heads: 0.5\} is not allowed with method.structure=AL-AM"),
    (["method=flap", "prune.target=hidden"], r"^prune.target: 'hidden' is not allowed with method=flap"),
    (["method=wanda_sp", "prune.scope=global", "calib.sequential=false"],
     r"^prune.scope: 'global' is not allowed with method=wanda_sp \(the same fraction in every layer\)"),
    (["method=wanda_sp", "prune.target=hidden"], r"^prune.target: 'hidden' is not allowed with method=wanda_sp"),
    (["method=diet", "calib.sequential=true", "prune.target=hidden"],
     r"^calib.sequential: true is not allowed with prune.target=hidden \(its masks are not per layer\)"),
    (["method=diet", "calib.sequential=true", "stage=profile"], r"^calib.sequential: true is not allowed with stage"),
    (["method=magnitude", "calib.sequential=true"], r"^calib.sequential: true is not allowed with method=magnitude"),
    (["scoring=wanda_sp", "prune.target=hidden"],
     r"^scoring: 'wanda_sp' is not allowed; allowed: a scoring that prune.target=hidden gives weights for"),
])
def test_bad_literature_settings_are_one_line(overrides, message):
    with pytest.raises(DietError, match=message):
        config.plan(config.compose(["model=tiny_llama", "tasks=demo", "calib.text=pydoc", *overrides]))
