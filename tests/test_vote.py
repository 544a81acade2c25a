import pytest
import torch

from diet import DietError, methods, scoring, targets, vote


def test_top_k_keeps_exactly_k_and_breaks_ties_by_lower_index():
    score = torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0])
    assert vote.top_k_mask(score, 2).tolist() == [False, True, True, False, False]
    assert int(vote.top_k_mask(torch.rand(97), vote.kept_count(97, 0.3)).sum()) == 97 - 29


@pytest.mark.parametrize("sparsity,width,kept", [(0.0, 10, 10), (0.2, 10, 8), (0.25, 10, 7), (0.5, 7, 3), (0.99, 4, 1)])
def test_kept_count_rounds_the_removed_count(sparsity, width, kept):
    assert vote.kept_count(width, sparsity) == kept


def test_vote_count_prefers_votes_then_mean_score():
    scores = {"a": {"g": torch.tensor([4.0, 3.0, 1.0, 1.0])}, "b": {"g": torch.tensor([4.0, 1.0, 5.0, 1.0])},
              "c": {"g": torch.tensor([4.0, 1.0, 1.0, 3.0])}}
    merged, _, votes = vote.build_masks(scores, sparsity=0.5, vote_method="vote_count", min_keep=0.0)
    assert votes["g"].tolist() == [3, 1, 1, 1]
    assert merged["g"].tolist() == [True, False, True, False]  # 3 votes, then the highest mean normalised score


@pytest.mark.parametrize("n_tasks", [4, 7])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_the_threshold_selects_at_an_exact_budget(n_tasks, scope):
    """Every threshold k/T keeps exactly the budget, and they do not all keep the same dimensions (7 tasks: paper7).
    The old fill/trim rule (vote_count) gives one mask whatever the threshold."""
    scores = random_scores(n_tasks=n_tasks, widths={f"mlp.{i}": 256 for i in range(3)}, seed=n_tasks)
    kwargs = dict(sparsity=0.3, scope=scope, min_keep=0.125, multiple_of=16)
    masks = {k: vote.build_masks(scores, threshold=k / n_tasks, **kwargs)[0] for k in range(1, n_tasks + 1)}
    sparsities = {vote.achieved_sparsity(m) for m in masks.values()}
    assert len(sparsities) == 1
    digests = {k: mask_digest((m, {}, {g: torch.zeros(1) for g in m})) for k, m in masks.items()}
    assert len(set(digests.values())) >= n_tasks - 1, digests
    assert as_lists(masks[1]) == as_lists(vote.build_masks(scores, vote_method="union", **kwargs)[0])
    assert as_lists(masks[n_tasks]) == as_lists(vote.build_masks(scores, vote_method="intersection", **kwargs)[0])
    strict = vote.build_masks(scores, **kwargs)[0]
    assert as_lists(strict) == as_lists(masks[n_tasks // 2 + 1])
    old = {vote.achieved_sparsity(vote.build_masks(scores, vote_method="vote_count", threshold=k / n_tasks,
                                                   **kwargs)[0]) for k in (1, n_tasks)}
    assert len(old) == 1
    assert len({mask_digest((vote.build_masks(scores, vote_method="vote_count", threshold=k / n_tasks, **kwargs)[0],
                             {}, {g: torch.zeros(1) for g in strict})) for k in (1, n_tasks)}) == 1


def test_a_minority_task_keeps_its_dimensions_under_max_score_and_union():
    """Three tasks agree on dimensions 0-3, one needs 4-5 alone: the majority vote drops 4-5; max_score and the
    budgeted union keep them."""
    common = torch.tensor([9.0, 8.0, 7.0, 6.0, 0.1, 0.1, 1.0, 1.0])
    minority = torch.tensor([1.0, 1.0, 1.0, 1.0, 30.0, 29.0, 0.1, 0.1])
    scores = {"a": {"mlp.0": common}, "b": {"mlp.0": common * 1.1}, "c": {"mlp.0": common * 0.9},
              "d": {"mlp.0": minority}}
    kept = {m: vote.build_masks(scores, sparsity=0.25, vote_method=m, min_keep=0.0)[0]["mlp.0"].tolist()
            for m in ("majority", "vote_count", "mean_score", "max_score", "union")}
    assert kept["majority"] == [True] * 4 + [False, False, True, True]
    assert kept["max_score"] == kept["union"] == [True] * 6 + [False, False]


def random_masks(widths, sparsity, seed, **rules):
    """method=random: the run's seeded draw, through the same budget rules."""
    return vote.build_masks({"random": methods.draw_scores(widths, seed)}, sparsity=sparsity, **rules)[0]


def test_random_masks_are_seeded():
    widths = {"mlp.0": 50, "mlp.1": 50}
    a, b, c = (random_masks(widths, 0.2, s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in widths)
    assert not all(torch.equal(a[k], c[k]) for k in widths)
    assert vote.achieved_sparsity(a) == pytest.approx(0.2)


def test_scores_from_statistics():
    stats = {"mlp.1": {"sum_abs": torch.tensor([2.0, 4.0]), "sum_sq": torch.tensor([8.0, 2.0]),
                       "max_abs": torch.tensor([3.0, 1.0]), "count": torch.tensor([2.0])},
             "mlp.0": {"sum_abs": torch.tensor([1.0, 1.0]), "sum_sq": torch.tensor([1.0, 1.0]),
                       "max_abs": torch.tensor([1.0, 1.0]), "count": torch.tensor([1.0])}}
    assert list(scoring.group_scores(stats, scoring.get("act_l1"), targets.get("mlp"))) == ["mlp.0", "mlp.1"]
    assert scoring.group_scores(stats, scoring.get("act_l1"), targets.get("mlp"))["mlp.1"].tolist() == [1.0, 2.0]
    assert scoring.group_scores(stats, scoring.get("act_l2"), targets.get("mlp"))["mlp.1"].tolist() == [2.0, 1.0]
    assert scoring.group_scores(stats, scoring.get("act_max"), targets.get("mlp"))["mlp.1"].tolist() == [3.0, 1.0]
    hidden = {f"hidden.{i}": s for i, s in enumerate(stats.values())}
    # mean of per-point scores normalised by their mean: ([2,1]/1.5 + [1,1]/1) / 2
    torch.testing.assert_close(scoring.group_scores(hidden, scoring.get("act_l2"), targets.get("hidden"))["hidden"],
                               torch.tensor([(2 / 1.5 + 1) / 2, (1 / 1.5 + 1) / 2]))


# ------------------------------------------------------------------------------------------------------------
# Merge methods, scope, min_keep, multiple_of, weight-based scores: each against a plain-Python restatement.

import hashlib  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
from fractions import Fraction  # noqa: E402

from diet.models import tiny  # noqa: E402
from diet.models.adapters import get_adapter  # noqa: E402

WIDTHS = {"mlp.0": 24, "mlp.1": 30, "mlp.2": 40, "mlp.3": 16}  # 30: not a multiple of 4 or 8


def random_scores(n_tasks=5, widths=WIDTHS, seed=0):
    """Task scores that share a per-layer base (so votes agree in part) with a different shape per layer (so a
    global ranking gives layers different widths)."""
    generator = torch.Generator().manual_seed(seed)
    base = {g: torch.rand(w, generator=generator, dtype=torch.float64) ** (1 + 2 * i) * (10 ** i)
            for i, (g, w) in enumerate(widths.items())}
    return {f"task{t}": {g: b * torch.exp(0.7 * torch.randn(b.numel(), generator=generator, dtype=torch.float64))
                         for g, b in base.items()} for t in range(n_tasks)}


def reference_build(scores, sparsity, scope, method, threshold, exact_budget, min_keep, multiple_of):
    """The module docstring's rules, one dimension at a time, in plain Python."""
    tasks = sorted(scores)
    groups = sorted(scores[tasks[0]], key=lambda g: int(g.split(".")[1]))
    gi = {g: n for n, g in enumerate(groups)}
    widths = {g: len(scores[tasks[0]][g]) for g in groups}
    allowed = {g: sorted(set(range(multiple_of, w + 1, multiple_of)) | {w}) for g, w in widths.items()}

    def kept(w):
        return max(1, w - int(sparsity * w + 0.5))

    lo = {g: min(a for a in allowed[g] if a >= max(1, math.ceil(min_keep * widths[g] - 1e-9))) for g in groups}
    layer_width = {g: min(allowed[g], key=lambda a: (abs(a - kept(widths[g])), a)) for g in groups}
    budget = kept(sum(widths.values()))

    def top(g, key, k):
        return set(sorted(range(widths[g]), key=lambda i: key(g, i))[:k])

    def round_total(counts):
        width = {g: max(a for a in allowed[g] if a <= c) for g, c in counts.items()}
        up = {g: min(a for a in allowed[g] if a >= c) for g, c in counts.items()}
        total = sum(width.values())
        for g in sorted((g for g in groups if up[g] > width[g]),
                        key=lambda g: (-Fraction(counts[g] - width[g], up[g] - width[g]), gi[g])):
            if abs(total + up[g] - width[g] - budget) < abs(total - budget):
                total += up[g] - width[g]
                width[g] = up[g]
        return width

    def select(key, width=None):
        if width is None and scope == "layer":
            width = layer_width
        if width is None:
            reserved = {(g, i) for g in groups for i in top(g, key, lo[g])}
            rest = sorted(((g, i) for g in groups for i in range(widths[g]) if (g, i) not in reserved),
                          key=lambda gi_: key(*gi_))[:budget - sum(lo.values())]
            width = round_total({g: lo[g] + sum(1 for h, _ in rest if h == g) for g in groups})
        return {g: [i in top(g, key, width[g]) for i in range(widths[g])] for g in groups}

    def normalised(t, g, i):
        s = scores[t][g]
        return s[i] / (sum(s) / len(s))

    per_task = {}
    for t in tasks:
        value = (lambda g, i, t=t: scores[t][g][i]) if scope == "layer" else (lambda g, i, t=t: normalised(t, g, i))
        per_task[t] = select(lambda g, i, value=value: (-value(g, i), gi[g], i))
    votes = {g: [sum(per_task[t][g][i] for t in tasks) for i in range(widths[g])] for g in groups}
    if len(tasks) == 1:
        return per_task[tasks[0]], per_task, votes
    mean = {g: [sum(normalised(t, g, i) for t in tasks) / len(tasks) for i in range(widths[g])] for g in groups}
    need = {"union": 1, "intersection": len(tasks)}.get(
        method, len(tasks) // 2 + 1 if threshold is None else max(1, math.ceil(threshold * len(tasks) - 1e-9)))
    # each task's position of each dimension: within the group by raw score, or in its global normalised ranking
    position = {}
    for t in tasks:
        if scope == "layer":
            for g in groups:
                for p, i in enumerate(sorted(range(widths[g]), key=lambda i: (-scores[t][g][i], i))):
                    position[t, g, i] = p
        else:
            everything = sorted(((g, i) for g in groups for i in range(widths[g])),
                                key=lambda gi_: (-normalised(t, *gi_), gi[gi_[0]], gi_[1]))
            for p, (g, i) in enumerate(everything):
                position[t, g, i] = p
    if method == "mean_score":
        return select(lambda g, i: (-mean[g][i], gi[g], i)), per_task, votes
    if method == "max_score":
        return select(lambda g, i: (-max(normalised(t, g, i) for t in tasks), -mean[g][i], gi[g], i)), per_task, votes
    if method == "borda":
        return select(lambda g, i: (sum(position[t, g, i] for t in tasks), -mean[g][i], gi[g], i)), per_task, votes
    by_votes = lambda g, i: (-votes[g][i], -mean[g][i], gi[g], i)  # noqa: E731
    if exact_budget and method == "vote_count":
        return select(by_votes), per_task, votes
    if exact_budget:  # the threshold vote: grow k until the budget passes; the last step's extras by mean
        def passes_at(g, i):  # the smallest k at which `need` tasks keep (g, i) in their top-k
            return sorted(position[t, g, i] + 1 for t in tasks)[need - 1]
        return select(lambda g, i: (passes_at(g, i), -mean[g][i], gi[g], i)), per_task, votes
    width = {}
    for g in groups:
        c = max(lo[g], sum(v >= need for v in votes[g]))
        width[g] = min((a for a in allowed[g] if a >= lo[g]), key=lambda a: (abs(a - c), a))
    return select(by_votes, width), per_task, votes


def as_lists(masks):
    return {g: m.tolist() for g, m in masks.items()}


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("method,threshold,exact_budget", [
    ("majority", None, True), ("majority", 0.2, True), ("majority", 0.8, True), ("majority", None, False),
    ("majority", 0.8, False), ("union", None, False), ("union", None, True), ("intersection", None, False),
    ("intersection", None, True), ("vote_count", None, True), ("vote_count", 0.4, False), ("mean_score", None, True),
    ("max_score", None, True), ("max_score", None, False), ("borda", None, True)])
@pytest.mark.parametrize("min_keep,multiple_of", [(0.0, 1), (0.25, 4), (0.125, 8)])
def test_build_masks_matches_reference(scope, method, threshold, exact_budget, min_keep, multiple_of):
    scores = random_scores()
    got = vote.build_masks(scores, sparsity=0.4, scope=scope, vote_method=method, threshold=threshold,
                           exact_budget=exact_budget, min_keep=min_keep, multiple_of=multiple_of)
    want = reference_build({t: as_lists(s) for t, s in scores.items()}, 0.4, scope, method, threshold,
                           exact_budget, min_keep, multiple_of)
    assert as_lists(got[0]) == want[0]
    assert {t: as_lists(m) for t, m in got[1].items()} == want[1]
    assert as_lists(got[2]) == want[2]
    assert list(got[0]) == list(WIDTHS) and all(m.dtype == torch.bool for m in got[0].values())


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.55])
def test_exact_budget_counts(sparsity):
    scores = random_scores()
    total = sum(WIDTHS.values())
    for method in ("majority", "mean_score"):
        masks, per_task, _ = vote.build_masks(scores, sparsity=sparsity, scope="global", vote_method=method,
                                              min_keep=0.0)
        assert sum(int(m.sum()) for m in masks.values()) == vote.kept_count(total, sparsity)
        assert all(sum(int(m.sum()) for m in pt.values()) == vote.kept_count(total, sparsity)
                   for pt in per_task.values())
        masks, _, _ = vote.build_masks(scores, sparsity=sparsity, scope="layer", vote_method=method, min_keep=0.0)
        assert {g: int(m.sum()) for g, m in masks.items()} == {g: vote.kept_count(w, sparsity)
                                                                for g, w in WIDTHS.items()}


def test_global_scope_gives_uneven_widths_within_min_keep_and_multiple_of():
    generator = torch.Generator().manual_seed(1)
    widths = {f"mlp.{i}": 256 for i in range(4)}
    # layer 0: flat scores; layer 3: a few large ones in a sea of small ones (pruned hardest after normalising)
    base = {f"mlp.{i}": torch.rand(256, generator=generator, dtype=torch.float64) ** (1 + 3 * i) for i in range(4)}
    scores = {t: {g: b * (1 + 0.1 * torch.rand(256, generator=generator, dtype=torch.float64))
                  for g, b in base.items()} for t in "abc"}
    budget = vote.kept_count(1024, 0.5)
    for min_keep, multiple_of in [(0.0, 1), (0.125, 1), (0.25, 64), (0.125, 32)]:
        masks, per_task, _ = vote.build_masks(scores, sparsity=0.5, scope="global", min_keep=min_keep,
                                              multiple_of=multiple_of)
        for mask_set in [masks, *per_task.values()]:
            kept = [int(mask_set[g].sum()) for g in widths]
            assert len(set(kept)) > 1 and kept[0] > kept[3], kept
            assert all(k % multiple_of == 0 and k >= max(1, math.ceil(min_keep * 256)) for k in kept), kept
            assert abs(sum(kept) - budget) <= multiple_of / 2, kept
    masks, _, _ = vote.build_masks(scores, sparsity=0.5, scope="global", min_keep=0.0, multiple_of=1)
    assert int(masks["mlp.3"].sum()) == 66
    masks, _, _ = vote.build_masks(scores, sparsity=0.5, scope="global", min_keep=0.3, multiple_of=1)
    assert int(masks["mlp.3"].sum()) == 77  # the reserve binds: ceil(0.3 * 256), taken from the other layers
    assert sum(int(m.sum()) for m in masks.values()) == budget
    masks, _, _ = vote.build_masks(scores, sparsity=0.5, scope="layer", min_keep=0.25, multiple_of=48)
    assert [int(m.sum()) for m in masks.values()] == [144] * 4  # 128 -> nearest multiple of 48, every layer


def test_multiple_of_rounding_in_layer_scope_ties_to_smaller_and_keeps_full_width():
    scores = {"a": {"mlp.0": torch.rand(96, dtype=torch.float64), "mlp.1": torch.rand(20, dtype=torch.float64)}}
    masks, _, _ = vote.build_masks(scores, sparsity=0.5, scope="layer", min_keep=0.0, multiple_of=32)
    # mlp.0 keeps 48: 32 and 64 are as near, take 32; mlp.1 (20 < 32) can only keep its full width
    assert {g: int(m.sum()) for g, m in masks.items()} == {"mlp.0": 32, "mlp.1": 20}


def test_global_ties_go_to_the_lower_layer_then_the_lower_index():
    same = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 2.0])
    scores = {"a": {"mlp.1": same.clone(), "mlp.0": same.clone()}}
    masks, _, _ = vote.build_masks(scores, sparsity=0.58, scope="global", min_keep=0.0)  # keeps 5 of 12
    # reserve the best of each layer (index 0), then three of the four 2.0s: layer 0 first, then the lower index
    assert masks["mlp.0"].tolist() == [True, False, True, False, False, True]
    assert masks["mlp.1"].tolist() == [True, False, True, False, False, False]


def mask_digest(masks_tuple):
    masks, per_task, votes = masks_tuple
    h = hashlib.sha256()
    for key in sorted(masks):
        h.update(key.encode() + masks[key].numpy().tobytes() + votes[key].numpy().tobytes())
    for task in sorted(per_task):
        for key in sorted(per_task[task]):
            h.update(f"{task}.{key}".encode() + per_task[task][key].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("method", vote.VOTE_METHODS)
@pytest.mark.parametrize("scope", vote.SCOPES)
def test_masks_are_bit_identical_across_calls_and_dict_orders(method, scope):
    scores = random_scores()
    kwargs = dict(sparsity=0.35, scope=scope, vote_method=method, exact_budget=method != "union", min_keep=0.125,
                  multiple_of=4)
    first, second = (mask_digest(vote.build_masks(scores, **kwargs)) for _ in range(2))
    shuffle = random.Random(0)
    tasks = list(scores)
    shuffle.shuffle(tasks)
    shuffled = {}
    for t in tasks:
        groups = list(scores[t])
        shuffle.shuffle(groups)
        shuffled[t] = {g: scores[t][g].clone() for g in groups}
    assert list(shuffled) != list(scores)
    assert first == second == mask_digest(vote.build_masks(shuffled, **kwargs))


def test_random_masks_keep_todays_draws_and_follow_the_budget_rules():
    widths = {"mlp.0": 50, "mlp.1": 70}
    generator = torch.Generator().manual_seed(7)
    today = {g: vote.top_k_mask(torch.rand(w, generator=generator), vote.kept_count(w, 0.2))
             for g, w in widths.items()}
    assert as_lists(random_masks(widths, 0.2, 7)) == as_lists(today)
    assert as_lists(random_masks(dict(reversed(widths.items())), 0.2, 7)) == as_lists(today)
    masks = random_masks(widths, 0.2, 7, scope="global", min_keep=0.25, multiple_of=8)
    assert all(int(m.sum()) % 8 == 0 and int(m.sum()) >= 16 for m in masks.values())


# ------------------------------------------------------------------------------------------- weights: wanda

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=64)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def tiny_model(request):
    model, _ = tiny.build(request.param, TINY, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # norm scales away from their init, so folding them in is visible
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 - 0.5)
    return model, get_adapter(model)


def column_norms(*pairs):
    """sqrt(sum over (scale, weight) of (scale_d * ||W[:, d]||)^2), in float64."""
    return sum((scale.double() * w.double().norm(dim=0)) ** 2 for scale, w in pairs).sqrt().float()


def test_weight_norms_match_a_direct_computation(tiny_model):
    model, adapter = tiny_model
    offset = 1.0 if model.config.model_type == "gemma2" else 0.0
    layers = model.model.layers
    norms = targets.get("mlp").weight_norms(model, adapter)
    assert list(norms) == ["mlp.0", "mlp.1"]
    for i, layer in enumerate(layers):
        assert norms[f"mlp.{i}"].dtype == torch.float32 and norms[f"mlp.{i}"].device.type == "cpu"
        torch.testing.assert_close(norms[f"mlp.{i}"], layer.mlp.down_proj.weight.double().norm(dim=0).float())
    norms = targets.get("hidden").weight_norms(model, adapter)
    assert list(norms) == ["hidden.0", "hidden.1", "hidden.2"]
    for i, layer in enumerate(layers):
        attn_scale = offset + layer.input_layernorm.weight
        mlp_norm = layer.pre_feedforward_layernorm if offset else layer.post_attention_layernorm
        mlp_scale = offset + mlp_norm.weight
        attn, mlp = layer.self_attn, layer.mlp
        want = column_norms((attn_scale, attn.q_proj.weight), (attn_scale, attn.k_proj.weight),
                            (attn_scale, attn.v_proj.weight), (mlp_scale, mlp.gate_proj.weight),
                            (mlp_scale, mlp.up_proj.weight))
        torch.testing.assert_close(norms[f"hidden.{i}"], want)
    torch.testing.assert_close(norms["hidden.2"], column_norms((offset + model.model.norm.weight,
                                                                model.lm_head.weight)))


def fake_stats(widths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {p: {"sum_abs": torch.rand(w, generator=generator), "sum_sq": torch.rand(w, generator=generator) * 9,
                "max_abs": torch.rand(w, generator=generator), "count": torch.tensor([4.0])}
            for p, w in widths.items()}


def test_wanda_scores_are_activation_rms_times_weight_norm(tiny_model):
    model, adapter = tiny_model
    norms = targets.get("mlp").weight_norms(model, adapter)
    stats = fake_stats({"mlp.1": 48, "mlp.0": 48})
    scores = scoring.group_scores(stats, scoring.get("wanda"), targets.get("mlp"), weight_norms=norms)
    assert list(scores) == ["mlp.0", "mlp.1"]
    for point in scores:
        torch.testing.assert_close(scores[point], (stats[point]["sum_sq"] / 4).sqrt() * norms[point])
    norms = targets.get("hidden").weight_norms(model, adapter)
    stats = fake_stats({f"hidden.{i}": 32 for i in range(3)})
    per_point = [(stats[p]["sum_sq"] / 4).sqrt() * norms[p] for p in sorted(stats)]
    want = torch.stack([s / s.mean() for s in per_point]).mean(dim=0)
    torch.testing.assert_close(scoring.group_scores(stats, scoring.get("wanda"), targets.get("hidden"), weight_norms=norms)["hidden"], want)
    with pytest.raises(ValueError, match="wanda' needs weight_norms"):
        scoring.group_scores(stats, scoring.get("wanda"), targets.get("hidden"))
    with pytest.raises(ValueError, match=r"weight_norms\['hidden.2'\]: missing"):
        scoring.group_scores(stats, scoring.get("wanda"), targets.get("hidden"), weight_norms={k: v for k, v in norms.items() if k != "hidden.2"})


def magnitude_masks(model, adapter, target, sparsity, **rules):
    """method=magnitude: the target's weight norms as the one score set, through build_masks."""
    scores = methods.magnitude_scores(targets.get(target), model, adapter, {}, None, 0)
    return vote.build_masks(scores, sparsity=sparsity, **rules)[0]


def test_magnitude_masks_keep_the_largest_weight_norms(tiny_model):
    model, adapter = tiny_model
    masks = magnitude_masks(model, adapter, "mlp", 0.25, scope="layer")
    for i, layer in enumerate(model.model.layers):
        direct = layer.mlp.down_proj.weight.double().norm(dim=0)
        assert masks[f"mlp.{i}"].tolist() == vote.top_k_mask(direct, 36).tolist()
    norms = targets.get("hidden").weight_norms(model, adapter)
    hidden = magnitude_masks(model, adapter, "hidden", 0.25)
    want = torch.stack([n / n.mean() for n in norms.values()]).mean(dim=0)
    assert hidden["hidden"].tolist() == vote.top_k_mask(want, 24).tolist()
    masks = magnitude_masks(model, adapter, "mlp", 0.5, scope="global", min_keep=0.25, multiple_of=8)
    assert all(int(m.sum()) % 8 == 0 and int(m.sum()) >= 12 for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == 48


# ---------------------------------------------------------------------------------------------- error texts

def test_min_keep_beyond_the_budget_is_a_clear_error():
    scores = {"a": {"mlp.0": torch.rand(128), "mlp.1": torch.rand(128)}}
    with pytest.raises(DietError, match=r"^prune.min_keep: 0.8 is not allowed with prune.scope=layer, "
                       r"prune.multiple_of=1 and sparsity 0.3: it needs 103 of the 128 dimensions of mlp.0, which "
                       r"keeps 90; allowed: a fraction in \[0, 0.7031\]$"):
        vote.build_masks(scores, sparsity=0.3, scope="layer", min_keep=0.8)
    vote.build_masks(scores, sparsity=0.3, scope="layer", min_keep=90 / 128)  # the stated bound itself is fine
    with pytest.raises(DietError, match=r"^prune.min_keep: 0.6 is not allowed with prune.scope=global, "
                       r"prune.multiple_of=64 and sparsity 0.3: it reserves 256 dimensions over 2 groups, the "
                       r"budget keeps 179; allowed: a fraction in \[0, 0.5\]$"):
        vote.build_masks(scores, sparsity=0.3, scope="global", min_keep=0.6, multiple_of=64)
    vote.build_masks(scores, sparsity=0.3, scope="global", min_keep=0.5, multiple_of=64)
    with pytest.raises(DietError, match=r"^prune.multiple_of: 128 is not allowed with prune.scope=global and "
                       r"sparsity 0.9: one multiple per group \(256\) exceeds the budget of 26; allowed: a smaller"):
        vote.build_masks(scores, sparsity=0.9, scope="global", min_keep=0.0, multiple_of=128)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scope="model"), r"^prune.scope: 'model' is not allowed; allowed: layer, global$"),
    (dict(vote_method="veto"), r"^vote.method: 'veto' is not allowed; allowed: majority, union, intersection, "
                               r"vote_count, mean_score, max_score, borda$"),
    (dict(min_keep=1.5), r"^prune.min_keep: 1.5 is not allowed; allowed: a fraction in \[0, 1\]"),
    (dict(min_keep=True), r"^prune.min_keep: True is not allowed"),
    (dict(multiple_of=0), r"^prune.multiple_of: 0 is not allowed; allowed: an integer >= 1$"),
    (dict(multiple_of=8.0), r"^prune.multiple_of: 8.0 is not allowed"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(DietError, match=message):
        vote.build_masks(random_scores(), sparsity=0.2, **kwargs)


def test_an_empty_vote_is_a_clear_error():
    per_task = {t: {"mlp.0": torch.tensor([float(i == j) for j in range(8)])} for i, t in enumerate("abc")}
    with pytest.raises(DietError, match=r"^vote.method: 'intersection' keeps no dimension of mlp.0 \(needs 3 of 3"):
        vote.build_masks(per_task, sparsity=0.9, vote_method="intersection", exact_budget=False, min_keep=0.0)
    with pytest.raises(DietError, match=r"^vote.threshold: 1.0 keeps no dimension of any group \(needs 3 of 3"):
        vote.build_masks(per_task, sparsity=0.9, scope="global", threshold=1.0, exact_budget=False, min_keep=0.0)
