"""Rotations of the residual stream into principal bases of its calibration activations, and slicing them.

Two transforms (registered in diet/transforms/__init__.py), both leaving the slicing to `prune.target=hidden`
(`slice_rotated`):

  slicegpt  SliceGPT (Ashkboos et al. 2024): one basis per residual point (each layer's input and the stream between
            its attention and its MLP) from the PCA of that point's activations; shortcut matrices carry the residual
            from one basis to the next (`residual @ B_in^T B_out`, k x k once sliced). `method.interleave=true`
            (default; the reference's `rotate_and_slice`, `rotate_interleaved`): layer by layer, each basis from the
            signals of the model whose earlier streams are already cut to their first k directions (the cut is
            represented at full width by zeroing what the removed directions receive, which slicing to the first
            k then computes exactly). `false` (its `rotate` + `slice_rotated_model`, `rotate`): every basis from
            the dense model in one pass, the rotated model exact at full width.
  pca       ours: one pooled basis for the whole stream (the PCA of every point's activations, each point's
            second-moment matrix divided by its trace so late layers with large activations do not decide alone);
            no shortcut matrices between layers, exact at full width. `prune.rotate=pca` (method=diet,
            prune.target=hidden): each task ranks the principal directions by its own activations along them.

What is computed (each step in float64, cast back to the weights' dtype once):
  PCA       per point, H = sum over non-padding tokens of x x^T, H += 0.01 * mean(diag(H)) * I (the reference's
            damping), eigh, eigenvectors in descending eigenvalue order (the columns of the basis B).
  fusion    every pre-norm (RMSNorm: x / rms(x) * (offset + w)) in front of a rotated stream gets unit scale and its
            scale goes into the columns of the projections it feeds.
  rotation  readers W <- W B; writers W <- B^T W (and bias); an untied embedding E <- E B.
  Gemma     o_proj and down_proj are followed by post norms, which normalise in the original basis: they stay
            unrotated, the post norm gets unit scale and a map diag(s) B (d x d, d x k once sliced) follows it:
            exact, at the cost of the map and of o_proj/down_proj keeping all d output rows (docs/literature.md).
  ends      the last layer writes the stream in the original basis at full width (its MLP shortcut is B_mid^T,
            k x d), so the final norm and the LM head stay as they are: the reference's default (its LM head is
            not sliced unless asked, and rotating a full-width stream changes nothing). The start: an untied
            model's embedding is rotated and sliced (E <- c E B_0[:, kept]) as the reference; a model whose LM head
            is tied to its embedding keeps the embedding too, and layer 0 reads the unrotated stream (its attention
            shortcut is B_mid, d x k), so nothing of the vocabulary matrix is copied or untied.

`config.rotated_residual` records the structure ({"embedding", "width", "kept", "shortcuts", "post_maps", and
"interleaved": k for the interleaved SliceGPT}) so `load_pruned` rebuilds it (`restore_rotated`); the layers'
extra matrices are ordinary parameters in model.safetensors.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math

import torch
from torch import nn

from diet import DietError
from diet.targets.base import keep_inputs, keep_norm, keep_outputs, set_parameter

log = logging.getLogger("diet")

DAMPING = 0.01      # the reference's pca_calc: 1% of the mean eigenvalue on the diagonal


# ------------------------------------------------------------------------------------------------ PCA

def pca_basis(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of a float64 second-moment matrix, damped as the reference."""
    H = H.double().clone()
    H.diagonal().add_(DAMPING * H.diagonal().mean())
    values, vectors = torch.linalg.eigh(H)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


def _points(model, adapter, start_rotated: bool) -> dict[str, nn.Module]:
    """Residual points -> the module whose first input is the stream there: `in.<i>` entering layer i (in.0 only
    when the embedding is rotated), `mid.<i>` entering its MLP's pre-norm."""
    points = {}
    for i, layer in enumerate(adapter.decoder_layers(model)):
        if i > 0 or start_rotated:
            points[f"in.{i}"] = layer
        points[f"mid.{i}"] = adapter.residual_norms(layer).pre[-1]
    return points


@torch.inference_mode()
def second_moments(model, adapter, batches, points: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Per point, sum over non-padding tokens of x x^T in float64 (on the point's device)."""
    from diet import profile  # profile imports the targets, which import this module

    state: dict = {}
    moments: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"])
            flat = x.reshape(-1, x.shape[-1]).double()
            weighted = flat * state["weights"].to(flat.device, torch.float64)[:, None]
            if name not in moments:
                moments[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
            moments[name].addmm_(weighted.t(), flat)
        return record

    handles = [module.register_forward_pre_hook(hook(name), with_kwargs=True) for name, module in points.items()]
    device = profile.input_device(model, adapter)
    try:
        for batch in batches:
            state["weights"] = batch["attention_mask"].reshape(-1)
            adapter.decoder(model)(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return moments


def moments_of(model, adapter, batch_sets, start_rotated: bool) -> dict[str, torch.Tensor]:
    """Second moments at every residual point (`_points`), summed over every list of token batches."""
    points = _points(model, adapter, start_rotated)
    total: dict[str, torch.Tensor] = {}
    for batches in batch_sets:
        for point, H in second_moments(model, adapter, batches, points).items():
            total[point] = H if point not in total else total[point] + H.to(total[point].device)
    return total


def depends_on(calib_sets: dict, settings: dict, mode: str) -> dict:
    """What a rotation depends on beyond the model: its mode, the calibration texts and how they are cut."""
    texts = {name: c.texts for name, c in sorted(calib_sets.items())}
    calib = settings["calib"]
    return {"mode": mode, "seed": settings["seed"],
            "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
            "calib": {k: calib.get(k) for k in ("n_samples", "max_length", "batch_size", "include_target", "text")},
            "windows": {name: c.windows for name, c in sorted(calib_sets.items())}, "damping": DAMPING}


# ------------------------------------------------------------------------------------------------ fuse and rotate

def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.double() @ b.to(a.device).double()


def _set(module: nn.Module, name: str, value64: torch.Tensor) -> None:
    old = getattr(module, name)
    set_parameter(module, name, value64.to(old.dtype))


def _unit_norm(norm: nn.Module, offset: float) -> torch.Tensor:
    """The norm's effective scale (offset + w) in float64; the norm then gets unit scale."""
    scale = offset + norm.weight.detach().double()
    with torch.no_grad():
        norm.weight.fill_(1.0 - offset)
    return scale


def _rotate_readers(readers, norm, basis, offset) -> None:
    scale = _unit_norm(norm, offset)
    for linear in readers:  # W diag(s) B
        _set(linear, "weight", _mm(linear.weight.detach().double() * scale.to(linear.weight.device), basis))


def _rotate_writer(linear: nn.Linear, basis: torch.Tensor) -> None:
    """W <- B^T W, b <- B^T b: the output expressed in the basis."""
    _set(linear, "weight", _mm(basis.t(), linear.weight.detach()))
    if linear.bias is not None:
        _set(linear, "bias", _mm(basis.t(), linear.bias.detach()[:, None])[:, 0])


def _parameter(like: torch.Tensor, value64: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value64.to(device=like.device, dtype=like.dtype), requires_grad=False)


def _new_record(model, adapter, start_rotated: bool) -> dict:
    return {"embedding": "rotated" if start_rotated else "original", "width": adapter.hidden_size(model),
            "shortcuts": {"attention": [], "mlp": []}, "post_maps": {"attention": [], "mlp": []}}


def _rotate_block_writer(adapter, layer, i, block: str, basis, record: dict) -> None:
    """The block's writer into `basis`: o_proj / down_proj rotated, or (after a post norm) the post map."""
    norms = adapter.residual_norms(layer)
    post = (norms.post[0] if block == "attention" else norms.post[-1]) if norms.post else None
    like = adapter.attention_projections(layer)[0].weight
    if post is not None:   # keep the post norm in the original basis; its scale and the rotation after it
        scale = _unit_norm(post, adapter.norm_offset)
        setattr(layer, f"{'attn' if block == 'attention' else 'mlp'}_post_map",
                _parameter(like, scale.to(basis.device)[:, None] * basis.double()))
        record["post_maps"][block].append(i)
    else:
        _rotate_writer(adapter.output_projection(layer, block), basis)


def _set_shortcut(layer, i, block: str, b_from, b_to, record: dict) -> None:
    """The residual from basis `b_from` into `b_to` (None: the original basis), or nothing when they are one."""
    if b_from is b_to:
        return
    if b_from is None:
        value = b_to.double()
    elif b_to is None:
        value = b_from.double().t()
    else:
        value = _mm(b_from.t(), b_to)
    like = layer.self_attn.o_proj.weight if hasattr(layer, "self_attn") else next(layer.parameters())
    setattr(layer, f"{'attn' if block == 'attention' else 'mlp'}_shortcut", _parameter(like, value))
    if i not in record["shortcuts"][block]:
        record["shortcuts"][block].append(i)


@torch.no_grad()
def rotate(model, adapter, in_bases: list, mid_bases: list) -> None:
    """Rotate in place: `in_bases[i]` is the basis of the stream entering layer i (None: the original basis, for
    layer 0 of a tied model and after the last layer), `mid_bases[i]` that between layer i's attention and MLP.
    Records `config.rotated_residual`."""
    layers = adapter.decoder_layers(model)
    offset = adapter.norm_offset
    record = _new_record(model, adapter, in_bases[0] is not None)
    for i, layer in enumerate(layers):
        adapter.make_rotated(layer)
        b_in, b_mid, b_out = in_bases[i], mid_bases[i], in_bases[i + 1]
        norms = adapter.residual_norms(layer)
        q, k, v, _ = adapter.attention_projections(layer)
        gate, up, _ = adapter.mlp_projections(layer)
        if b_in is not None:
            _rotate_readers([q, k, v], norms.pre[0], b_in, offset)
        _rotate_readers([gate, up], norms.pre[-1], b_mid, offset)
        _rotate_block_writer(adapter, layer, i, "attention", b_mid, record)
        if b_out is not None:
            _rotate_block_writer(adapter, layer, i, "mlp", b_out, record)
        _set_shortcut(layer, i, "attention", b_in, b_mid, record)
        _set_shortcut(layer, i, "mlp", b_mid, b_out, record)
    if in_bases[0] is not None:
        embedding = adapter.embedding(model)
        _set(embedding, "weight", _mm(embedding.weight.detach(), in_bases[0]))
    model.config.rotated_residual = record


def _moment(xs: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    H = None
    for x, w in zip(xs, weights):
        flat = x.reshape(-1, x.shape[-1]).double()
        part = (flat * w.to(flat.device, torch.float64)[:, None]).t() @ flat
        H = part if H is None else H + part
    return H


def _zero_removed(adapter, layer, block: str, k: int) -> None:
    """Zero what the block writes into the directions >= k of its (rotated) output stream: the writer's rows or
    the post map's columns, and the shortcut's columns (what slicing to the first k directions discards)."""
    prefix = "attn" if block == "attention" else "mlp"
    post_map = getattr(layer, f"{prefix}_post_map")
    if post_map is not None:
        post_map[:, k:] = 0
    else:
        writer = adapter.output_projection(layer, block)
        writer.weight[k:] = 0
        if writer.bias is not None:
            writer.bias[k:] = 0
    shortcut = getattr(layer, f"{prefix}_shortcut")
    if shortcut is not None:
        shortcut[:, k:] = 0


@torch.no_grad()
def rotate_interleaved(model, adapter, batches: list, k: int) -> None:
    """SliceGPT as the reference's `rotate_and_slice`: layer by layer, each basis from the PCA of the signals of
    the model whose earlier streams are already cut to their first k directions (represented at full width with
    the removed directions zeroed, which slicing to the first k then computes exactly). Not dense-equivalent unless
    k = d; the vote must keep the first k directions (method=slicegpt does)."""
    from diet import profile

    layers = adapter.decoder_layers(model)
    n, offset = len(layers), adapter.norm_offset
    start_rotated = not adapter.word_embeddings_tied(model)
    record = _new_record(model, adapter, start_rotated)
    calls = profile._layer_calls(model, adapter, batches)
    weights = [b["attention_mask"].reshape(-1) for b in batches]
    hidden = [call[0] for call in calls[0]]
    mask = torch.zeros(record["width"], dtype=torch.bool)
    mask[:k] = True

    def run(layer, i, capture=None):
        outputs, captured = [], []
        handle = None
        if capture is not None:
            handle = capture.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            for b, (_, args, kwargs) in enumerate(calls[i]):
                out = layer(hidden[b], *args, **kwargs)
                outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
        finally:
            if handle is not None:
                handle.remove()
        return outputs, captured

    b_in = None
    if start_rotated:
        b_in = pca_basis(_moment(hidden, weights))[1]
        embedding = adapter.embedding(model)
        _set(embedding, "weight", _mm(embedding.weight.detach(), b_in))
        embedding.weight[:, k:] = 0
        hidden = [(x.double() @ b_in.to(x.device) * mask.to(x.device)).to(x.dtype) for x in hidden]
    for i, layer in enumerate(layers):
        adapter.make_rotated(layer)
        norms = adapter.residual_norms(layer)
        q, kp, v, _ = adapter.attention_projections(layer)
        gate, up, _ = adapter.mlp_projections(layer)
        if b_in is not None:
            _rotate_readers([q, kp, v], norms.pre[0], b_in, offset)
        _set_shortcut(layer, i, "attention", b_in, None, record)     # for now: back into the original basis
        _, mids = run(layer, i, capture=norms.pre[-1])
        b_mid = pca_basis(_moment(mids, weights))[1]
        _set_shortcut(layer, i, "attention", b_in, b_mid, record)
        _rotate_block_writer(adapter, layer, i, "attention", b_mid, record)
        _zero_removed(adapter, layer, "attention", k)
        _rotate_readers([gate, up], norms.pre[-1], b_mid, offset)
        _set_shortcut(layer, i, "mlp", b_mid, None, record)           # the last layer's stays so
        if i == n - 1:
            break
        outputs, _ = run(layer, i)
        b_out = pca_basis(_moment(outputs, weights))[1]
        _set_shortcut(layer, i, "mlp", b_mid, b_out, record)
        _rotate_block_writer(adapter, layer, i, "mlp", b_out, record)
        _zero_removed(adapter, layer, "mlp", k)
        hidden = [(x.double() @ b_out.to(x.device) * mask.to(x.device)).to(x.dtype) for x in outputs]
        b_in = b_out
    record["interleaved"] = k
    model.config.rotated_residual = record


def bases(moments: dict[str, torch.Tensor], n_layers: int, start_rotated: bool, pooled: bool):
    """(in_bases, mid_bases) from the second moments: one per point, or one pooled basis for every point."""
    if pooled:
        H = sum((m / m.diagonal().sum().clamp_min(1e-300)).cpu() for _, m in sorted(moments.items()))
        Q = pca_basis(H)[1]
        ins = [Q] * (n_layers + 1)
        mids = [Q] * n_layers
    else:
        ins = [pca_basis(moments[f"in.{i}"])[1] if f"in.{i}" in moments else None for i in range(n_layers + 1)]
        mids = [pca_basis(moments[f"mid.{i}"])[1] for i in range(n_layers)]
    ins[n_layers] = None  # the last layer writes the original basis: the final norm and the head stay
    if not start_rotated:
        ins[0] = None
    return ins, mids


def rotate_on(model, adapter, batch_sets, *, pooled: bool) -> None:
    """Compute the bases from token batches (a list of lists of {input_ids, attention_mask}) and rotate."""
    start_rotated = not adapter.word_embeddings_tied(model)
    moments = moments_of(model, adapter, batch_sets, start_rotated)
    ins, mids = bases(moments, len(adapter.decoder_layers(model)), start_rotated, pooled)
    rotate(model, adapter, ins, mids)


def apply(model, adapter, tokenizer, calib_sets: dict, settings: dict, *, pooled: bool) -> dict:
    """Fuse, compute the bases from the calibration sets (every set's samples pooled), rotate (see the module
    docstring). SliceGPT with `method.interleave` (its default, the reference's `rotate_and_slice`) rotates layer by
    layer on the signals of the already-cut layers, for the width the run's sparsity gives (`slicegpt_width`)."""
    from diet import prune, profile

    batch_sets = [profile.calibration_batches(tokenizer, calib_sets[name], settings["calib"], settings["seed"])
                  for name in sorted(calib_sets)]
    interleave = not pooled and settings.get("options", {}).get("interleave", False)
    if interleave:
        k = slicegpt_width(model, adapter, settings["sparsity"], settings["multiple_of"], settings["budget"],
                           prune.decoder_params(model, adapter), planned_record(model, adapter))
        rotate_interleaved(model, adapter, [b for batches in batch_sets for b in batches], k)
        depends = depends_on(calib_sets, settings, "slicegpt")
        log.info("transform: residual stream rotated and cut to %d of %d directions layer by layer (SliceGPT's "
                 "rotate_and_slice)", k, model.config.rotated_residual["width"])
        return {**depends, "interleaved": k}
    rotate_on(model, adapter, batch_sets, pooled=pooled)
    log.info("transform: residual stream rotated (%s basis, embedding %s)", "one pooled" if pooled else "per-point",
             model.config.rotated_residual["embedding"])
    return depends_on(calib_sets, settings, "pca" if pooled else "slicegpt")


# ------------------------------------------------------------------------------------------------ slicing

def _slice_columns(matrix: nn.Parameter, indices: torch.Tensor) -> torch.Tensor:
    return matrix.detach().index_select(1, indices.to(matrix.device))


@torch.no_grad()
def slice_rotated(model, adapter, indices: torch.Tensor) -> None:
    """Keep the principal directions `indices` (of the full width d) of every rotated stream, in place.

    The kept stream is carried times c = sqrt(k/d), as `prune.target=hidden` does, so each RMSNorm over the k kept
    directions sees the mean of squares over d of the dense stream restricted to them (eps included): rotated
    writers and post maps times c, pre-norms of rotated streams at effective scale 1/c, shortcuts from a rotated
    stream to one in the original basis divided by c (and the reverse times c), a rotated embedding times c.
    """
    record = dict(model.config.rotated_residual)
    d = record["width"]
    k = indices.numel()
    c = math.sqrt(k / d)
    offset = adapter.norm_offset
    layers = adapter.decoder_layers(model)
    n = len(layers)
    start_rotated = record["embedding"] == "rotated"
    for i, layer in enumerate(layers):
        in_rot, out_rot = (i > 0 or start_rotated), i < n - 1
        norms = adapter.residual_norms(layer)
        q, kp, v, o = adapter.attention_projections(layer)
        gate, up, down = adapter.mlp_projections(layer)
        if in_rot:
            for reader in (q, kp, v):
                keep_inputs(reader, indices)
            keep_norm(norms.pre[0], indices, offset, divisor=c)
        for reader in (gate, up):
            keep_inputs(reader, indices)
        keep_norm(norms.pre[-1], indices, offset, divisor=c)
        for name, writer, rotated in (("attn_post_map", o, True), ("mlp_post_map", down, out_rot)):
            if not rotated:
                continue
            post_map = getattr(layer, name)
            if post_map is not None:
                layer.register_parameter(name, nn.Parameter(
                    (_slice_columns(post_map, indices).float() * c).to(post_map.dtype), requires_grad=False))
            else:
                keep_outputs(writer, indices, factor=c)
        if layer.attn_shortcut is not None:
            S = layer.attn_shortcut.detach()
            S = S.index_select(0, indices.to(S.device)) if in_rot else S * c
            layer.attn_shortcut = nn.Parameter(S.index_select(1, indices.to(S.device)), requires_grad=False)
        if layer.mlp_shortcut is not None:
            S = layer.mlp_shortcut.detach().index_select(0, indices.to(layer.mlp_shortcut.device))
            S = S.index_select(1, indices.to(S.device)) if out_rot else (S.float() / c).to(S.dtype)
            layer.mlp_shortcut = nn.Parameter(S, requires_grad=False)
        adapter.set_hidden_size_attribute(layer, k)
    if start_rotated:
        embedding = adapter.embedding(model)
        weight = embedding.weight.detach().index_select(1, indices.to(embedding.weight.device))
        set_parameter(embedding, "weight", (weight.float() * c).to(weight.dtype))
        embedding.embedding_dim = k
    head_dim = adapter.head_dim(model)
    record["width"] = d
    record["kept"] = k
    model.config.rotated_residual = record
    model.config.head_dim = head_dim


def restore_rotated(model, adapter, config) -> None:
    """Rebuild what `rotate` + `slice_rotated` made of a freshly built model (inside from_pretrained: on the meta
    device), from `config.rotated_residual`, so the saved weights load."""
    record = dict(config.rotated_residual)
    d = record["width"]
    layers = adapter.decoder_layers(model)
    like = adapter.attention_projections(layers[0])[0].weight
    for i, layer in enumerate(layers):
        adapter.make_rotated(layer)
        for block, prefix in (("attention", "attn"), ("mlp", "mlp")):
            if i in record["shortcuts"][block]:
                setattr(layer, f"{prefix}_shortcut", nn.Parameter(torch.empty(d, d, dtype=like.dtype,
                                                                              device=like.device), requires_grad=False))
            if i in record["post_maps"][block]:
                setattr(layer, f"{prefix}_post_map", nn.Parameter(torch.empty(d, d, dtype=like.dtype,
                                                                              device=like.device), requires_grad=False))
    slice_rotated(model, adapter, torch.arange(record.get("kept", d)))


# ------------------------------------------------------------------------------------------------ parameter counts

def added_params(model, adapter) -> int:
    """Parameters the rotation added (shortcut matrices and post maps), at their current shapes."""
    return sum(p.numel() for layer in adapter.decoder_layers(model) for name in adapter.ROTATED_PARAMETERS
               if (p := getattr(layer, name, None)) is not None)


def planned_record(model, adapter) -> dict:
    """The structure per-point rotation gives an unrotated model (what `rotate` records), before rotating it."""
    n = len(adapter.decoder_layers(model))
    record = _new_record(model, adapter, not adapter.word_embeddings_tied(model))
    record["shortcuts"] = {"attention": list(range(n)), "mlp": list(range(n))}
    if adapter.residual_norms(adapter.decoder_layers(model)[0]).post:
        record["post_maps"] = {"attention": list(range(n)), "mlp": list(range(n - 1))}
    return record


def decoder_params_at(model, adapter, k: int, record: dict | None = None) -> int:
    """The decoder layers' parameter count once a full-width model rotated as `record` says (default: its own
    `config.rotated_residual`) keeps k directions (`slice_rotated`)."""
    from diet.prune import count_params

    record = record or model.config.rotated_residual
    d, start_rotated = record["width"], record["embedding"] == "rotated"
    layers = adapter.decoder_layers(model)
    total = 0
    for i, layer in enumerate(layers):
        in_rot, out_rot = (i > 0 or start_rotated), i < len(layers) - 1
        w_in, w_out = (k if in_rot else d), (k if out_rot else d)
        q, kp, v, o = adapter.attention_projections(layer)
        gate, up, down = adapter.mlp_projections(layer)
        own = count_params(layer) - sum(p.numel() for name in adapter.ROTATED_PARAMETERS
                                        if (p := getattr(layer, name, None)) is not None)
        if in_rot:
            own -= sum(r.out_features * (d - k) for r in (q, kp, v)) + (d - k)
        own -= sum(r.out_features * (d - k) for r in (gate, up)) + (d - k)
        added = 0
        for block, writer, rotated in (("attention", o, True), ("mlp", down, out_rot)):
            if not rotated:
                continue
            if i in record["post_maps"][block]:
                added += d * k
            else:
                own -= (writer.in_features + (writer.bias is not None)) * (d - k)
        added += w_in * k if i in record["shortcuts"]["attention"] else 0
        added += k * w_out if i in record["shortcuts"]["mlp"] else 0
        total += own + added
    return total


def width_for_params(model, adapter, fraction: float, multiple_of: int, dense_decoder: int,
                     record: dict | None = None) -> int | None:
    """The largest kept width (a multiple of `multiple_of`, or d) whose sliced decoder holds at most (1 - fraction)
    of `dense_decoder` (the unrotated model's decoder parameters); None when no width does."""
    d = (record or model.config.rotated_residual)["width"]
    allowed = [d] + list(range((d // multiple_of) * multiple_of, 0, -multiple_of))
    for k in allowed:
        if decoder_params_at(model, adapter, k, record) <= (1 - fraction) * dense_decoder:
            return k
    return None


def slicegpt_width(model, adapter, sparsity: float, multiple_of: int, budget: str, dense_decoder: int,
                   record: dict | None = None) -> int:
    """SliceGPT's kept width: round((1 - sparsity) x d) rounded down to `multiple_of` (at least one multiple);
    with budget "params", the largest such width whose sliced decoder holds at most (1 - sparsity) of the
    unrotated decoder's parameters (one DietError line when none does)."""
    record = record or model.config.rotated_residual
    d = record["width"]
    if budget == "params":
        k = width_for_params(model, adapter, sparsity, multiple_of, dense_decoder, record)
        if k is None:
            smallest = decoder_params_at(model, adapter, multiple_of, record)
            raise DietError(f"sparsity: {sparsity} of the decoder's parameters with prune.budget=params cannot be "
                            f"reached by slicing the rotated residual stream (its shortcut matrices and post maps "
                            f"keep {smallest / dense_decoder:.3g} of them at the smallest width); allowed: a sparsity "
                            f"below {1 - smallest / dense_decoder:.3g}, or prune.budget=dims")
        removed = 1 - decoder_params_at(model, adapter, k, record) / dense_decoder
        if removed - sparsity > 0.05 and k < d:
            wider = min(d, k + multiple_of)
            near = 1 - decoder_params_at(model, adapter, wider, record) / dense_decoder
            log.warning("prune.budget=params: %d of %d directions kept, removing %.3f of the decoder's parameters for "
                        "%g requested; %d would remove %.3f (widths are multiples of prune.multiple_of=%d, and the "
                        "largest width within the budget is kept)", k, d, removed, sparsity, wider, near, multiple_of)
        return k
    k = round((1 - sparsity) * d)
    return d if k >= d else max(multiple_of, k // multiple_of * multiple_of)
