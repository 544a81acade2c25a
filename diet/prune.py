"""Physical removal of pruned dimensions, in place, and saving/loading the smaller model.

Masks are bool keep-masks: `"mlp.<layer index>"` (length: that layer's MLP width) for `target="mlp"`, one
`"hidden"` mask (length: the residual width, shared by every layer) for `target="hidden"`, `"heads.<layer index>"`
(length: that layer's query heads) for `target="heads"`, one `"layers"` mask (length: num_hidden_layers) for
`target="layers"` (the masked-out layers go through `remove_layers`, below); a list of targets takes their masks
together. The slicing itself lives with each target (`diet/targets/`); this module validates the masks,
dispatches, saves and loads.
Weights are sliced one tensor at a time and the old Parameter is replaced, so a second full copy of the model never
exists.

target="heads": q_proj rows and o_proj columns of removed heads, k_proj/v_proj rows of KV groups left without a
query head (see targets/heads.py); the pruned model computes exactly the dense model with those heads' outputs zeroed.

target="mlp": the gate/up output rows and down input columns of removed neurons go. The pruned model computes
exactly what the dense model computes with those neurons zeroed (`zero_masked_reference`).

target="hidden": the pruned model computes the logits of the dense model whose residual stream is zero on the
removed dimensions (embedding columns and residual-writer rows zeroed, see `zero_masked_reference`). Slicing
alone is not enough, because every RMSNorm takes the mean of squares over the remaining width d' instead of d,
and the epsilon inside the square root would need rescaling too, while one `rms_norm_eps` in the config serves
every norm (Gemma-3's per-head q/k norms included). Instead the whole pruned residual stream is carried
multiplied by c = sqrt(d'/d): its mean of squares over d' then equals the dense one over d, eps included.
  - embedding: times c (Gemma gets it for free: its sqrt(hidden_size) factor becomes sqrt(d') = c * sqrt(d));
  - residual writers (o_proj, down_proj rows and biases): times c; Gemma's post-norms then output c times the
    dense value with unchanged weights;
  - pre-norms (their output feeds q/k/v/gate/up): effective scale divided by c (Gemma: 1 + w' = (1 + w) / c);
  - final norm: divided by c, and once more when the embedding was multiplied by c and is tied to the LM head
    (tied Llama), so the logits are unchanged and the tie is kept.
`config.hidden_size` becomes d' and `config.head_dim` is written explicitly so attention shapes stay.

Non-uniform MLP widths: transformers 5.23's `per_layer_config` is not read by these modeling files, so the
config stores `intermediate_sizes` (one width per layer) beside `intermediate_size` = the largest width.
`load_pruned` loads such a checkpoint with `from_pretrained` of a same-named subclass of the model class whose
constructor slices each layer's MLP down to its stored width right after the base constructor; inside
`from_pretrained` that happens on the meta device, so nothing is allocated at the larger width, and loading,
dtype, tying and buffer initialisation stay transformers' own. No remote code is involved. Plain
`AutoModelForCausalLM.from_pretrained` loads uniform checkpoints (hidden-pruned ones included); it refuses
non-uniform ones with a shape mismatch.

Whole layers (`remove_layers`, ShortGPT / SLEB): the decoder keeps the layers `keep`, renumbered (see
`Adapter.remove_layers`); the model computes exactly the dense model with the removed layers skipped (each one's
output replaced by its input), KV cache included. The config follows: `num_hidden_layers`, `layer_types` sliced
so each kept layer keeps its sliding/full type (saved explicitly, which in transformers 5.23 wins over the fields
it is otherwise derived from), Qwen2's `max_window_layers` recounted, diet's per-layer lists sliced (dropped, with
the headline value set, when the kept layers agree, so plain loading works again) and `added_biases` renumbered.
A checkpoint with layers removed and otherwise uniform widths loads with plain `from_pretrained`.

Added output biases (`add_output_bias`, FLAP-style compensation adds W[:, removed] @ mean[removed] to the bias
of o_proj or down_proj): a projection without a bias gets a zero one first (the weight's dtype and device).
  - Where the family's config has a flag giving that block's projections biases (Llama: `attention_bias`,
    `mlp_bias`; Gemma-2/3: `attention_bias`), the flag is set and every projection it covers, in every layer,
    gets a zero bias (q/k/v/o or gate/up/down): the model is then a standard one of its family, and plain
    `from_pretrained` loads it exactly.
  - Elsewhere (Gemma's MLP; Qwen2's o_proj and MLP; Mistral) only that projection gets a bias, and
    `config.added_biases` = {block: [layer indices]} (block "attention" or "mlp") records which; `load_pruned`
    creates those biases in the same constructor subclass, before the weights load. Plain `from_pretrained`
    does NOT refuse such a checkpoint: it reports the biases as UNEXPECTED keys, drops them and computes a
    different model. Load it with `load_pruned`.
"""

from __future__ import annotations

import json
import operator
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from torch import nn

from diet import DietError, cache, targets
from diet.models.adapters import BLOCKS, Adapter, get_adapter

# prune.compensation -> the statistics it reads (diet/stats.py). mean: the removed channels' mean input, times their
# columns of the output projection, becomes a bias of that projection (see `compensate`).
COMPENSATIONS = {"none": (), "mean": ("sum",)}


def gpu_alignment_warning(device: torch.device, multiple_of: int) -> str | None:
    """Unaligned kept widths (11469 of 14336, say) ran 2-3.4x slower than the dense model on an H100 in bf16."""
    if device.type != "cuda" or multiple_of % 64 == 0:
        return None
    return (f"prune.multiple_of={multiple_of} on a GPU: kept widths that are not multiples of 64 made pruned "
            "gemma2_9b / llama3_8b 2-3.4x slower than dense on an H100 (docs/benchmarks.md); "
            "prune.multiple_of=128 is recommended here")


def _describe_keys(keys: list[str]) -> str:
    return ", ".join(keys) if len(keys) <= 3 else f"{keys[0]} .. {keys[-1]}"


def _kept_indices(model: nn.Module, adapter: Adapter, masks: dict, chosen: list) -> dict[str, torch.Tensor]:
    """Validate every mask before anything is touched; return the kept indices per key (CPU, int64)."""
    expected = targets.widths(model, adapter, chosen)
    label = "+".join(t.name for t in chosen)
    for key in masks:
        if key not in expected:
            raise DietError(
                f"masks: unexpected key {key!r} for target {label!r}; allowed keys: {_describe_keys(list(expected))}"
            )
    kept = {}
    for key, length in expected.items():
        if key not in masks:
            raise DietError(
                f"masks[{key!r}]: missing for target {label!r}; expected a bool mask of length {length}"
            )
        mask = masks[key]
        if not isinstance(mask, torch.Tensor):
            raise DietError(
                f"masks[{key!r}]: a {type(mask).__name__} is not allowed; "
                f"expected a torch.bool tensor of length {length}"
            )
        found = mask.shape[0] if mask.dim() == 1 else tuple(mask.shape)
        if mask.dtype != torch.bool:
            raise DietError(
                f"masks[{key!r}]: dtype {mask.dtype} (length {found}) is not allowed; "
                f"expected a torch.bool mask of length {length}"
            )
        if mask.dim() != 1 or mask.shape[0] != length:
            raise DietError(f"masks[{key!r}]: length {found} found; expected a 1-D bool mask of length {length}")
        indices = mask.detach().cpu().nonzero().squeeze(1)
        if indices.numel() == 0:
            raise DietError(
                f"masks[{key!r}]: keeps 0 of {length} dimensions (length {found}, expected {length}); "
                "a mask must keep at least one"
            )
        kept[key] = indices
    for t in chosen:
        t.check(model, adapter, {k: masks[k].detach().cpu() for k in t.widths(model, adapter)})
    return kept


@torch.no_grad()
def prune_model(model: nn.Module, adapter: Adapter, masks: dict[str, torch.Tensor], target, *,
                compensation: str = "none", stats: dict | None = None) -> nn.Module:
    """Remove the dimensions whose mask entry is False, in place; returns `model`. `target`: a Target, a name, or
    a list of them (their masks together in `masks`). `compensation="mean"` first folds the removed channels' mean
    input (from `stats`, {calibration set: {hook point: {statistic: tensor}}}, every set pooled) into a bias of the
    output projection they feed. See the module docstring and `diet/targets/`."""
    offloaded = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:  # accelerate keeps their values elsewhere and would page the unpruned ones back in
        raise DietError(f"prune: {len(offloaded)} weights (e.g. {offloaded[0]}) are offloaded by model.device_map "
                        "(meta device); allowed: a device map that fits the GPUs, or model.offload=true (the model "
                        "stays in CPU memory, is profiled one layer at a time and pruned in place)")
    chosen = targets.objects(target)
    if compensation not in COMPENSATIONS:
        raise DietError(f"prune.compensation: {compensation!r} is not allowed; allowed: {', '.join(COMPENSATIONS)}")
    kept = _kept_indices(model, adapter, masks, chosen)
    for t in chosen:
        own = {k: kept[k] for k in t.widths(model, adapter)}
        if compensation == "mean":
            for (layer, block), delta in t.compensation(model, adapter, own, mean_inputs(stats or {}, t.name)).items():
                add_output_bias(model, adapter, layer, block, delta)
        t.prune(model, adapter, own)
    return model


def mean_inputs(stats: dict, target_name: str) -> dict[str, torch.Tensor]:
    """Per hook point of the target, each channel's mean input over every calibration set's tokens (padding
    excluded): the pooled signed sum over the pooled count."""
    sums: dict[str, list] = {}
    for set_stats in stats.values():
        for point, point_stats in set_stats.items():
            if targets.owner(point) == target_name:
                if "sum" not in point_stats:
                    raise ValueError(f"statistics of {point} have no signed 'sum' (declare it: prune.COMPENSATIONS)")
                sums.setdefault(point, []).append((point_stats["sum"].double(), point_stats["count"].double()))
    return {point: (sum(s for s, _ in parts) / sum(c for _, c in parts).clamp_min(1.0)).float()
            for point, parts in sums.items()}


@torch.no_grad()
def zero_masked_reference(model: nn.Module, adapter: Adapter, masks: dict[str, torch.Tensor], target) -> nn.Module:
    """Zero the removed dimensions of a dense model in place (pass a copy): what `prune_model` must reproduce.

    mlp: gate/up rows (and biases) and down columns of removed neurons. hidden: embedding columns and the
    output rows and biases of every residual writer, so the residual stream is exactly zero there throughout.
    heads: o_proj's columns of removed heads (their outputs never reach the residual stream).
    """
    chosen = targets.objects(target)
    _kept_indices(model, adapter, masks, chosen)  # same validation as prune_model
    for t in chosen:
        t.zero_masked(model, adapter, masks)
    return model


# ------------------------------------------------------------------------------------------------ whole layers

# diet's per-layer config lists, grouped as the targets write them: each beside its headline value (the largest),
# the lists of a group dropped together when every layer agrees
_PER_LAYER_GROUPS = (
    (("intermediate_sizes", "intermediate_size"),),
    (("attention_heads", "num_attention_heads"), ("key_value_heads", "num_key_value_heads")),
)


def _checked_keep(keep, n_layers: int) -> list[int]:
    allowed = f"allowed: a non-empty, strictly increasing list of layer indices in 0..{n_layers - 1}"
    try:
        items = list(keep)
        if any(isinstance(i, bool) for i in items):  # a bool mask would read as indices 0 and 1
            raise TypeError
        indices = [operator.index(i) for i in items]
    except TypeError:
        found = repr(keep) if isinstance(keep, (list, tuple, range, int, str)) else f"a {type(keep).__name__}"
        raise DietError(f"keep: {found} is not a list of integer layer indices; {allowed}") from None
    if not indices:
        raise DietError(f"keep: [] keeps no layer; {allowed}")
    outside = [i for i in indices if not 0 <= i < n_layers]
    if outside:
        raise DietError(f"keep: {indices} holds layer {outside[0]}, out of range for {n_layers} layers; {allowed}")
    if any(a >= b for a, b in zip(indices, indices[1:])):
        raise DietError(f"keep: {indices} is not strictly increasing (unsorted or duplicated); {allowed}")
    return indices


@torch.no_grad()
def remove_layers(model: nn.Module, adapter: Adapter, keep: list[int]) -> nn.Module:
    """Delete every decoder layer whose index is not in `keep` (sorted, distinct), in place; returns `model`.
    See the module docstring."""
    keep = _checked_keep(keep, len(adapter.decoder_layers(model)))
    adapter.remove_layers(model, keep)
    config = model.config
    for group in _PER_LAYER_GROUPS:
        if not getattr(config, group[0][0], None):
            continue
        kept_lists = [[getattr(config, key)[i] for i in keep] for key, _ in group]
        for (key, headline), values in zip(group, kept_lists):
            setattr(config, key, values)
            setattr(config, headline, max(values))
        if len(set(zip(*kept_lists))) == 1:
            for key, _ in group:
                delattr(config, key)
    if getattr(config, "added_biases", None):
        new_index = {old: new for new, old in enumerate(keep)}
        renumbered = {block: [new_index[i] for i in layers if i in new_index]
                      for block, layers in config.added_biases.items()}
        _set_added_biases(config, renumbered)
    return model


# ------------------------------------------------------------------------------------------------ added biases

def _zero_bias(linear: nn.Linear) -> None:
    weight = linear.weight
    linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device),
                               requires_grad=weight.requires_grad)


def _set_added_biases(config, record: dict[str, list[int]]) -> None:
    record = {block: sorted(set(record[block])) for block in BLOCKS if record.get(block)}
    if record:
        config.added_biases = record
    elif hasattr(config, "added_biases"):
        del config.added_biases


@torch.no_grad()
def add_output_bias(model: nn.Module, adapter: Adapter, layer: int, block: str, delta: torch.Tensor) -> None:
    """Add `delta` (length: the residual width) to the bias of layer `layer`'s o_proj (block="attention") or
    down_proj (block="mlp"), in place, creating the bias where there is none. See the module docstring."""
    layers = adapter.decoder_layers(model)
    if block not in BLOCKS:
        raise DietError(f"block: {block!r} is not allowed; allowed: {', '.join(BLOCKS)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
        raise DietError(f"layer: {layer!r} is not allowed; allowed: a layer index in 0..{len(layers) - 1}")
    projection = adapter.output_projection(layers[layer], block)
    width = projection.out_features
    if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (width,):
        found = f"shape {tuple(delta.shape)}" if isinstance(delta, torch.Tensor) else f"a {type(delta).__name__}"
        raise DietError(f"delta: {found} is not allowed; allowed: a 1-D tensor of length {width} (the residual width)")
    if projection.bias is None:
        flag = adapter.bias_flags.get(block)
        if flag:
            setattr(model.config, flag, True)
            for each in layers:
                for linear in adapter.block_projections(each, block):
                    if linear.bias is None:
                        _zero_bias(linear)
        else:
            _zero_bias(projection)
            record = dict(getattr(model.config, "added_biases", None) or {})
            _set_added_biases(model.config, {**record, block: [*record.get(block, []), layer]})
    bias = projection.bias
    bias.copy_((bias.float() + delta.to(bias.device).float()).to(bias.dtype))  # one rounding in low precision


def _restore_added_biases(model: nn.Module, adapter: Adapter, config) -> None:
    layers = adapter.decoder_layers(model)
    for block, indices in (getattr(config, "added_biases", None) or {}).items():
        for i in indices:
            projection = adapter.output_projection(layers[i], block)
            if projection.bias is None:
                _zero_bias(projection)


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared (tied) tensor counted once."""
    seen, total = set(), 0
    for parameter in model.parameters():
        key = id(parameter) if parameter.device.type == "meta" else parameter.data_ptr()
        if key not in seen:
            seen.add(key)
            total += parameter.numel()
    return total


def decoder_params(model: nn.Module, adapter: Adapter) -> int:
    """Parameters of the decoder layers (what `prune.budget=params` is a fraction of: no embedding, LM head or
    final norm)."""
    return sum(count_params(layer) for layer in adapter.decoder_layers(model))


def save_pruned(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write `save_pretrained` (safetensors) and the tokenizer (if any) to `path`, atomically: everything goes to
    a temp folder beside `path` that is then renamed into place (replacing an existing `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.temp_dir(path)  # mkdtemp alone would make pruned_model/ private (0700)
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        cache.share_tree(staging)
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(retired / path.name)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


_WIDTH_AWARE_CLASSES: dict[type, type] = {}
# config keys that mark what plain from_pretrained cannot build: per-layer widths, biases no config flag gives
_PER_LAYER_KEYS = ("intermediate_sizes", "attention_heads", "added_biases", "rotated_residual")


def _width_aware_class(base: type) -> type:
    """A subclass of `base`, with the same name, whose constructor applies the per-layer widths in the config
    (`intermediate_sizes`, `attention_heads` / `key_value_heads`) through each target's `restore`, then creates
    the biases `added_biases` records."""
    if base not in _WIDTH_AWARE_CLASSES:

        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            adapter = get_adapter(self)
            with torch.no_grad():
                for cls in targets.TARGETS.values():
                    cls().restore(self, adapter, config)
                _restore_added_biases(self, adapter, config)

        _WIDTH_AWARE_CLASSES[base] = type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})
    return _WIDTH_AWARE_CLASSES[base]


def load_pruned(path: str | Path, **from_pretrained_kwargs):
    """Load what `save_pruned` wrote: returns (model, tokenizer or None). Keyword arguments go to
    `from_pretrained` (dtype defaults to the saved one)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DietError(
            f"prune: pruned model path '{path}' has no config.json; expected a folder written by save_pruned"
        )
    from_pretrained_kwargs.setdefault("dtype", "auto")
    config = transformers.AutoConfig.from_pretrained(path)
    if any(getattr(config, key, None) for key in _PER_LAYER_KEYS):
        architecture = (config.architectures or [None])[0]
        base = getattr(transformers, architecture or "", None)
        if base is None:
            raise DietError(
                f"prune: architecture {architecture!r} in '{path / 'config.json'}' is not a transformers model class"
            )
        model = _width_aware_class(base).from_pretrained(path, config=config, **from_pretrained_kwargs)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, **from_pretrained_kwargs)
    get_adapter(model)  # a clear error for an unsupported family
    return model, _load_saved_tokenizer(path)


def _load_saved_tokenizer(path: Path):
    """The tokenizer `save_pruned` wrote, as the class it was saved as; None when none was saved.

    AutoTokenizer alone is not enough: for a generic `tokenizers` tokenizer (tokenizer_class TokenizersBackend)
    saved beside, e.g., a qwen2 config, transformers 5.23 picks the family's tokenizer class, which rebuilds a
    different tokenizer (a toy WordLevel vocabulary then encodes to nothing).
    """
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file() and not (path / "tokenizer.json").is_file():
        return None
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return transformers.PreTrainedTokenizerFast.from_pretrained(path)
    return transformers.AutoTokenizer.from_pretrained(path)
