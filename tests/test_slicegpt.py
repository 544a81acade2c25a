"""SliceGPT (method=slicegpt) and the task-voted slicing of one pooled rotation (prune.rotate=pca): the rotated model
computes the dense one, its matrices are the formulas' (a naive float64 PCA, shortcut = B_in^T B_out sliced), slicing
beats the unrotated hidden mask of the same width, the checkpoint round-trips through load_pruned, and the pipeline
keys behave (one DietError line for what does not go together)."""
import copy
import math

import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file
from test_prune import FAMILIES, logits, tiny_model

from diet import DietError, methods, profile, scoring, targets, vote
from diet.models.adapters import get_adapter
from diet.prune import count_params, load_pruned, prune_model, save_pruned
from diet.tasks.text import calibration_set, token_rows
from diet.transforms import rotation

VOCAB_IDS = 128


def batches(seed=2, rows=6, width=16, batch_size=3):
    """Right-padded random token batches (rows of different lengths), as the profile stage builds them."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [width - (i * 3) % 7 for i in range(rows)]
    encoded = [torch.randint(0, VOCAB_IDS, (n,), generator=generator).tolist() for n in lengths]

    class Pad:
        pad_token_id = 0
    return profile.batch_rows(Pad(), encoded, batch_size)


def padded_logits(model, batch):
    with torch.inference_mode():
        return model(**batch).logits[batch["attention_mask"].bool()]


@pytest.mark.parametrize("pooled", [False, True], ids=["slicegpt", "pca"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_rotated_model_computes_the_dense_one(family, pooled):
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    adapter = get_adapter(model)
    rotation.rotate_on(model, adapter, [batches()], pooled=pooled)
    check = batches(seed=5)[0]
    torch.testing.assert_close(padded_logits(model, check), padded_logits(dense, check), atol=1e-4, rtol=1e-4)
    # keeping every direction through the hidden target's slicing changes nothing either
    prune_model(model, adapter, {"hidden": torch.ones(64, dtype=torch.bool)}, "hidden")
    torch.testing.assert_close(padded_logits(model, check), padded_logits(dense, check), atol=1e-4, rtol=1e-4)
    record = model.config.rotated_residual
    tied = family in ("gemma2", "gemma3_text", "llama_tied")
    assert record["embedding"] == ("original" if tied else "rotated")
    if family.startswith("gemma"):  # post norms: o_proj and down_proj stay unrotated, maps after them
        assert record["post_maps"] == {"attention": [0, 1], "mlp": [0]}
    else:
        assert record["post_maps"] == {"attention": [], "mlp": []}


def zeroed_directions(model, adapter, removed):
    """The reference for slicing a rotated model: the full-width rotated model with the removed directions of every
    rotated stream zeroed where they are written (embedding columns, writer rows, post-map and shortcut columns)."""
    record = model.config.rotated_residual
    layers = adapter.decoder_layers(model)
    start_rotated = record["embedding"] == "rotated"
    with torch.no_grad():
        if start_rotated:
            adapter.embedding(model).weight[:, removed] = 0
        for i, layer in enumerate(layers):
            out_rot = i < len(layers) - 1
            _, _, _, o = adapter.attention_projections(layer)
            down = adapter.mlp_projections(layer)[2]
            for post_map, writer, rotated in ((layer.attn_post_map, o, True), (layer.mlp_post_map, down, out_rot)):
                if not rotated:
                    continue
                if post_map is not None:
                    post_map[:, removed] = 0
                else:
                    writer.weight[removed] = 0
                    if writer.bias is not None:
                        writer.bias[removed] = 0
            if layer.attn_shortcut is not None:
                layer.attn_shortcut[:, removed] = 0
            elif i > 0 or start_rotated:
                layer.attn_shortcut = torch.nn.Parameter(torch.diag((~removed).float()))
            if layer.mlp_shortcut is not None and out_rot:
                layer.mlp_shortcut[:, removed] = 0
            elif layer.mlp_shortcut is None:
                layer.mlp_shortcut = torch.nn.Parameter(torch.diag((~removed).float()))
    return model


@pytest.mark.parametrize("pooled", [False, True], ids=["slicegpt", "pca"])
@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_equals_the_rotated_model_with_those_directions_zeroed(family, pooled):
    """Exact, RMS norms and eps included: the kept stream is carried times sqrt(k/d) (every c is checked here)."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    rotation.rotate_on(model, adapter, [batches()], pooled=pooled)
    keep = torch.ones(64, dtype=torch.bool)
    keep[torch.randperm(64, generator=torch.Generator().manual_seed(3))[:20]] = False
    reference = zeroed_directions(copy.deepcopy(model), adapter, ~keep)
    before, predicted = count_params(model), rotation.decoder_params_at(model, adapter, 44)
    prune_model(model, adapter, {"hidden": keep}, "hidden")
    check = batches(seed=5)[0]
    torch.testing.assert_close(padded_logits(model, check), padded_logits(reference, check), atol=1e-5, rtol=1e-4)
    assert count_params(model) < before
    assert predicted == sum(count_params(layer) for layer in adapter.decoder_layers(model))


def naive_moment(rows):
    """sum over rows of x x^T, element by element in float64 from Python lists."""
    d = len(rows[0])
    H = [[0.0] * d for _ in range(d)]
    for x in rows:
        for a in range(d):
            xa = x[a]
            for b in range(d):
                H[a][b] += xa * x[b]
    return torch.tensor(H, dtype=torch.float64)


def test_bases_and_shortcuts_are_the_formulas():
    """Each basis is the eigenvectors (descending) of the damped second moment of that point's non-padding
    activations; a shortcut is B_in^T B_out restricted to the kept directions; a writer is c B^T W."""
    dense = tiny_model("llama")
    adapter = get_adapter(dense)
    calib = batches()
    captured = {}   # the streams, captured on the dense model by plain hooks
    layers = adapter.decoder_layers(dense)
    hooks = [layers[1].register_forward_pre_hook(lambda m, a: captured.setdefault("in.1", []).append(a[0])),
             layers[0].post_attention_layernorm.register_forward_pre_hook(
                 lambda m, a: captured.setdefault("mid.0", []).append(a[0]))]
    for batch in calib:
        with torch.inference_mode():
            dense(**batch)
    for h in hooks:
        h.remove()
    naive = {}
    for point, xs in captured.items():
        rows = [x.tolist() for b, batch in zip(xs, calib) for x, keep in zip(b.reshape(-1, 64).double(),
                                                                               batch["attention_mask"].reshape(-1))
                if keep]
        H = naive_moment(rows)
        H += 0.01 * torch.diagonal(H).mean() * torch.eye(64, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(H)
        naive[point] = vectors[:, torch.argsort(values, descending=True)]

    moments = rotation.moments_of(dense, adapter, [calib], start_rotated=True)
    ins, mids = rotation.bases(moments, 2, start_rotated=True, pooled=False)
    for point, basis in (("in.1", ins[1]), ("mid.0", mids[0])):
        H = moments[point] + 0.01 * moments[point].diagonal().mean() * torch.eye(64, dtype=torch.float64)
        torch.testing.assert_close(rotation.pca_basis(moments[point])[0],
                                   torch.linalg.eigvalsh(H).flip(0), atol=1e-9, rtol=1e-9)
        signs = torch.sign((basis * naive[point]).sum(dim=0))  # eigenvectors are defined up to sign
        torch.testing.assert_close(basis * signs, naive[point], atol=1e-7, rtol=0)

    model = copy.deepcopy(dense)
    rotation.rotate(model, adapter, ins, mids)
    keep = torch.tensor([0, 1, 2, 5, 7, 11] + list(range(20, 62)))
    o_proj = adapter.attention_projections(layers[0])[3].weight.detach().double()
    rotation.slice_rotated(model, adapter, keep)
    layer0 = adapter.decoder_layers(model)[0]
    expected = (mids[0].t() @ ins[1])[keep][:, keep]
    torch.testing.assert_close(layer0.mlp_shortcut.double(), expected, atol=1e-6, rtol=0)
    expected = (ins[0].t() @ mids[0])[keep][:, keep]
    torch.testing.assert_close(layer0.attn_shortcut.double(), expected, atol=1e-6, rtol=0)
    c = math.sqrt(keep.numel() / 64)
    torch.testing.assert_close(adapter.attention_projections(layer0)[3].weight.double(),
                               c * (mids[0].t() @ o_proj)[keep], atol=1e-6, rtol=0)


def calibration_windows(tokenizer, n=8, length=64):
    rows = token_rows(calibration_set("pydoc", n, 0), tokenizer, max_length=length, n_samples=n, seed=0)
    return profile.batch_rows(tokenizer, rows, 4)


def relative_error(model, dense, calib):
    pruned = torch.cat([padded_logits(model, b) for b in calib])
    reference = torch.cat([padded_logits(dense, b) for b in calib])
    return ((pruned - reference).norm() / reference.norm()).item()


def test_slicegpt_at_25_percent_beats_the_unrotated_hidden_mask(tiny_models):
    dense, tokenizer = tiny_models["tiny_llama"]
    adapter = get_adapter(dense)
    calib = calibration_windows(tokenizer)
    hidden = targets.get("hidden", sparsity=0.25)
    rules = vote.Rules(scope="layer", min_keep=0.125, multiple_of=1, vote_method="majority", threshold=None,
                       exact_budget=True)

    plain = copy.deepcopy(dense)
    stats = {"text": profile.collect(plain, adapter, calib, hidden)}
    scores = methods.activation_scores(hidden, plain, adapter, stats, scoring.SCORINGS["act_l2"], 0)
    plain_mask = hidden.vote(plain, adapter, scores, rules)[0]
    prune_model(plain, adapter, plain_mask, hidden)

    sliced = copy.deepcopy(dense)
    rotation.rotate_on(sliced, adapter, [calib], pooled=False)
    first = torch.zeros(64, dtype=torch.bool)
    first[:48] = True
    prune_model(sliced, adapter, {"hidden": first}, hidden)

    assert int(plain_mask["hidden"].sum()) == 48
    assert adapter.decoder_layers(sliced)[0].self_attn.q_proj.in_features == 48  # 75% of the residual width
    assert adapter.embedding(sliced).weight.shape[1] == 48
    rotated, unrotated = relative_error(sliced, dense, calib), relative_error(plain, dense, calib)
    print(f"relative logit error at 25%: slicegpt {rotated:.3f}, unrotated hidden {unrotated:.3f}")
    assert rotated < unrotated


@pytest.mark.parametrize("family, pooled", [("llama", False), ("gemma3_text", False), ("gemma2", True)])
def test_the_sliced_checkpoint_round_trips_through_load_pruned(family, pooled, tmp_path):
    """Untied Llama (rotated embedding, k x k shortcuts), tied Gemma-3 (original embedding, post maps), Gemma-2 in
    one pooled basis (shortcuts only into and out of the original basis)."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    rotation.rotate_on(model, adapter, [batches()], pooled=pooled)
    keep = torch.zeros(64, dtype=torch.bool)
    keep[:48] = True
    prune_model(model, adapter, {"hidden": keep}, "hidden")
    save_pruned(model, None, tmp_path / "pruned")
    loaded, _ = load_pruned(tmp_path / "pruned", attn_implementation="eager")
    check = batches(seed=5)[0]
    torch.testing.assert_close(padded_logits(loaded, check), padded_logits(model, check), atol=0, rtol=0)
    assert count_params(loaded) == count_params(model)
    assert loaded.config.rotated_residual["kept"] == 48


SLICEGPT_RUN = ["model=tiny_llama", "method=slicegpt", "calib.text=pydoc", "calib.n_samples=8", "calib.max_length=64",
                *QUIET]


def test_method_slicegpt_runs_saves_and_evaluates_again_through_diet(diet_in_process, tmp_path, tiny_models):
    from diet import evaluate
    from diet.tasks import evaluation_tasks, load_tasks

    result = diet_in_process(*SLICEGPT_RUN, "sparsity=0.25", "prune.save=true", "prune.multiple_of=8",
                             "eval.dense=true")
    assert result.method == "slicegpt" and result.target == "hidden"
    assert result.sparsity["achieved"] == 0.25   # round(0.75 x 64) = 48, a multiple of 8
    mask = load_file(tmp_path / "run" / "mask.safetensors")["hidden"]
    assert mask[:48].all() and not mask[48:].any()   # the first 48 principal directions of every point
    assert result.params["pruned"] < result.params["dense"] == 123200  # the model as loaded, not as rotated
    model, tokenizer = load_pruned(tmp_path / "run" / "pruned_model")
    assert adapter_width(model) == 48
    tasks = load_tasks(result.eval_tasks, data_dir=str(tmp_path / "cache" / "data"))
    again = evaluate.evaluate(model, tokenizer, evaluation_tasks(tasks), device="cpu", batch_size=8, limit=8,
                              bootstrap_iters=0)["metrics"]
    assert {t: m["acc"] for t, m in again.items()} == {t: m["acc"] for t, m in result.metrics.items()}
    dense, dense_tokenizer = tiny_models["tiny_llama"]   # eval.dense evaluates the model as loaded, not as rotated
    dense_again = evaluate.evaluate(dense, dense_tokenizer, evaluation_tasks(tasks), device="cpu", batch_size=8,
                                    limit=8, bootstrap_iters=0)["metrics"]
    assert {t: m["acc"] for t, m in dense_again.items()} == {t: m["acc"] for t, m in result.dense_metrics.items()}


def adapter_width(model):
    return get_adapter(model).decoder_layers(model)[0].self_attn.q_proj.in_features


def test_slicegpt_rounds_down_and_budgets_parameters(diet_in_process, tmp_path):
    """round(0.7 x 64) = 45 -> 40 with prune.multiple_of=8 (the reference's rounding); prune.budget=params counts the
    shortcut matrices against the unrotated decoder."""
    result = diet_in_process(*SLICEGPT_RUN, "sparsity=0.3", "prune.multiple_of=8", "eval.limit=1", run_dir="dims")
    assert result.sparsity["achieved"] == 1 - 40 / 64
    result = diet_in_process(*SLICEGPT_RUN, "sparsity=0.1", "prune.budget=params", "prune.multiple_of=8",
                             "method.interleave=false",
                             "eval.limit=1", run_dir="params")
    params = result.params
    assert params["decoder_pruned"] <= 0.9 * params["decoder_dense"]
    kept = round((1 - result.sparsity["achieved"]) * 64)
    assert kept % 8 == 0 and kept < 64


def test_a_parameter_budget_the_widths_overshoot_is_one_warning_line(diet_in_process, caplog):
    """With prune.multiple_of=32 the tiny Llama's widths are 64 and 32: a budget of 0.1 keeps 32 directions and
    removes far more; the warning says how much, and what the next width would have removed."""
    result = diet_in_process(*SLICEGPT_RUN, "sparsity=0.1", "prune.budget=params", "prune.multiple_of=32",
                             "method.interleave=false", "eval.limit=1")
    removed = result.sparsity["params"]["decoder"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "directions kept" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"prune.budget=params: 32 of 64 directions kept, removing {removed:.3f} of the decoder's parameters for 0.1 "
        "requested; 64 would remove -")
    assert removed > 0.15


VOTED = ["model=tiny_llama", "prune.target=hidden", "sparsity=0.25", *QUIET, "eval.limit=2"]


def test_task_voted_slicing_in_the_pooled_rotated_basis(diet_in_process, tmp_path):
    """prune.rotate=pca: each task ranks the pooled principal directions by its own activations; the masks are not
    those of the unrotated hidden target; the width is right; intersection without the exact budget is the AND of
    the task masks."""
    rotated = diet_in_process(*VOTED, "prune.rotate=pca", "vote.method=intersection", "vote.exact_budget=false",
                              run_dir="rotated")
    plain = diet_in_process(*VOTED, "vote.method=intersection", "vote.exact_budget=false", run_dir="plain")
    masks = load_file(tmp_path / "rotated" / "mask.safetensors")
    plain_masks = load_file(tmp_path / "plain" / "mask.safetensors")
    task_masks = [m for k, m in masks.items() if k.startswith("task.")]
    assert len(task_masks) == 4 and all(int(m.sum()) == 48 for m in task_masks)
    assert torch.equal(masks["hidden"], torch.stack(task_masks).all(dim=0))
    assert not all(torch.equal(masks[k], plain_masks[k]) for k in masks)
    assert rotated.sparsity["achieved"] == 1 - int(masks["hidden"].sum()) / 64
    exact = diet_in_process(*VOTED, "prune.rotate=pca", run_dir="exact")
    assert exact.sparsity["achieved"] == 0.25


@pytest.mark.parametrize("overrides, message", [
    (["prune.rotate=svd"], "prune.rotate: 'svd' is not allowed; allowed: none, pca"),
    (["prune.rotate=pca"], "prune.rotate: 'pca' is not allowed with prune.target=mlp"),
    (["prune.rotate=pca", "prune.target=hidden", "method=random"], "prune.rotate: 'pca' is not allowed with "
                                                                    "method=random"),
    (["method=slicegpt", "prune.rotate=pca"], "prune.rotate: 'pca' is not allowed with method=slicegpt"),
    (["method=slicegpt", "prune.target=mlp"], "method: 'slicegpt' is not allowed"),
    (["method=slicegpt", "model.offload=true"], "model.offload: method=slicegpt is not allowed"),
])
def test_what_does_not_go_together_is_one_line(compose_cfg, overrides, message):
    from diet import config

    with pytest.raises(DietError) as err:
        config.plan(compose_cfg("model=tiny_llama", *overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_interleaved_rotation_at_full_width_is_the_dense_model(family):
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    rotation.rotate_interleaved(model, get_adapter(model), batches(), 64)
    check = batches(seed=5)[0]
    torch.testing.assert_close(padded_logits(model, check), padded_logits(dense, check), atol=1e-4, rtol=1e-4)


def test_interleaved_bases_come_from_the_already_cut_signals():
    """method.interleave (the reference's rotate_and_slice): layer 0's mid basis is the PCA of the stream between
    its attention and MLP when its input is already cut to the first k directions of the embedding's basis."""
    dense = tiny_model("llama")
    adapter = get_adapter(dense)
    calib, k = batches(rows=16, width=24, batch_size=8), 40   # more distinct tokens than dimensions: no degenerate
    #                                                            eigenvalues (repeated tokens repeat embedding rows)
    model = copy.deepcopy(dense)
    rotation.rotate_interleaved(model, adapter, calib, k)
    b0 = rotation.pca_basis(rotation.moments_of(dense, adapter, [calib], start_rotated=True)["in.0"])[1].float()
    mids = []
    hook = dense.model.layers[0].post_attention_layernorm.register_forward_pre_hook(lambda m, a: mids.append(a[0]))
    for batch in calib:
        with torch.inference_mode():
            embeds = dense.model.embed_tokens(batch["input_ids"])
            cut = embeds @ b0[:, :k] @ b0[:, :k].t()     # the first k directions, in the original basis
            dense(inputs_embeds=cut, attention_mask=batch["attention_mask"])
    hook.remove()
    weights = [b["attention_mask"].reshape(-1) for b in calib]
    expected = rotation.pca_basis(rotation._moment(mids, weights))[1][:, :k]
    found = (b0.double() @ adapter.decoder_layers(model)[0].attn_shortcut.double())[:, :k]   # B_0 B_0^T B_mid
    signs = torch.sign((found * expected).sum(dim=0))
    torch.testing.assert_close(found * signs, expected, atol=1e-5, rtol=0)
    non_interleaved = rotation.bases(rotation.moments_of(dense, adapter, [calib], start_rotated=True), 2,
                                     start_rotated=True, pooled=False)[1][0][:, :k]
    assert (non_interleaved.abs() - expected.abs()).abs().max() > 1e-2   # not the dense model's basis


def test_flops_count_what_a_rotated_layer_multiplies():
    """eval.speed's FLOP ratio: a sliced Gemma layer's shortcut matrices, post maps and full-width writers count."""
    from diet import speed

    model = tiny_model("gemma3_text")
    adapter = get_adapter(model)
    rotation.rotate_on(model, adapter, [batches()], pooled=False)
    keep = torch.zeros(64, dtype=torch.bool)
    keep[:48] = True
    prune_model(model, adapter, {"hidden": keep}, "hidden")
    shape = speed.decoder_shape(model, adapter)
    macs = 0
    for layer, ly in zip(adapter.decoder_layers(model), shape.layers):
        linears = (*adapter.attention_projections(layer), *adapter.mlp_projections(layer))
        macs += sum(lin.in_features * lin.out_features for lin in linears)
        macs += sum(p.numel() for name in adapter.ROTATED_PARAMETERS if (p := getattr(layer, name)) is not None)
    attention = sum(2 * 2 * ly.head_dim * ly.q_heads for ly in shape.layers)   # one token attends to itself
    assert speed.forward_flops(shape, 1, 1, with_head=False) - attention == 2 * macs
