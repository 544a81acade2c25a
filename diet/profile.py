"""Profile stage: forward hooks fill the declared statistics (diet/stats.py) over calibration texts, in one pass.

Every target's hook points are hooked together; each point records the statistics of its hook kind (`input`: the
first input of the point's module; `layer_io`: a decoder layer's input and output), per channel, over non-padding
tokens only, in float32 (or the statistic's dtype) on the device of the hooked module. Padding is skipped by
weighting tokens with the attention mask (a matmul), so the hooks never sync with the host. Grouping channels into
dimensions (a head's head_dim channels) happens after scoring (diet/scoring.py).

Two ways to compute a batch's statistics, same contract: `eager` (each statistic's `update`, sharing one float32
copy of the activation) and `fused` (the statistics' `fused` expressions through torch.compile, which reads the
bf16 activation once; on an H100 a benchmark prototype of it took the mlp overhead from 1.22x to 1.02x of a plain
forward). `fused_stats="auto"` picks fused on CUDA and eager elsewhere (CPU compilation costs ~20 s once and buys
little there).

Hook points and their widths belong to the targets (`diet/targets/`):
  mlp    -> `mlp.<i>`: the input of layer i's down projection (intermediate width)
  hidden -> `hidden.<i>`: the residual stream entering decoder layer i, and `hidden.<L>` entering the final norm
  heads  -> `heads.<i>`: the input of layer i's o_proj (num_heads * head_dim channels)
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

import torch
from tqdm.auto import tqdm

import diet
from diet import DietError, cache, flatten
from diet import stats as stat_lib
from diet.targets import group_index, objects, owner
from diet.tasks import text

log = logging.getLogger(__name__)

FUSED_CHOICES = ("auto", True, False)

_compiled: dict[tuple[str, ...], object] = {}


def _fused_partials(names: tuple[str, ...], x: torch.Tensor, weights: torch.Tensor):
    """This batch's partial states of the `names` statistics, as one torch.compile graph."""
    if names not in _compiled:
        functions = [stat_lib.get(n).fused for n in names]
        # dynamic: one graph for every batch shape (sequence lengths vary from batch to batch)
        _compiled[names] = torch.compile(lambda x, w: tuple(f(x, w) for f in functions), dynamic=True,
                                         fullgraph=True)
    return _compiled[names](x, weights)


def use_fused(fused_stats, device: torch.device) -> bool:
    """Resolve the `calib.fused_stats` setting for a model whose inputs go to `device`."""
    if fused_stats not in FUSED_CHOICES:
        raise ValueError(f"fused_stats: {fused_stats!r} is not one of {FUSED_CHOICES}")
    return device.type == "cuda" if fused_stats == "auto" else bool(fused_stats)


class _Accumulator:
    """Holds the running states of one hook point; `batch_state["weights"]` is the current batch's flattened
    attention mask (0/1).

    The states are allocated before the forward pass and updated in place: small tensors born mid-forward would sit
    above the hook's large temporaries on the C heap and keep the process from giving that memory back (measured:
    +0.9 GB of RSS on a 270M model at 8 x 256 tokens, with no change in live tensors).
    """

    def __init__(self, batch_state: dict, width: int, device: torch.device, names: tuple[str, ...],
                 fused: bool = False):
        self.batch_state = batch_state
        self.states = {n: torch.zeros(stat_lib.get(n).shape(width), dtype=stat_lib.get(n).dtype, device=device)
                       for n in names}
        self.fused = tuple(n for n in names if fused and stat_lib.get(n).fused is not None)
        self.eager = tuple(n for n in names if n not in self.fused)
        self.called = False

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> None:
        states = self.states
        if next(iter(states.values())).device != x.device:  # layer-by-layer offload: the layer runs away from home
            self.states = states = {name: t.to(x.device) for name, t in states.items()}
        weights = self.batch_state["weights"]
        if weights.device != x.device:
            weights = weights.to(x.device, non_blocking=True)
        self.called = True
        if self.fused:
            try:
                partials = _fused_partials(self.fused, x, weights)
            except Exception as exc:  # inductor needs a working compiler toolchain (Triton on CUDA, a C++ one on CPU)
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                raise DietError(f"calib.fused_stats: torch.compile failed here ({type(exc).__name__}: {reason}); "
                                "allowed: calib.fused_stats=false (eager statistics, same values up to rounding)"
                                ) from exc
            for name, partial in zip(self.fused, partials):
                stat_lib.get(name).merge(states[name], partial)
        if self.eager:
            batch = stat_lib.Batch(x, weights, out)
            for name in self.eager:
                stat_lib.get(name).update(states[name], batch)


def _home_device(module: torch.nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None and parameter.device.type != "meta" else torch.device("cpu")


def _first_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def tokenize(tokenizer, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches with attention masks; texts sorted by length so batches carry little padding."""
    return batch_rows(tokenizer, tokenizer(texts, truncation=True, max_length=max_length)["input_ids"], batch_size)


def batch_rows(tokenizer, encoded: list[list[int]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Token id rows as right-padded batches, longest first (equal lengths keep their order)."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start:start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, :len(ids)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return batches


def input_device(model, adapter) -> torch.device:
    """Where input ids must go: the embedding's execution device (accelerate hooks and device maps included)."""
    embedding = adapter.embedding(model)
    hook = getattr(embedding, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return embedding.weight.device


def _register(model, adapter, targets, names: tuple[str, ...], batch_state: dict, fused: bool, only=None):
    """An accumulator per hook point of every target (of those in `only`, when given), recording the statistics of
    the point's hook kind."""
    accumulators, handles = {}, []
    for target in targets:
        wanted = stat_lib.at(target.hook_kind, names)
        for point, module in target.hook_points(model, adapter).items():
            if only is not None and point not in only:
                continue
            acc = accumulators[point] = _Accumulator(batch_state, target.point_width(module, model, adapter),
                                                     _home_device(module), wanted, fused)
            if target.hook_kind == "input":
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, kwargs, acc=acc: acc(_first_input(args, kwargs)), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(
                    lambda _m, args, kwargs, output, acc=acc: acc(_first_input(args, kwargs), _first_output(output)),
                    with_kwargs=True))
    return accumulators, handles


def _finish(accumulators: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {point: acc.states for point, acc in accumulators.items() if acc.called}


@torch.inference_mode()
def collect(model, adapter, batches: list[dict[str, torch.Tensor]], targets, *, statistics=stat_lib.BASE,
            desc: str = "profile", fused_stats="auto") -> dict[str, dict[str, torch.Tensor]]:
    """Run the batches through the model once; return {hook point: {statistic: state}} for every hook point of
    `targets` (a Target or a list), each with `statistics` (plus stats.BASE) of its hook kind, on the point's
    device. Only the decoder runs (the LM head's logits are not needed), which for Gemma's 262k vocabulary is most
    of the work.
    """
    device = input_device(model, adapter)
    batch_state: dict = {}
    accumulators, handles = _register(model, adapter, objects(targets), stat_lib.resolve(statistics), batch_state,
                                      use_fused(fused_stats, device))
    decoder = adapter.decoder(model)
    try:
        for batch in tqdm(batches, desc=desc, leave=False, disable=None):
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            attention_mask = batch["attention_mask"].to(device, non_blocking=True)
            batch_state["weights"] = attention_mask.reshape(-1).float()
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return _finish(accumulators)


class _LayerInputs(torch.nn.Module):
    """Stands in for a decoder layer during the capture pass: records the call and returns its input unchanged."""

    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def forward(self, hidden_states, *args, **kwargs):
        self.calls.append((hidden_states, args, kwargs))
        return hidden_states


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _layer_calls(model, adapter, batches) -> list[list]:
    """Per decoder layer, per batch, the (hidden states, args, kwargs) the layer is called with: a capture pass
    with every layer replaced by a recorder that returns its input (only the embedding computes)."""
    decoder = adapter.decoder(model)
    layers = adapter.layer_list(model)
    calls: list[list] = [[] for _ in layers]
    originals = list(layers)
    original_norm = adapter.final_norm(model)
    try:
        for i in range(len(layers)):
            layers[i] = _LayerInputs(calls[i])
        adapter.set_final_norm(model, torch.nn.Identity())
        for batch in batches:
            decoder(input_ids=batch["input_ids"].to(input_device(model, adapter)),
                    attention_mask=batch["attention_mask"].to(input_device(model, adapter)), use_cache=False)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        adapter.set_final_norm(model, original_norm)
    return calls


@torch.inference_mode()
def collect_layerwise(model, adapter, batches: list[dict[str, torch.Tensor]], targets, device: torch.device,
                      *, statistics=stat_lib.BASE, desc: str = "profile", fused_stats="auto"
                      ) -> dict[str, dict[str, torch.Tensor]]:
    """The statistics of `collect`, computed one decoder layer at a time for a model kept in CPU memory.

    A capture pass runs the embedding with every layer replaced by a recorder, which yields each layer's call
    arguments as the model itself builds them (attention masks per layer type, rotary embeddings), whatever the
    family. Then each layer in turn moves to `device`, takes every batch's hidden states, and moves back, so only
    one layer's weights (plus the hidden states of one batch) are on the GPU at any time: a 70B model profiles on
    one GPU. The hidden states of all batches wait in CPU memory between layers.
    """
    calls = _layer_calls(model, adapter, batches)
    originals, original_norm = list(adapter.layer_list(model)), adapter.final_norm(model)
    targets = objects(targets)
    batch_state: dict = {}
    accumulators, handles = _register(model, adapter, targets, stat_lib.resolve(statistics), batch_state,
                                      use_fused(fused_stats, device))
    storage = calls[0][0][0].device
    hidden = [call[0] for call in calls[0]]
    weights = [b["attention_mask"].reshape(-1).float().to(device) for b in batches]
    try:
        for i, layer in enumerate(tqdm(originals, desc=desc, leave=False, disable=None)):
            home = next(layer.parameters()).device
            layer.to(device)
            for b, (_, args, kwargs) in enumerate(calls[i]):
                batch_state["weights"] = weights[b]
                hidden[b] = layer(hidden[b].to(device), *_to(args, device), **_to(kwargs, device)).to(storage)
            layer.to(home)
        if any(module is original_norm for t in targets for module in t.hook_points(model, adapter).values()):
            home = next(original_norm.parameters()).device
            original_norm.to(device)
            for b, h in enumerate(hidden):
                batch_state["weights"] = weights[b]
                original_norm(h.to(device))
            original_norm.to(home)
    finally:
        for handle in handles:
            handle.remove()
    return _finish(accumulators)


def _held_inputs(keep: torch.Tensor, fill: torch.Tensor):
    """A forward pre-hook replacing the removed channels of a module's first input by `fill` (what the pruned
    model computes: zero, or the calibration mean with compensation)."""
    def hook(_module, args, kwargs):
        x = _first_input(args, kwargs)
        held = torch.where(keep.to(x.device), x, fill.to(x.device, x.dtype))
        return ((held, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": held})
    return hook


@torch.inference_mode()
def collect_sequential(model, adapter, batches: dict[str, list[dict[str, torch.Tensor]]], targets, prune_layer, *,
                       device: torch.device | None = None, statistics=stat_lib.BASE, desc: str = "profile",
                       fused_stats="auto") -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Sequential profiling (`calib.sequential`): layer i is profiled on what layers 0..i-1 output once pruned.

    `batches`: {calibration set: batches}. Each set's layer inputs are captured once (`_layer_calls`). Then, for
    each decoder layer in turn: every set's hidden states run through the dense layer while its hook points record
    their statistics; `prune_layer({set: {point: {statistic: cpu tensor}}})` (that layer's statistics) returns
    {point: (kept channels, bool [width]; the value removed channels are held at, [width])}; the layer runs again
    with those inputs held (a pre-hook: the pruned layer's computation, the weights untouched) and its outputs
    feed layer i+1. Both of a layer's targets are profiled before either is pruned, as Wanda-sp's reference does.
    Returns {set: {point: {statistic: cpu tensor}}}. `device`: each layer runs there (model.offload), else in
    place. Hidden states of every set wait where the embedding put them.
    """
    targets = objects(targets)
    names = stat_lib.resolve(statistics)
    calls = {name: _layer_calls(model, adapter, set_batches) for name, set_batches in batches.items()}
    modules: dict[int, dict[str, torch.nn.Module]] = {}
    for target in targets:
        if not target.sequential:
            raise ValueError(f"target {target.name!r} cannot be profiled sequentially (its masks are not per layer)")
        for point, module in target.hook_points(model, adapter).items():
            modules.setdefault(group_index(point), {})[point] = module
    hidden = {name: [call[0] for call in layer_calls[0]] for name, layer_calls in calls.items()}
    weights = {name: [b["attention_mask"].reshape(-1).float() for b in set_batches]
               for name, set_batches in batches.items()}
    fused = use_fused(fused_stats, device if device is not None else input_device(model, adapter))
    stats: dict[str, dict] = {name: {} for name in batches}

    def run(layer, name, i, run_on, batch_state=None):
        outputs = []
        for b, (_, args, kwargs) in enumerate(calls[name][i]):
            if batch_state is not None:
                batch_state["weights"] = weights[name][b].to(run_on)
            out = layer(hidden[name][b].to(run_on), *_to(args, run_on), **_to(kwargs, run_on))
            outputs.append(_first_output(out).to(hidden[name][b].device))
        return outputs

    for i, layer in enumerate(tqdm(list(adapter.layer_list(model)), desc=desc, leave=False, disable=None)):
        home = next(layer.parameters()).device
        run_on = device if device is not None else home
        points, dense_outputs = modules.get(i, {}), {}
        layer.to(run_on)
        try:
            for name in batches:
                batch_state: dict = {}
                accumulators, handles = _register(model, adapter, targets, names, batch_state, fused, only=points)
                try:
                    dense_outputs[name] = run(layer, name, i, run_on, batch_state)
                finally:
                    for handle in handles:
                        handle.remove()
                stats[name].update({point: {k: v.cpu() for k, v in states.items()}
                                    for point, states in _finish(accumulators).items()})
            held = prune_layer({name: {p: stats[name][p] for p in points if p in stats[name]} for name in batches})
            handles = [points[p].register_forward_pre_hook(_held_inputs(keep, fill), with_kwargs=True)
                       for p, (keep, fill) in held.items()]
            try:
                for name in batches:  # a layer nothing is removed from feeds the next one its dense outputs
                    hidden[name] = run(layer, name, i, run_on) if handles else dense_outputs[name]
            finally:
                for handle in handles:
                    handle.remove()
        finally:
            layer.to(home)
    return stats


def profile_texts(model, adapter, tokenizer, texts: list[str], targets, *, max_length: int, batch_size: int,
                  statistics=stat_lib.BASE, desc: str = "profile", layerwise_device: torch.device | None = None,
                  fused_stats="auto") -> dict[str, dict[str, torch.Tensor]]:
    """Tokenise and profile; with `layerwise_device`, one layer at a time on that device (`collect_layerwise`)."""
    return profile_batches(model, adapter, tokenize(tokenizer, texts, max_length, batch_size), targets,
                           statistics=statistics, desc=desc, layerwise_device=layerwise_device,
                           fused_stats=fused_stats)


def profile_batches(model, adapter, batches: list[dict[str, torch.Tensor]], targets, *, statistics=stat_lib.BASE,
                    desc: str = "profile", layerwise_device: torch.device | None = None, fused_stats="auto"
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Profile tokenised batches (`collect`, or `collect_layerwise` with `layerwise_device`)."""
    started = time.perf_counter()
    if layerwise_device is not None:
        stats = collect_layerwise(model, adapter, batches, targets, layerwise_device, statistics=statistics,
                                  desc=desc, fused_stats=fused_stats)
    else:
        stats = collect(model, adapter, batches, targets, statistics=statistics, desc=desc, fused_stats=fused_stats)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    samples = sum(len(b["input_ids"]) for b in batches)
    log.info("%s: %d samples, %d tokens in %.2f s", desc, samples, tokens, time.perf_counter() - started)
    return stats


def calibration_batches(tokenizer, calib_set, calib: dict, seed: int) -> list[dict[str, torch.Tensor]]:
    """A calibration set's samples as batches: texts truncated at calib.max_length, or the token windows a text
    set cuts (diet/tasks/text.py)."""
    rows = text.token_rows(calib_set, tokenizer, max_length=calib["max_length"], n_samples=calib["n_samples"],
                           seed=seed)
    return batch_rows(tokenizer, rows, calib["batch_size"])


def unflatten(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse of `diet.flatten(stats, sep="/")`: the form cache entries store statistics in."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        point, name = key.rsplit("/", 1)
        stats.setdefault(point, {})[name] = t
    return stats


def cache_key(fingerprint: str, task: str, texts: list[str], target, calib: dict, *, seed: int, dtype: str,
              fused: bool, statistics=stat_lib.BASE, windows: str | None = None) -> dict:
    """What one target's profile depends on: the model, the calibration texts and settings (and, for a text set
    cut into token windows, how: `windows`), the statistics beyond stats.BASE recorded at its points (none: the
    key of every earlier version), the kernel."""
    key = {
        "model": fingerprint, "task": task, "n_samples": calib["n_samples"], "seed": seed,
        "max_length": calib["max_length"], "include_target": calib["include_target"],
        "batch_size": calib["batch_size"], "dtype": dtype, "target": target.name,
        "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
        "stats_kernel": "fused" if fused else "eager",  # the two round differently (~1e-6 relative)
        "diet": diet.__version__,
    }
    if target.stats_layout:
        key["stats_layout"] = target.stats_layout
    if windows:
        key["windows"] = windows
    extra = stat_lib.extras(stat_lib.at(target.hook_kind, stat_lib.resolve(statistics)))
    if extra:
        key["stats"] = extra
    return key


def profile_sets(loaded, calib_sets: dict, targets, cache_dir, calib: dict, *, seed: int, dtype: str,
                 statistics=stat_lib.BASE, offload_device: torch.device | None = None):
    """Statistics per calibration set ({set: {hook point: {statistic: tensor}}}, every target's points together).
    Each (set, target) comes from the cache when an identical profile was computed before; the targets a set
    misses are profiled together in one pass. Returns (stats, {set: hit|miss})."""
    store = cache.Cache(cache_dir, "profile")
    device = offload_device if offload_device is not None else input_device(loaded.model, loaded.adapter)
    fused = use_fused(calib["fused_stats"], device)
    stats, status = {}, {}
    for name, calib_set in calib_sets.items():
        keys = {t.name: cache_key(loaded.fingerprint, name, calib_set.texts, t, calib, seed=seed, dtype=dtype,
                                  fused=fused, statistics=statistics, windows=calib_set.windows) for t in targets}
        found = {t.name: store.load_tensors(keys[t.name]) for t in targets}
        missing = [t for t in targets if found[t.name] is None]
        if missing:
            computed = flatten(profile_batches(
                loaded.model, loaded.adapter, calibration_batches(loaded.tokenizer, calib_set, calib, seed), missing,
                statistics=statistics, desc=f"profile {name}", layerwise_device=offload_device, fused_stats=fused),
                sep="/")
            for t in missing:
                found[t.name] = {k: v for k, v in computed.items() if owner(k) == t.name}
                store.store_tensors(keys[t.name], found[t.name])
        stats[name] = {}
        for t in targets:
            stats[name].update(unflatten({k: v.cpu() for k, v in found[t.name].items()}))
        status[name] = "miss" if missing else "hit"
        log.info("profile cache: %s (%s)", status[name], name)
    return stats, status


def profile_sequential(loaded, calib_sets: dict, targets, calib: dict, prune_layer, *, seed: int,
                       statistics=stat_lib.BASE, offload_device: torch.device | None = None):
    """`collect_sequential` over every calibration set: (stats, {set: "sequential"}). Not cached: a layer's
    statistics depend on the masks of the layers before it, so on the whole plan."""
    started = time.perf_counter()
    batches = {name: calibration_batches(loaded.tokenizer, c, calib, seed) for name, c in calib_sets.items()}
    stats = collect_sequential(loaded.model, loaded.adapter, batches, targets, prune_layer, device=offload_device,
                               statistics=statistics, desc="profile (sequential)", fused_stats=calib["fused_stats"])
    log.info("profile: sequential over %d layers, %d set(s) in %.2f s", len(loaded.adapter.layer_list(loaded.model)),
             len(batches), time.perf_counter() - started)
    return stats, {name: "sequential" for name in calib_sets}
