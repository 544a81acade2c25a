"""Rotations of the residual stream into principal bases of its calibration activations, and slicing them.

Two transforms (registered in diet/transforms/__init__.py), both exact at full width (the rotated model computes
the dense one, up to rounding), both leaving the slicing to `prune.target=hidden` (`slice_rotated`):

  slicegpt  SliceGPT (Ashkboos et al. 2024): one basis per residual point: each layer's input and the stream
            between its attention and its MLP, from the PCA of that point's activations; shortcut matrices carry
            the residual from one basis to the next (`residual @ B_in^T B_out`, k x k once sliced).
  pca       ours: one pooled basis for the whole stream (the PCA of every point's activations, each point's
            second-moment matrix divided by its trace so late layers with large activations do not decide alone);
            no shortcut matrices between layers. `prune.rotate=pca` (method=diet, prune.target=hidden): each task
            then ranks the principal directions by its own activations along them, and the vote picks.

What is computed (each step in float64, cast back to the weights' dtype once):
  PCA       per point, H = sum over non-padding tokens of x x^T, H += 0.01 * mean(diag(H)) * I (the reference's
            damping), eigh, eigenvectors in descending eigenvalue order (the columns of the basis B).
  fusion    every pre-norm (RMSNorm: x / rms(x) * (offset + w)) in front of a rotated stream gets unit scale and its
            scale goes into the columns of the projections it feeds; the final norm's goes into the LM head.
  rotation  readers W <- W B; writers W <- B^T W (and bias); embedding E <- E B; head H <- H diag(s) B.
  Gemma     o_proj and down_proj are followed by post norms, which normalise in the original basis: they stay
            unrotated, the post norm gets unit scale and a map diag(s) B (d x d, d x k once sliced) follows it:
            exact, at the cost of the map and of o_proj/down_proj keeping all d output rows (docs/literature.md).
  ends      the last layer writes the stream in the original basis at full width (its MLP shortcut is B_mid^T,
            k x d), so the final norm and the LM head stay as they are: the reference's default (its LM head is
            not sliced unless asked, and rotating a full-width stream changes nothing). The start: an untied
            model's embedding is rotated and sliced (E <- c E B_0[:, kept]) as the reference; a model whose LM head
            is tied to its embedding keeps the embedding too, and layer 0 reads the unrotated stream (its attention
            shortcut is B_mid, d x k), so nothing of the vocabulary matrix is copied or untied.

`config.rotated_residual` records the structure ({"embedding", "width", "kept", "shortcuts", "post_maps"}) so `load_pruned`
rebuilds it (`restore_rotated`); the layers' extra matrices are ordinary parameters in model.safetensors.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math

import torch
from torch import nn

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


@torch.no_grad()
def rotate(model, adapter, in_bases: list, mid_bases: list) -> None:
    """Rotate in place: `in_bases[i]` is the basis of the stream entering layer i (i = L: entering the final norm;
    None: the original basis, for layer 0 and L of a tied model), `mid_bases[i]` that between layer i's attention
    and MLP. Records `config.rotated_residual`."""
    layers = adapter.decoder_layers(model)
    n, offset = len(layers), adapter.norm_offset
    start_rotated = in_bases[0] is not None
    record = {"embedding": "rotated" if start_rotated else "original", "width": adapter.hidden_size(model),
              "shortcuts": {"attention": [], "mlp": []}, "post_maps": {"attention": [], "mlp": []}}
    for i, layer in enumerate(layers):
        adapter.make_rotated(layer)
        b_in, b_mid, b_out = in_bases[i], mid_bases[i], in_bases[i + 1]
        norms = adapter.residual_norms(layer)
        q, k, v, o = adapter.attention_projections(layer)
        gate, up, down = adapter.mlp_projections(layer)
        like = q.weight
        if b_in is not None:
            _rotate_readers([q, k, v], norms.pre[0], b_in, offset)
        _rotate_readers([gate, up], norms.pre[-1], b_mid, offset)
        # writers
        for block, writer, post, basis in (("attention", o, norms.post[0] if norms.post else None, b_mid),
                                           ("mlp", down, norms.post[-1] if norms.post else None, b_out)):
            if basis is None:
                continue
            if post is not None:   # keep the post norm in the original basis; its scale and the rotation after it
                scale = _unit_norm(post, offset)
                setattr(layer, f"{'attn' if block == 'attention' else 'mlp'}_post_map",
                        _parameter(like, scale.to(basis.device)[:, None] * basis.double()))
                record["post_maps"][block].append(i)
            else:
                _rotate_writer(writer, basis)
        # shortcuts: the residual from the basis entering the block into the basis the block writes in
        if b_in is not b_mid:
            layer.attn_shortcut = _parameter(like, b_mid.double() if b_in is None else _mm(b_in.t(), b_mid))
            record["shortcuts"]["attention"].append(i)
        if b_mid is not b_out:
            layer.mlp_shortcut = _parameter(like, b_mid.double().t() if b_out is None else _mm(b_mid.t(), b_out))
            record["shortcuts"]["mlp"].append(i)
    if start_rotated:
        embedding = adapter.embedding(model)
        _set(embedding, "weight", _mm(embedding.weight.detach(), in_bases[0]))
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
    docstring)."""
    from diet import profile

    rotate_on(model, adapter, [profile.calibration_batches(tokenizer, calib_sets[name], settings["calib"],
                                                           settings["seed"]) for name in sorted(calib_sets)],
              pooled=pooled)
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


def decoder_params_at(model, adapter, k: int) -> int:
    """The decoder layers' parameter count once a full-width rotated model keeps k directions (`slice_rotated`)."""
    from diet.prune import count_params

    record = model.config.rotated_residual
    d, start_rotated = record["width"], record["embedding"] == "rotated"
    layers = adapter.decoder_layers(model)
    total = 0
    for i, layer in enumerate(layers):
        in_rot, out_rot = (i > 0 or start_rotated), i < len(layers) - 1
        w_in, w_out = (k if in_rot else d), (k if out_rot else d)
        q, kp, v, o = adapter.attention_projections(layer)
        gate, up, down = adapter.mlp_projections(layer)
        removed = 0
        if in_rot:
            removed += sum(r.out_features * (d - k) for r in (q, kp, v)) + (d - k)
        removed += sum(r.out_features * (d - k) for r in (gate, up)) + (d - k)
        for post_map, writer, rotated in ((layer.attn_post_map, o, True), (layer.mlp_post_map, down, out_rot)):
            if rotated:
                removed += d * (d - k) if post_map is not None else (writer.in_features + (writer.bias is not None)
                                                                      ) * (d - k)
        if layer.attn_shortcut is not None:
            removed += d * d - w_in * k
        if layer.mlp_shortcut is not None:
            removed += d * d - k * w_out
        total += count_params(layer) - removed
    return total


def width_for_params(model, adapter, fraction: float, multiple_of: int, dense_decoder: int) -> int | None:
    """The largest kept width (a multiple of `multiple_of`, or d) whose sliced decoder holds at most (1 - fraction)
    of `dense_decoder` (the unrotated model's decoder parameters); None when no width does."""
    d = model.config.rotated_residual["width"]
    allowed = [d] + list(range((d // multiple_of) * multiple_of, 0, -multiple_of))
    for k in allowed:
        if decoder_params_at(model, adapter, k) <= (1 - fraction) * dense_decoder:
            return k
    return None
