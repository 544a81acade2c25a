import pytest
import torch

from diet import DietError, flatten, profile, targets
from diet.stats import BASE
from diet.models.adapters import get_adapter

TEXTS = [
    "The capital of France is Paris.",
    "3 + 4 = 7",
    "Question: is the sky blue? Answer: yes. Question: can fish fly? Answer: no.",
    "A man is sitting on a roof.",
    "hot cold",
]


def naive_stats(model, adapter, tokenizer, texts, target, max_length=64):
    """Reference: run each text alone (no padding at all), keep every activation, reduce at the end."""
    captured: dict[str, list[torch.Tensor]] = {}
    points = targets.get(target).hook_points(model, adapter)
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, kwargs, n=name: captured.setdefault(n, []).append(
                profile._first_input(args, kwargs)[0].detach().clone()), with_kwargs=True)
        for name, module in points.items()
    ]
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
    for h in handles:
        h.remove()
    out = {}
    for name, acts in captured.items():
        x = torch.cat(acts).double()
        out[name] = {"sum_abs": x.abs().sum(0), "sum_sq": (x * x).sum(0), "max_abs": x.abs().amax(0),
                     "count": torch.tensor([float(x.shape[0])], dtype=torch.float64)}
    return out


@pytest.mark.parametrize("name", ["tiny_gemma2", "tiny_llama"])
@pytest.mark.parametrize("target", ["mlp", "hidden"])
def test_statistics_match_naive_reference_on_padded_batches(tiny_models, name, target):
    model, tokenizer = tiny_models[name]
    adapter = get_adapter(model)
    got = profile.profile_texts(model, adapter, tokenizer, TEXTS, target, max_length=64, batch_size=3)
    want = naive_stats(model, adapter, tokenizer, TEXTS, target)
    n_layers = model.config.num_hidden_layers
    assert sorted(got) == sorted(want)
    assert len(got) == (n_layers if target == "mlp" else n_layers + 1)
    width = model.config.intermediate_size if target == "mlp" else model.config.hidden_size
    total_tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    for point, stats in got.items():
        assert stats["sum_abs"].shape == (width,) and stats["sum_abs"].dtype == torch.float32
        assert stats["count"].item() == total_tokens
        for stat in BASE:
            torch.testing.assert_close(stats[stat].double(), want[point][stat], rtol=1e-4, atol=1e-5)


def test_padding_and_batching_do_not_change_statistics(tiny_models):
    model, tokenizer = tiny_models["tiny_llama"]
    adapter = get_adapter(model)
    one_by_one = profile.profile_texts(model, adapter, tokenizer, TEXTS, "mlp", max_length=64, batch_size=1)
    batched = profile.profile_texts(model, adapter, tokenizer, TEXTS, "mlp", max_length=64, batch_size=5)
    # Extra padding columns on top of the batch: still the same statistics.
    batches = profile.tokenize(tokenizer, TEXTS, 64, 5)
    for b in batches:
        b["input_ids"] = torch.cat([b["input_ids"], torch.full((b["input_ids"].shape[0], 7), tokenizer.pad_token_id)], 1)
        b["attention_mask"] = torch.cat([b["attention_mask"], torch.zeros(b["attention_mask"].shape[0], 7, dtype=torch.long)], 1)
    padded = profile.collect(model, adapter, batches, "mlp")
    for point in one_by_one:
        for stat in BASE:
            torch.testing.assert_close(batched[point][stat], one_by_one[point][stat], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(padded[point][stat], one_by_one[point][stat], rtol=1e-5, atol=1e-6)


def test_tokenize_right_pads_and_truncates(tiny_models):
    _, tokenizer = tiny_models["tiny_gemma2"]
    batches = profile.tokenize(tokenizer, TEXTS, max_length=6, batch_size=2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    for b in batches:
        assert b["input_ids"].shape[1] <= 6
        lengths = b["attention_mask"].sum(1)
        for row, n in enumerate(lengths.tolist()):
            assert b["attention_mask"][row, :n].all() and not b["attention_mask"][row, n:].any()
            assert (b["input_ids"][row, n:] == tokenizer.pad_token_id).all()


def test_flatten_round_trip():
    stats = {"mlp.0": {"sum_abs": torch.ones(3), "count": torch.tensor([2.0])}, "mlp.1": {"max_abs": torch.zeros(3)}}
    assert profile.unflatten(flatten(stats, sep="/")).keys() == stats.keys()
    assert torch.equal(profile.unflatten(flatten(stats, sep="/"))["mlp.0"]["sum_abs"], torch.ones(3))


@pytest.mark.parametrize("name", ["tiny_gemma2", "tiny_llama"])
@pytest.mark.parametrize("target", ["mlp", "hidden", "heads"])
def test_layerwise_offload_profile_equals_whole_model_profile(tiny_models, name, target):
    """Gemma-2 alternates sliding-window and full attention masks: the capture pass must hand each layer its own."""
    model, tokenizer = tiny_models[name]
    adapter = get_adapter(model)
    texts = TEXTS * 3 + ["word " * 90]  # longer than tiny_gemma2's sliding window of 64
    whole = profile.profile_texts(model, adapter, tokenizer, texts, target, max_length=128, batch_size=4)
    layerwise = profile.profile_texts(model, adapter, tokenizer, texts, target, max_length=128, batch_size=4,
                                      layerwise_device=torch.device("cpu"))
    assert sorted(whole) == sorted(layerwise)
    for point in whole:
        for stat in BASE:
            torch.testing.assert_close(layerwise[point][stat], whole[point][stat], rtol=1e-5, atol=1e-6)
    assert all(type(layer).__name__.endswith("DecoderLayer") for layer in adapter.decoder_layers(model))


def test_statistics_under_accelerate_offload_hooks_match(tiny_models):
    """A dispatched model (weights on the meta device, moved in by accelerate's hooks) profiles the same."""
    import copy

    from accelerate import cpu_offload

    model, tokenizer = tiny_models["tiny_llama"]
    adapter = get_adapter(model)
    plain = profile.profile_texts(model, adapter, tokenizer, TEXTS, "mlp", max_length=64, batch_size=2)
    dispatched = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert next(dispatched.parameters()).device.type == "meta"
    offloaded = profile.profile_texts(dispatched, get_adapter(dispatched), tokenizer, TEXTS, "mlp", max_length=64,
                                      batch_size=2)
    for point in plain:
        for stat in BASE:
            torch.testing.assert_close(offloaded[point][stat], plain[point][stat], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_statistics_match_eager_on_padded_batches(tiny_models, dtype):
    """The torch.compile path (the default on CUDA; forced here on the CPU) gives the eager path's statistics,
    padding excluded, for both targets and in the reduced-precision dtype models run in on GPUs."""
    model, tokenizer = tiny_models["tiny_gemma2"]
    model = model.to(dtype)
    adapter = get_adapter(model)
    try:
        for target in ("mlp", "hidden"):
            batches = profile.tokenize(tokenizer, TEXTS, 64, 3)
            eager = profile.collect(model, adapter, batches, target, fused_stats=False)
            fused = profile.collect(model, adapter, batches, target, fused_stats=True)
            assert sorted(fused) == sorted(eager)
            for point in eager:
                for stat in BASE:
                    assert fused[point][stat].dtype == torch.float32
                    torch.testing.assert_close(fused[point][stat], eager[point][stat], rtol=1e-5, atol=1e-6)
            assert fused["hidden.0" if target == "hidden" else "mlp.0"]["count"].item() == sum(
                len(tokenizer(t)["input_ids"]) for t in TEXTS)
    finally:
        model.to(torch.float32)


def test_fused_stats_setting_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert profile.use_fused("auto", cpu) is False and profile.use_fused("auto", cuda) is True
    assert profile.use_fused(True, cpu) is True and profile.use_fused(False, cuda) is False
    with pytest.raises(ValueError, match="fused_stats: 'yes'"):
        profile.use_fused("yes", cpu)


@pytest.mark.parametrize("target", ["mlp", "hidden"])
def test_model_split_over_two_devices_gives_identical_statistics_masks_and_pruned_logits(tiny_models, target):
    """A model dispatched by accelerate over two devices (layer 0 on the first, the rest on the second; the CPU
    stands in for the second GPU when there is none, with the same device hooks moving activations between them)
    profiles, votes and prunes exactly like the single-device model."""
    import copy

    from accelerate import dispatch_model

    from diet import scoring
    from diet.prune import prune_model
    from diet.scoring import group_scores
    from diet.vote import build_masks

    model, tokenizer = tiny_models["tiny_llama"]
    devices = ["cpu", "cuda:0" if torch.cuda.is_available() else "cpu"]
    device_map = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], "model.layers.0": devices[0],
                  "model.layers.1": devices[1], "model.norm": devices[1], "lm_head": devices[1]}
    split = dispatch_model(copy.deepcopy(model), device_map=device_map, main_device=devices[0], force_hooks=True)
    assert hasattr(split.model.layers[1], "_hf_hook")  # activations really pass through accelerate's device hooks

    def pipeline(m):
        adapter = get_adapter(m)
        per_task = {name: profile.profile_texts(m, adapter, tokenizer, texts, target, max_length=64, batch_size=2)
                    for name, texts in (("a", TEXTS[:3]), ("b", TEXTS[2:]), ("c", TEXTS[::2]))}
        scores = {name: group_scores({p: {k: v.cpu() for k, v in s.items()} for p, s in task_stats.items()},
                                     scoring.get("act_l2"), targets.get(target))
                  for name, task_stats in per_task.items()}
        masks, _, _ = build_masks(scores, sparsity=0.25, multiple_of=4)
        return per_task, masks

    single_stats, single_masks = pipeline(model)
    split_stats, split_masks = pipeline(split)
    for task in single_stats:
        for point in single_stats[task]:
            for stat in BASE:
                torch.testing.assert_close(split_stats[task][point][stat].cpu(), single_stats[task][point][stat],
                                           rtol=1e-5, atol=1e-6)
    assert single_masks.keys() == split_masks.keys()
    assert all(torch.equal(single_masks[k], split_masks[k]) for k in single_masks)

    ids = tokenizer(TEXTS[2], return_tensors="pt")["input_ids"]
    pruned_single = prune_model(copy.deepcopy(model), get_adapter(model), single_masks, target)
    pruned_split = prune_model(split, get_adapter(split), split_masks, target)  # in place, each weight where it lives
    assert split.model.layers[1].mlp.down_proj.weight.device.type == torch.device(devices[1]).type
    with torch.no_grad():
        torch.testing.assert_close(pruned_split(input_ids=ids).logits.cpu(), pruned_single(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_is_a_one_line_error_naming_the_setting(tiny_models, monkeypatch):
    def broken(*_args):
        raise RuntimeError("Compiler: cc not found\nlong traceback follows")

    monkeypatch.setattr(profile, "_fused_partials", broken)
    model, tokenizer = tiny_models["tiny_llama"]
    with pytest.raises(DietError) as err:
        profile.profile_texts(model, get_adapter(model), tokenizer, TEXTS, "mlp", max_length=64, batch_size=2,
                              fused_stats=True)
    assert str(err.value) == ("calib.fused_stats: torch.compile failed here (RuntimeError: Compiler: cc not found); "
                              "allowed: calib.fused_stats=false (eager statistics, same values up to rounding)")
