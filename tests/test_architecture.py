"""The pieces the literature's methods plug into: declared statistics, the plan, transforms, layer-io hooks."""
import copy
import json
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from diet import DietError, config, methods, profile, scoring, stats, targets, transforms
from diet.models import LoadedModel
from diet.models.adapters import get_adapter
from diet.options import Option
from diet.targets.base import Target
from diet.tasks.calibration import CalibrationSet

TEXTS = ["The capital of France is Paris.", "3 + 4 = 7", "hot cold", "A man is sitting on a roof of a house."]
CALIB = {"n_samples": 4, "max_length": 32, "include_target": True, "batch_size": 3, "fused_stats": False}


def captured_inputs(model, modules, texts, tokenizer):
    """Reference: each text alone (no padding), every input of each module kept."""
    seen = {name: [] for name in modules}
    handles = [m.register_forward_pre_hook(lambda _m, args, kwargs, n=name: seen[n].append(
        (args[0] if args else kwargs["hidden_states"])[0].double()), with_kwargs=True) for name, m in modules.items()]
    with torch.no_grad():
        for text in texts:
            model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"])
    for h in handles:
        h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


def test_a_declared_statistic_is_collected_beside_the_base_set_and_matches_a_naive_sum(tiny_models):
    model, tokenizer = tiny_models["tiny_llama"]
    adapter = get_adapter(model)
    mlp = targets.get("mlp")
    got = profile.profile_texts(model, adapter, tokenizer, TEXTS, mlp, max_length=32, batch_size=3,
                                statistics=("sum",))
    want = captured_inputs(model, mlp.hook_points(model, adapter), TEXTS, tokenizer)
    for point, x in want.items():
        assert sorted(got[point]) == sorted([*stats.BASE, "sum"])
        torch.testing.assert_close(got[point]["sum"].double(), x.sum(dim=0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[point]["sum_abs"].double(), x.abs().sum(dim=0), rtol=1e-5, atol=1e-5)
    plain = profile.profile_texts(model, adapter, tokenizer, TEXTS, mlp, max_length=32, batch_size=3)
    assert all("sum" not in point_stats for point_stats in plain.values())


def test_the_cache_key_records_extra_statistics_only_and_keeps_todays_keys(tiny_models):
    mlp, heads = targets.get("mlp"), targets.get("heads")
    args = ("fingerprint", "demo_sums", TEXTS, mlp, CALIB)
    today = profile.cache_key(*args, seed=0, dtype="float32", fused=False)
    # the fields every cache entry written before statistics were declared has: those entries keep hitting
    assert sorted(today) == sorted(["model", "task", "n_samples", "seed", "max_length", "include_target",
                                    "batch_size", "dtype", "target", "texts_sha256", "stats_kernel", "diet"])
    assert profile.cache_key(*args, seed=0, dtype="float32", fused=False, statistics=stats.BASE) == today
    with_sum = profile.cache_key(*args, seed=0, dtype="float32", fused=False, statistics=("sum", "count"))
    assert with_sum == {**today, "stats": ["sum"]}
    # a layer-io statistic is not recorded at mlp's input hooks, so mlp's entry does not change for it
    assert profile.cache_key(*args, seed=0, dtype="float32", fused=False, statistics=("layer_cos",)) == today
    # heads' statistics are per channel now: their per-head entries of earlier versions must not be read
    assert profile.cache_key("fingerprint", "demo_sums", TEXTS, heads, CALIB, seed=0, dtype="float32",
                             fused=False)["stats_layout"] == "per_channel"


class DecoderLayers(Target):
    """A test target recorded at each decoder layer's input and output (what target=layers will be)."""
    name = "layers"
    hook_kind = "layer_io"

    def hook_points(self, model, adapter):
        return {f"layers.{i}": layer for i, layer in enumerate(adapter.decoder_layers(model))}

    def point_width(self, module, model, adapter):
        return adapter.hidden_size(model)


def test_layer_io_statistics_see_each_layers_input_and_output(tiny_models):
    model, tokenizer = tiny_models["tiny_gemma2"]
    adapter = get_adapter(model)
    got = profile.profile_texts(model, adapter, tokenizer, TEXTS, [targets.get("mlp"), DecoderLayers()],
                                max_length=32, batch_size=3, statistics=("layer_cos",))
    layers = adapter.decoder_layers(model)
    inputs = captured_inputs(model, {i: layer for i, layer in enumerate(layers)}, TEXTS, tokenizer)
    outputs = {i: [] for i in range(len(layers))}
    handles = [layer.register_forward_hook(lambda _m, _a, out, i=i: outputs[i].append(
        (out[0] if isinstance(out, tuple) else out)[0].double())) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for text in TEXTS:
            model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"])
    for h in handles:
        h.remove()
    for i in range(len(layers)):
        cos = torch.nn.functional.cosine_similarity(inputs[i], torch.cat(outputs[i]), dim=-1)
        point = got[f"layers.{i}"]
        assert sorted(point) == ["count", "layer_cos"]  # input-hook statistics are not recorded there
        assert point["count"].item() == inputs[i].shape[0]
        torch.testing.assert_close(point["layer_cos"].double(), cos.sum().reshape(1), rtol=1e-4, atol=1e-4)
    assert "layer_cos" not in got["mlp.0"] and "sum_abs" in got["mlp.0"]


def test_a_per_channel_scoring_reduces_to_heads_after_scoring():
    """A scoring declared with group_reduce=sum scores channels and sums them per head (FLAP, Wanda-sp style)."""
    per_channel = scoring.Scoring("channel_mean", lambda s, norms: s["sum"] / s["count"], ("sum", "count"))
    point = {"sum": torch.tensor([1.0, -3.0, 2.0, 2.0, 0.0, 8.0]), "count": torch.tensor([2.0])}
    assert scoring.point_score(point, per_channel, group_size=2).tolist() == [-1.0, 2.0, 4.0]
    mean = dataclasses.replace(per_channel, group_reduce="max")
    assert scoring.point_score(point, mean, group_size=3).tolist() == [1.0, 4.0]


def compose(*overrides):
    return config.compose(["model=tiny_llama", "tasks=demo", *overrides])


def test_the_plan_resolves_objects_once():
    plan = config.plan(compose("prune.target=[mlp,heads]", "prune.sparsity_per_target.heads=0.5",
                               "prune.heads_gqa=kv_group", "sparsity=0.25", "scoring=act_max", "vote.method=borda"))
    assert [type(t).__name__ for t in plan.targets] == ["MlpTarget", "HeadsTarget"]
    assert [t.sparsity for t in plan.targets] == [0.25, 0.5]
    assert plan.targets[1].gqa == "kv_group"
    assert plan.method is methods.METHODS["diet"] and plan.scoring is scoring.SCORINGS["act_max"]
    assert plan.rules.vote_method == "borda" and plan.target_label == "mlp+heads"
    assert plan.statistics == stats.BASE and plan.transform is transforms.TRANSFORMS["none"]
    assert config.plan(compose("prune.compensation=mean")).statistics == stats.resolve(["sum"])


def test_method_options_are_declared_and_checked_by_the_method(monkeypatch):
    declared = dataclasses.replace(methods.METHODS["diet"], name="optioned",
                                   options={"alpha": Option(0.5, lambda v: isinstance(v, float), "a float")})
    monkeypatch.setitem(methods.METHODS, "optioned", declared)
    cfg = compose()
    cfg.method = OmegaConf.create({"name": "optioned"})
    assert config.plan(cfg).method_options == {"alpha": 0.5}
    cfg.method = OmegaConf.create({"name": "optioned", "alpha": 2.0})
    assert config.plan(cfg).method_options == {"alpha": 2.0}
    cfg.method = OmegaConf.create({"name": "optioned", "alpha": "big"})
    with pytest.raises(DietError, match=r"^method.alpha: 'big' is not allowed with method=optioned; allowed: a float$"):
        config.plan(cfg)
    cfg.method = OmegaConf.create({"name": "optioned", "alpah": 1.0})
    with pytest.raises(DietError, match=r"^method.alpah: unknown key for method=optioned; allowed: method.alpha$"):
        config.plan(cfg)
    cfg = compose()
    cfg.scoring = OmegaConf.create({"name": "act_l2", "p": 3})  # e.g. a user's scoring file with a key it lacks
    with pytest.raises(DietError, match=r"^scoring.p: unknown key for scoring=act_l2; allowed: none"):
        config.plan(cfg)


@pytest.mark.parametrize("overrides,message", [
    (["prune.heads_gqa=per_head"], r"^prune.heads_gqa: 'per_head' is not allowed; allowed: per_group, kv_group$"),
    (["prune.compensation=median"], r"^prune.compensation: 'median' is not allowed; allowed: none, mean$"),
    (["prune.target=hidden", "prune.compensation=mean"],
     r"^prune.compensation: 'mean' is not allowed; allowed: none with prune.target=hidden"),
])
def test_bad_target_options_are_one_line(overrides, message):
    with pytest.raises(DietError, match=message):
        config.plan(compose(*overrides))


def test_a_transform_changes_the_fingerprint_so_caches_never_mix_bases(tiny_models, tmp_path):
    model, tokenizer = tiny_models["tiny_llama"]
    fresh = lambda: LoadedModel(copy.deepcopy(model), tokenizer, get_adapter(model), "dense")  # noqa: E731
    loaded = fresh()
    calib_sets = {"t": CalibrationSet(task="t", texts=TEXTS, split="train", doc_ids=[0, 1, 2, 3],
                                      held_out_of_eval=False)}
    seen = []

    def double_down_proj(m, adapter, _tokenizer, sets, _settings):
        seen.append(sorted(sets))
        with torch.no_grad():
            for layer in adapter.decoder_layers(m):
                adapter.mlp_projections(layer)[0].weight.mul_(2.0)  # gate: changes what down_proj sees
        return {"factor": 2.0}

    assert transforms.TRANSFORMS["none"](loaded, calib_sets) is loaded
    mlp = [targets.get("mlp")]
    before, status = profile.profile_sets(loaded, calib_sets, mlp, tmp_path, CALIB, seed=0, dtype="float32")
    assert status == {"t": "miss"}
    transformed = transforms.Transform("double", double_down_proj)(loaded, calib_sets)
    assert seen == [["t"]] and transformed.model is loaded.model and transformed.fingerprint != "dense"
    after, status = profile.profile_sets(transformed, calib_sets, mlp, tmp_path, CALIB, seed=0, dtype="float32")
    assert status == {"t": "miss"}  # not the dense model's entry
    assert not torch.equal(after["t"]["mlp.0"]["sum_sq"], before["t"]["mlp.0"]["sum_sq"])
    again = transforms.Transform("double", double_down_proj)(fresh(), calib_sets)
    assert again.fingerprint == transformed.fingerprint  # same base, same transform, same inputs: same key
    assert profile.profile_sets(again, calib_sets, mlp, tmp_path, CALIB, seed=0, dtype="float32")[1] == {"t": "hit"}


QUICK = ["calib.n_samples=6", "calib.max_length=32", "eval.limit=4", "eval.bootstrap_iters=0", "logger=none"]


def test_a_target_rounding_leaves_unpruned_is_one_line_and_writes_no_result(tmp_path):
    from diet import run

    cfg = compose(*QUICK, "prune.target=hidden", "prune.multiple_of=128", "sparsity=0.25",
                  f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DietError) as err:
        run.run(cfg, tmp_path / "run")
    assert str(err.value) == (
        "prune.multiple_of: 128 leaves prune.target=hidden unpruned at sparsity 0.25 (widths 64; each keeps a "
        "multiple of 128 or its full width); allowed: a smaller prune.multiple_of (1 = exact) or a larger sparsity")
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "mask.safetensors").exists()
    assert not (tmp_path / "cache" / "profile").exists()  # said before any profiling
    assert json.loads((tmp_path / "run" / "status.json").read_text()) | {"time": 0} == {
        "state": "failed", "error": str(err.value), "time": 0}  # recorded in-process too, not left "running"


def test_a_budget_missed_by_rounding_is_a_warning_and_stage_profile_fills_only_the_caches(tmp_path, caplog):
    from diet import run

    cache_dir = tmp_path / "cache"
    cfg = compose(*QUICK, "prune.multiple_of=64", "sparsity=0.3", f"cache_dir={cache_dir}")
    with caplog.at_level("INFO", logger="diet"):
        result = run.run(cfg, tmp_path / "run")
    assert {k: result.sparsity[k] for k in ("requested", "achieved")} == {"requested": 0.3, "achieved": 0.5}
    warning = ("prune: mlp removes 0.5 of its dimensions, 0.3 requested (kept widths are multiples of 64; "
               "prune.multiple_of=1 is exact)")
    assert caplog.text.count(warning) == 1
    assert caplog.text.index(warning) < caplog.text.index("profile cache: miss")  # at the start of the run
    profiled = compose(*QUICK, "stage=profile", "eval.dense=true", "seed=1", f"cache_dir={cache_dir}")
    assert run.run(profiled, tmp_path / "profile") == {"profile_cache": {n: "miss" for n in profiled.tasks.names}}
    assert (cache_dir / "dense_eval").is_dir()  # eval.dense=true: the fan-out jobs share the dense evaluation
    assert not (tmp_path / "profile" / "results.json").exists() and not (tmp_path / "profile" / "mask.safetensors").exists()


def test_act_var_is_each_channels_variance_over_calibration_tokens(tiny_models):
    model, tokenizer = tiny_models["tiny_llama"]
    adapter = get_adapter(model)
    for target in (targets.get("mlp"), targets.get("heads")):
        chosen = scoring.get("act_var")
        got = profile.profile_texts(model, adapter, tokenizer, TEXTS, target, max_length=32, batch_size=3,
                                    statistics=chosen.stats)
        scores = scoring.group_scores(got, chosen, target, group_sizes=target.group_sizes(model, adapter))
        inputs = captured_inputs(model, target.hook_points(model, adapter), TEXTS, tokenizer)
        for point, x in inputs.items():
            variance = x.var(dim=0, unbiased=False)
            if target.name == "heads":
                variance = variance.reshape(-1, model.config.head_dim).sum(dim=1)
            torch.testing.assert_close(scores[point].double(), variance, rtol=1e-3, atol=1e-6)


def test_a_saving_problem_never_costs_the_evaluation(tmp_path, monkeypatch):
    from diet import prune, run

    def refuse(model, tokenizer, path):
        raise ValueError("validation error\nThe hidden size (640) is not a multiple of the number of attention heads (3).")

    monkeypatch.setattr(prune, "save_pruned", refuse)
    cfg = compose(*QUICK, "prune.save=true", f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(DietError) as err:
        run.run(cfg, tmp_path / "run")
    assert str(err.value) == (
        "prune.save: pruned_model/ could not be written (ValueError: The hidden size (640) is not a multiple of the "
        f"number of attention heads (3).); the evaluation is in {tmp_path / 'run' / 'results.json'}")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["metrics"]) == set(cfg.tasks.names)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


def test_eval_speed_times_the_pruned_model_against_the_dense_one(tmp_path):
    from diet import run

    result = run.run(compose(*QUICK, "eval.speed=true", "sparsity=0.5", "prune.target=[mlp,heads]",
                             f"cache_dir={tmp_path / 'cache'}"), tmp_path / "run")
    measured = json.loads((tmp_path / "run" / "results.json").read_text())["speed"]
    assert measured == result.speed
    for phase in ("prefill", "decode"):
        low, high = measured[phase]["speedup_range"]
        assert measured[phase]["dense_s"] > 0 and measured[phase]["pruned_s"] > 0
        assert low <= measured[phase]["speedup"] <= high
    assert measured["param_ratio"] == result.params["pruned"] / result.params["dense"]
    assert 0 < measured["flop_ratio"] < 1 and measured["batch"] == 8


def test_flops_follow_the_pruned_shapes(tiny_models):
    from diet import speed

    model, _ = tiny_models["tiny_llama"]
    adapter = get_adapter(model)
    dense = speed.decoder_shape(model, adapter)
    pruned = copy.deepcopy(model)
    from diet.prune import prune_model

    prune_model(pruned, adapter, {f"mlp.{i}": torch.arange(128) < 64 for i in range(2)}, "mlp")
    shape = speed.decoder_shape(pruned, adapter)
    assert [ly.mlp for ly in shape.layers] == [64, 64] and [ly.mlp for ly in dense.layers] == [128, 128]
    h, s = model.config.hidden_size, 4
    saved = 2 * 3 * h * 64 * s * len(shape.layers)  # gate, up, down: 64 neurons fewer per layer, per token
    assert speed.forward_flops(dense, 1, s) - speed.forward_flops(shape, 1, s) == saved


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
@pytest.mark.parametrize("name,gqa", [("mlp", "per_group"), ("heads", "per_group"), ("heads", "kv_group"),
                                      ("hidden", "per_group"), ("layers", "per_group")])
def test_param_cost_is_what_removing_one_dimension_removes(family, name, gqa):
    """Each target's parameter cost per dimension (prune.budget=params) against the parameters a physical prune
    really removes from the decoder layers."""
    from test_prune import tiny_model

    from diet.prune import decoder_params, prune_model

    model = tiny_model(family, num_hidden_layers=3)
    adapter = get_adapter(model)
    target = targets.get(name, **({"gqa": gqa} if name == "heads" else {}))
    widths, cost = target.widths(model, adapter), target.param_cost(model, adapter)
    group = sorted(widths)[0]
    masks = {g: torch.ones(w, dtype=torch.bool) for g, w in widths.items()}
    removed = [0, 1] if gqa == "kv_group" else [0, 2] if name == "heads" else [0]  # heads: 4 in 2 KV groups
    masks[group][removed] = False
    before = decoder_params(model, adapter)
    prune_model(model, adapter, masks, target)
    assert before - decoder_params(model, adapter) == pytest.approx(len(removed) * cost[group])


def test_a_parameter_budget_is_met_by_every_target(tmp_path):
    from diet import run

    achieved, requested = {}, {"mlp": 0.25, "heads": 0.1, "layers": 0.25}  # heads are 22% of tiny_llama's decoder
    for target in ("mlp", "heads", "layers"):
        overrides = [*QUICK, "prune.budget=params", f"sparsity={requested[target]}", f"prune.target={target}",
                     f"cache_dir={tmp_path / 'cache'}", "model.config.num_hidden_layers=4"]
        if target == "layers":
            overrides += ["method=shortgpt", "calib.text=pydoc"]
        result = run.run(compose(*overrides), tmp_path / target)
        achieved[target] = result.sparsity["params"]
        assert result.sparsity["params"]["requested"] == requested[target]
    assert achieved["mlp"]["decoder"] == pytest.approx(0.25, abs=0.01)
    assert achieved["layers"]["decoder"] == pytest.approx(0.25)  # one of four equal layers
    assert achieved["heads"]["decoder"] == pytest.approx(0.1, abs=0.06)  # whole heads, as many in each KV group
    assert all(a["model"] < a["decoder"] for a in achieved.values())  # embeddings and LM head stay
    with pytest.raises(DietError, match=r"^sparsity: 0.6 of the decoder's parameters with prune.budget=params is "
                                        r"more than prune.target=heads holds"):
        run.run(compose(*QUICK, "prune.budget=params", "sparsity=0.6", "prune.target=heads",
                        f"cache_dir={tmp_path / 'cache'}"), tmp_path / "too_much")


def test_the_rounding_warning_says_what_each_target_rounds_to(caplog):
    from diet import stages

    cases = [(targets.get("mlp", sparsity=0.3), 64, "kept widths are multiples of 64; prune.multiple_of=1 is exact"),
             (targets.get("heads", sparsity=0.3, gqa="per_group"), 1,
              "whole heads, as many in every KV group; prune.multiple_of does not apply to heads"),
             (targets.get("layers", sparsity=0.3), 1, "whole layers: round(sparsity x layers)")]
    for target, multiple_of, why in cases:
        caplog.clear()
        stages.check_budget(target, {f"{target.name}.0": torch.tensor([True, True, False, False])}, multiple_of)
        assert caplog.messages == [f"prune: {target.name} removes 0.5 of its dimensions, 0.3 requested ({why})"]


def test_targets_sharing_sparsity_share_one_parameter_budget(tmp_path):
    """prune.budget=params with [mlp,heads]: `sparsity` is the decoder fraction both remove together (one fraction of
    each one's dimensions), not that fraction each; a per-target value is that target's own decoder fraction."""
    from diet import run

    common = [*QUICK, "prune.budget=params", "prune.target=[mlp,heads]", f"cache_dir={tmp_path / 'cache'}",
              "model.config.num_hidden_layers=4"]
    shared = run.run(compose(*common, "sparsity=0.4"), tmp_path / "shared").sparsity  # heads: 2 of 4 a layer
    assert shared["params"]["requested"] == 0.4
    assert shared["params"]["decoder"] == pytest.approx(0.4, abs=0.03)
    assert shared["per_target"]["mlp"] == pytest.approx(shared["per_target"]["heads"], abs=0.13)  # 4 heads a layer
    own = run.run(compose(*common, "sparsity=0.2", "prune.sparsity_per_target.heads=0.11"), tmp_path / "own").sparsity
    assert own["params"]["requested"] == pytest.approx(0.31)  # 0.2 by the neurons, 0.11 (2 of 4 heads) on top
    assert own["params"]["decoder"] == pytest.approx(0.31, abs=0.02)
    with pytest.raises(DietError, match=r"^sparsity: 0.99 of the decoder's parameters with prune.budget=params is "
                                        r"more than prune.target=\[mlp,heads\] holds"):
        run.run(compose(*common, "sparsity=0.99"), tmp_path / "too_much")
