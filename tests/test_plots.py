"""What the plots draw: the series the report's and the run's plotting functions hand to matplotlib, no model runs."""
import math

import pytest
import torch

from diet import mask_plots
from diet.report.collect import Run
from diet.report import plots
from diet.report.plots import panels
from diet.report.tables import build_table

NON_VOTING = ("generic", "magnitude", "per_task", "random")


def fake_run(method, sparsity, achieved, average, seed=0, **settings):
    """One results.json as collect reads it; `settings` are flat config keys with `__` for the dots."""
    flat = {k.replace("__", "."): v for k, v in settings.items()}
    config = {"model.name": "m", "method.name": method, "prune.target": "mlp", "sparsity": sparsity, "seed": seed,
              "vote.method": "majority", "calib.source": "task", "scoring.name": "act_l2", **flat}
    return Run(where=f"{method}/{sparsity}/{seed}/{sorted(flat.items())}", model="m", method=method, target="mlp",
               sparsity=sparsity, achieved=achieved, params_ratio=None, scores={"t": average}, metric={"t": "acc"},
               stderr={"t": None}, average=average, dense=None, dense_average=None, settings=config,
               swept=set(flat) | {"sparsity", "method.name"})


def vote_sweep():
    """method=diet,generic,magnitude,per_task,random x vote.method=majority,union x sparsity=0.2,0.4 (two seeds)."""
    runs = []
    for sparsity, achieved in ((0.2, 0.1875), (0.4, 0.375)):
        for seed in (0, 1):
            for vote in ("majority", "union"):
                runs.append(fake_run("diet", sparsity, achieved, 0.8 - sparsity / 2 + (vote == "union") * 0.05
                                     + seed * 0.01, seed, vote__method=vote))
                for i, method in enumerate(NON_VOTING):
                    runs.append(fake_run(method, sparsity, achieved, 0.3 + 0.1 * i - sparsity / 2 + seed * 0.02,
                                         seed, vote__method=vote))
    return build_table(runs)[3]


def test_methods_that_do_not_vote_are_reference_lines_against_vote_method():
    (panel,) = panels(vote_sweep(), "vote.method", "vote.method")
    assert panel.tick_labels == ["majority", "union", "(does not vote)"] and panel.categorical
    assert [line.label for line in panel.lines] == ["diet, sparsity=0.2", "diet, sparsity=0.4"]
    assert all(line.at == [0, 1] for line in panel.lines)
    # every non-voting method is one horizontal reference per sparsity, not a point at x = majority
    assert sorted((r.method, r.label) for r in panel.references) == sorted(
        (m, f"{m}, sparsity={s} (does not vote)") for m in NON_VOTING for s in ("0.2", "0.4"))
    generic = next(r for r in panel.references if r.label.startswith("generic, sparsity=0.2"))
    assert generic.y == pytest.approx(100 * (0.3 - 0.1 + 0.01))  # its runs at both vote.method values, pooled
    assert generic.group == panel.lines[0].group == "sparsity=0.2"  # drawn in diet@0.2's colour
    assert {r.at for r in panel.references} == {2}  # their points: a column of their own, not x = majority
    magnitude = next(r for r in panel.references if r.label.startswith("magnitude, sparsity=0.4"))
    assert magnitude.y == pytest.approx(generic.y)  # 21.0 both: offset so that neither hides the other
    assert magnitude.x != generic.x and abs(magnitude.x - 2) < 0.5 and abs(generic.x - 2) < 0.5
    random = next(r for r in panel.references if r.label.startswith("random, sparsity=0.2"))
    assert random.x == 2  # nothing at its height


def test_methods_that_do_not_vote_are_one_line_each_against_sparsity():
    (panel,) = panels(vote_sweep(), "sparsity", "sparsity")
    assert [line.label for line in panel.lines] == [
        "diet, vote.method=majority", "diet, vote.method=union", *NON_VOTING]  # no `generic, vote.method=union`
    assert not panel.references


def test_which_keys_a_method_ignores_come_from_the_method_registry():
    def row(method, **settings):
        return build_table([fake_run(method, 0.2, 0.1875, 0.5, **settings)])[3][0]

    assert [plots.ignores(row(m), "vote.method") for m in ("diet", *NON_VOTING)] == [False, True, True, True, True]
    assert plots.ignores(row("diet", calib__source="generic"), "vote.method")  # pooled: nothing to vote
    assert plots.ignores(row("shortgpt", calib__source="generic"), "calib.source")  # pooled either way
    assert not plots.ignores(row("shortgpt", calib__source="text"), "calib.source")  # its papers' calibration
    assert not plots.ignores(row("diet", calib__source="generic"), "calib.source")
    assert [plots.ignores(row(m), "scoring.name") for m in ("diet", "generic", "magnitude", "random")] == [
        False, False, True, True]
    assert plots.ignores(row("random"), "calib.n_samples") and not plots.ignores(row("generic"), "calib.n_samples")
    assert not plots.ignores(row("diet"), "sparsity") and not plots.ignores(row("some_future_method"), "vote.method")


def test_sparsity_axis_is_the_achieved_sparsity():
    runs = [fake_run("diet", s, a, 0.9 - s) for s, a in ((0.2, 0.1875), (0.3, 0.3125), (0.4, 0.375))]
    (panel,) = panels(build_table(runs)[3], "sparsity", "sparsity")
    assert panel.lines[0].at == panel.lines[0].x == [0.1875, 0.3125, 0.375]
    assert panel.ticks == [0.1875, 0.3125, 0.375] and panel.tick_labels == ["0.1875", "0.3125", "0.375"]
    assert panel.xlabel == "achieved sparsity" and not panel.offset


def test_equal_points_are_offset_so_none_hides_another():
    runs = []
    for s, a in ((0.2, 0.1875), (0.4, 0.375)):
        runs += [fake_run("diet", s, a, 0.7 - s, scoring__name="act_l1"),
                 fake_run("diet", s, a, 0.7 - s, scoring__name="act_max"),  # exactly act_l1's numbers
                 fake_run("diet", s, a, 0.2, scoring__name="act_l2")]
    (panel,) = panels(build_table(runs)[3], "sparsity", "sparsity")
    lines = {line.label: line for line in panel.lines}
    assert set(lines) == {"scoring=act_l1", "scoring=act_l2", "scoring=act_max"}
    l1, lmax, l2 = lines["scoring=act_l1"], lines["scoring=act_max"], lines["scoring=act_l2"]
    assert l1.y == lmax.y and l1.at == lmax.at == [0.1875, 0.375]
    for a, b, at in zip(l1.x, lmax.x, l1.at):
        assert a != b and abs(a - at) < 0.02 and abs(b - at) < 0.02  # apart, but each still by its own x
    assert l2.x == l2.at  # nothing coincides with it: drawn where it is
    assert panel.offset and "offset" in panel.xlabel


def test_vote_method_figure_draws_the_references_as_horizontal_lines_and_keeps_its_legend_off_the_axes():
    rows = vote_sweep()
    (panel,) = panels(rows, "vote.method", "vote.method")
    ax, = drawn(plots.figure(rows, "vote.method", "vote.method"))
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [line.label for line in panel.lines] + [r.label for r in panel.references]
    horizontal = [line for line in ax.get_lines() if line.get_transform() is ax.get_yaxis_transform()]
    assert sorted(line.get_ydata()[0] for line in horizontal) == pytest.approx(sorted(r.y for r in panel.references))
    assert not overlaps(ax.get_legend().get_window_extent(), ax.get_window_extent())


# ----------------------------------------------------------------------------------------------------- mask plots

def figure(name, *args):
    """The figure `name` of mask_plots.figures(*args), the later ones never built."""
    return next(fig for n, fig in mask_plots.figures(*args) if n == name)


def drawn(fig):
    """The axes of a figure after drawing (extents in display pixels)."""
    fig.canvas.draw()
    return fig.axes


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_hidden_scores_with_two_outliers_spread_over_many_bins():
    """Gemma-3 270M's hidden scores: two dimensions far above the rest put all others into one linear bin."""
    score = torch.cat([torch.linspace(1.0, 2.0, 638), torch.tensor([900.0, 1000.0])])
    keep = torch.zeros(640, dtype=torch.bool)
    keep[::2] = True
    data = mask_plots.score_histogram(score, keep)
    assert sum(data["kept"]) == 320 and sum(data["removed"]) == 320
    filled = [k + r for k, r in zip(data["kept"], data["removed"]) if k + r]
    assert len(filled) >= 5 and max(filled) < 320  # the bulk spans several bars, none holds half the dimensions
    ratios = [b / a for a, b in zip(data["edges"], data["edges"][1:])]
    assert data["log"] and max(ratios) == pytest.approx(min(ratios), rel=1e-6)  # log-spaced bins
    fig = figure("kept_by_score.png", {"hidden": keep}, {}, {}, {"hidden": score})
    assert fig.axes[0].get_xscale() == "log"


def test_score_histogram_of_equal_scores_stays_linear():
    data = mask_plots.score_histogram(torch.ones(8), torch.tensor([True, False] * 4))
    assert not data["log"] and sum(data["kept"]) == 4 and sum(data["removed"]) == 4


def test_kept_per_layer_legend_covers_no_bar():
    masks = {f"mlp.{i}": torch.arange(2048) < 1408 for i in range(18)}  # Gemma-3 270M at 0.3125: every bar full
    ax, = drawn(figure("kept_per_layer.png", masks, {}, {}, None))
    assert mask_plots.kept_per_layer(masks, "mlp") == (list(range(18)), [1408] * 18, [640] * 18)
    legend = ax.get_legend().get_window_extent()
    bars = [patch.get_window_extent() for patch in ax.patches]
    assert len(bars) == 36 and not any(overlaps(legend, bar) for bar in bars)


def test_vote_histogram_counts_each_target_apart_in_its_own_unit():
    gen = torch.Generator().manual_seed(0)
    votes = {**{f"mlp.{i}": torch.randint(0, 5, (2048,), generator=gen) for i in range(18)},
             **{f"heads.{i}": torch.tensor([4, 4, 2, 0]) for i in range(18)}}
    panels_ = mask_plots.vote_histograms(votes, 4)
    assert [target for target, _ in panels_] == ["mlp", "heads"]
    heads = dict(panels_)["heads"]
    assert heads == [18, 0, 18, 0, 36] and sum(dict(panels_)["mlp"]) == 18 * 2048
    mlp_ax, heads_ax = drawn(figure("vote_histogram.png", {}, {t: {} for t in "abcd"}, votes, None))
    assert (mlp_ax.get_ylabel(), heads_ax.get_ylabel()) == ("FFN neurons", "attention heads")
    assert heads_ax.get_xlabel() == "tasks keeping the head"
    assert [p.get_height() for p in heads_ax.patches] == heads


def test_heads_vote_histogram_says_heads():
    votes = {f"heads.{i}": torch.tensor([3, 1, 2, 0]) for i in range(4)}
    ax, = drawn(figure("vote_histogram.png", {}, {t: {} for t in "abc"}, votes, None))
    assert ax.get_ylabel() == "attention heads" and ax.get_xlabel() == "tasks keeping the head"
    assert [p.get_height() for p in ax.patches] == [4, 4, 4, 4]
    assert not math.isnan(ax.get_ylim()[1])


def test_the_speed_plot_puts_each_method_at_its_measured_speed_up_and_joins_the_pareto_front(tmp_path):
    runs = []
    for method, speedup, average in (("diet", 1.2, 0.8), ("shortgpt", 1.5, 0.6), ("random", 1.2, 0.5),
                                     ("flap", 1.1, 0.85)):
        for seed in (0, 1):
            run = fake_run(method, 0.2, 0.2, average + 0.01 * seed, seed)
            run.speedup = speedup + 0.02 * seed
            runs.append(run)
    runs.append(fake_run("magnitude", 0.2, 0.2, 0.9))  # no speed measured: not drawn
    rows = build_table(runs)[3]
    points = {name.split()[0]: rest for name, *rest in plots.speed_points(rows)["m"]}
    assert set(points) == {"diet", "shortgpt", "random", "flap"}
    assert points["diet"][:2] == pytest.approx([1.21, 80.5])  # means over the seeds, accuracy in %
    assert {m for m, p in points.items() if p[3]} == {"diet", "shortgpt", "flap"}  # random: diet is faster, better
    assert plots.plot_speed(rows, tmp_path / "speed.png") == tmp_path / "speed.png"
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_the_speed_plot_draws_each_method_once_across_sparsities_with_only_the_settings_that_tell_rows_apart():
    runs = []
    for sparsity, speedup in ((0.2, 1.1), (0.4, 1.3)):
        for method, average, settings in (("diet", 0.8, {}), ("flap", 0.6, {"method__metric": "WIFV"}),
                                          ("flap", 0.5, {"method__metric": "IFV"}),
                                          ("shortgpt", 0.4, {"method__metric": None})):
            run = fake_run(method, sparsity, sparsity, average - sparsity / 10, **settings)
            run.speedup = speedup + (0.1 if method == "shortgpt" else 0)
            runs.append(run)
    rows = build_table(runs)[3]
    points = plots.speed_points(rows)["m"]
    assert sorted({p[0] for p in points}) == ["diet mlp", "flap mlp (method.metric=IFV)",
                                              "flap mlp (method.metric=WIFV)", "shortgpt mlp"]
    ax, = drawn(plots.speed_figure({"m": points}))
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == sorted({p[0] for p in points} | {"Pareto front"})  # one entry per series
    diet, = [bars.lines[0] for bars in ax.containers if bars.get_label() == "diet mlp"]
    assert list(diet.get_xdata()) == [1.1, 1.3] and list(diet.get_ydata()) == pytest.approx([78.0, 76.0])
    assert sorted(t.get_text() for t in ax.texts) == ["0.2"] * 4 + ["0.4"] * 4
    plots._pyplot().close("all")
