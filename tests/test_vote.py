import itertools

import pytest
import torch

from diet import DietError, vote


def reference_merge(masks, scores, sparsity, threshold, exact_budget):
    """Plain-Python restatement of the documented rule, one dimension at a time."""
    tasks = sorted(masks)
    n = len(masks[tasks[0]])
    votes = [sum(bool(masks[t][i]) for t in tasks) for i in range(n)]
    need = len(tasks) // 2 + 1 if threshold is None else max(1, -(-threshold * len(tasks) // 1))
    if not exact_budget:
        return [v >= need for v in votes]
    mean = [sum(scores[t][i] / (sum(scores[t]) / n) for t in tasks) / len(tasks) for i in range(n)]
    keep = max(1, n - int(sparsity * n + 0.5))
    order = sorted(range(n), key=lambda i: (-votes[i], -mean[i], i))
    return [i in set(order[:keep]) for i in range(n)]


def test_top_k_keeps_exactly_k_and_breaks_ties_by_lower_index():
    score = torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0])
    assert vote.top_k_mask(score, 2).tolist() == [False, True, True, False, False]
    assert int(vote.top_k_mask(torch.rand(97), vote.kept_count(97, 0.3)).sum()) == 97 - 29


@pytest.mark.parametrize("sparsity,width,kept", [(0.0, 10, 10), (0.2, 10, 8), (0.25, 10, 7), (0.5, 7, 3), (0.99, 4, 1)])
def test_kept_count_rounds_the_removed_count(sparsity, width, kept):
    assert vote.kept_count(width, sparsity) == kept


@pytest.mark.parametrize("threshold,exact_budget", [(None, True), (None, False), (1.0, False), (0.2, False),
                                                    (1.0, True), (0.5, True)])
def test_merge_matches_reference(threshold, exact_budget):
    generator = torch.Generator().manual_seed(3)
    tasks = ["a", "b", "c", "d", "e"]
    scores = {t: {"g": torch.rand(40, generator=generator).double()} for t in tasks}
    per_task = {t: vote.task_masks(scores[t], 0.3) for t in tasks}
    merged, votes = vote.merge(per_task, scores, 0.3, threshold, exact_budget)
    want = reference_merge({t: per_task[t]["g"].tolist() for t in tasks},
                           {t: scores[t]["g"].tolist() for t in tasks}, 0.3, threshold, exact_budget)
    assert merged["g"].tolist() == want
    assert votes["g"].tolist() == [sum(per_task[t]["g"][i].item() for t in tasks) for i in range(40)]
    if exact_budget:
        assert int(merged["g"].sum()) == 28


def test_exact_budget_prefers_votes_then_mean_score():
    per_task = {"a": {"g": torch.tensor([1, 1, 0, 0], dtype=torch.bool)},
                "b": {"g": torch.tensor([1, 0, 1, 0], dtype=torch.bool)},
                "c": {"g": torch.tensor([1, 0, 0, 1], dtype=torch.bool)}}
    scores = {"a": {"g": torch.tensor([1.0, 1.0, 1.0, 1.0])}, "b": {"g": torch.tensor([1.0, 1.0, 5.0, 1.0])},
              "c": {"g": torch.tensor([1.0, 1.0, 1.0, 1.0])}}
    merged, votes = vote.merge(per_task, scores, sparsity=0.5)
    assert votes["g"].tolist() == [3, 1, 1, 1]
    assert merged["g"].tolist() == [True, False, True, False]  # 3 votes, then the highest mean normalised score


def test_threshold_nobody_meets_is_a_clear_error():
    per_task = {t: {"g": torch.tensor([i == j for j in range(3)])} for i, t in enumerate("abc")}
    scores = {t: {"g": torch.ones(3)} for t in "abc"}
    with pytest.raises(DietError, match=r"vote.threshold: 1.0 keeps no dimension of g \(needs 3 of 3"):
        vote.merge(per_task, scores, 0.6, threshold=1.0, exact_budget=False)


def test_random_masks_are_seeded():
    widths = {"mlp.0": 50, "mlp.1": 50}
    a, b, c = (vote.random_masks(widths, 0.2, s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in widths)
    assert not all(torch.equal(a[k], c[k]) for k in widths)
    assert vote.achieved_sparsity(a) == pytest.approx(0.2)


def test_scores_from_statistics():
    stats = {"mlp.1": {"sum_abs": torch.tensor([2.0, 4.0]), "sum_sq": torch.tensor([8.0, 2.0]),
                       "max_abs": torch.tensor([3.0, 1.0]), "count": torch.tensor([2.0])},
             "mlp.0": {"sum_abs": torch.tensor([1.0, 1.0]), "sum_sq": torch.tensor([1.0, 1.0]),
                       "max_abs": torch.tensor([1.0, 1.0]), "count": torch.tensor([1.0])}}
    assert list(vote.group_scores(stats, "act_l1", "mlp")) == ["mlp.0", "mlp.1"]
    assert vote.group_scores(stats, "act_l1", "mlp")["mlp.1"].tolist() == [1.0, 2.0]
    assert vote.group_scores(stats, "act_l2", "mlp")["mlp.1"].tolist() == [2.0, 1.0]
    assert vote.group_scores(stats, "act_max", "mlp")["mlp.1"].tolist() == [3.0, 1.0]
    hidden = {f"hidden.{i}": s for i, s in enumerate(stats.values())}
    # mean of per-point scores normalised by their mean: ([2,1]/1.5 + [1,1]/1) / 2
    torch.testing.assert_close(vote.group_scores(hidden, "act_l2", "hidden")["hidden"],
                               torch.tensor([(2 / 1.5 + 1) / 2, (1 / 1.5 + 1) / 2]))
