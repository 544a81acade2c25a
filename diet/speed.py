"""Measured speed of a pruned model against its dense original, in the same process (`eval.speed=true`), and the
analytic FLOPs of a decoder forward (shared with benchmarks/, which time the same way).

Timing: the variants are called interleaved, A B, B A, A B, ... after warm-up rounds, and each figure is the
median over rounds; ratios are dense time over pruned time per round (so > 1 is a speed-up), median over rounds.
Prefill: one forward of batch x seq random tokens without a cache. Decode: one new token per step against a KV
cache of seq tokens (each step's cache grows by one; both models see the same number of steps). On CUDA the
timer synchronises the device around each call.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

def interleaved(fns: dict, repeats: int, *, warmup: int = 0, timer=None, log=None) -> dict[str, list[float]]:
    """Seconds per call of each fn over `repeats` rounds, A B C, B C A, C A B, ... (order rotated every round),
    after `warmup` untimed rounds. `timer(fn) -> seconds` replaces the wall clock (e.g. CUDA events)."""
    timer = timer or _wall_time
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            timer(fns[name])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timer(fns[name]))
        if log:
            log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return times


def _wall_time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios num[i] / den[i]."""
    ratios = [a / b for a, b in zip(num, den)]
    return statistics.median(ratios), min(ratios), max(ratios)


@dataclass(frozen=True)
class LayerShape:
    hidden: int           # residual width the layer reads and writes
    q_heads: int          # query heads (fewer once heads are pruned)
    kv_heads: int         # key/value heads (fewer once whole KV groups are pruned)
    head_dim: int
    mlp: int              # FFN width
    window: int | None    # sliding-window length, None = full attention
    extra: int = 0        # multiply-adds per token the formula above misses: a rotated layer's shortcut matrices and
                          # post maps, and projections whose width differs from `hidden` there (diet/transforms)


@dataclass(frozen=True)
class DecoderShape:
    layers: tuple[LayerShape, ...]
    vocab: int            # LM-head rows
    head_in: int          # LM-head input width (the final residual width)


def decoder_shape(model, adapter) -> DecoderShape:
    """Read from the weights themselves, so pruned models (per-layer widths, removed heads) count right."""
    layers = []
    for layer in adapter.decoder_layers(model):
        q, k, _, _ = adapter.attention_projections(layer)
        head_dim = adapter.layer_head_dim(layer)
        shape = LayerShape(hidden=q.in_features, q_heads=q.out_features // head_dim,
                           kv_heads=k.out_features // head_dim, head_dim=head_dim,
                           mlp=adapter.mlp_projections(layer)[2].in_features, window=adapter.sliding_window(layer))
        if getattr(layer, "diet_rotated", False):
            linears = (*adapter.attention_projections(layer), *adapter.mlp_projections(layer))
            actual = sum(lin.in_features * lin.out_features for lin in linears) + sum(
                p.numel() for name in adapter.ROTATED_PARAMETERS if (p := getattr(layer, name)) is not None)
            q_width, kv_width = shape.q_heads * head_dim, shape.kv_heads * head_dim
            formula = shape.hidden * (q_width + 2 * kv_width) + q_width * shape.hidden + 3 * shape.hidden * shape.mlp
            shape = dataclasses.replace(shape, extra=actual - formula)
        layers.append(shape)
    head = adapter.lm_head(model)
    return DecoderShape(tuple(layers), vocab=head.out_features, head_in=head.in_features)


def _keys_attended(seq: int, window: int | None, attention: str, context: int | None) -> int:
    """Query-key pairs per sequence and layer."""
    w = window or 1 << 62
    if context is not None:  # decode: `seq` new tokens, each against a cache of `context` keys (a sliding layer
        return seq * min(context, w)  # keeps only its window)
    if attention == "full":  # the whole S x S product: eager attention computes it and then applies the causal
        return seq * seq  # and sliding-window masks to it (torch's FlopCounterMode agrees, tests/test_benchmarks.py)
    if attention == "causal":  # the work causal attention needs: query p sees keys 0..p (the last `window` of them)
        return sum(min(p + 1, w) for p in range(seq))
    raise ValueError(f"attention: {attention!r}; allowed: full, causal")


def forward_flops(shape: DecoderShape, batch: int, seq: int, *, attention: str = "full", context: int | None = None,
                  with_head: bool = False) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward of batch x seq tokens: per layer q, k, v, o (by head
    counts, so removed heads and KV groups drop out), gate, up, down, and attention scores + values (2 * head_dim
    each per query-key pair and query head); plus the LM head with `with_head`. Norms, activations, rotary and the
    embedding lookup are not counted."""
    total = 0
    for ly in shape.layers:
        q, kv = ly.q_heads * ly.head_dim, ly.kv_heads * ly.head_dim
        per_token = 2 * ly.hidden * (q + 2 * kv) + 2 * q * ly.hidden + 3 * 2 * ly.hidden * ly.mlp + 2 * ly.extra
        pairs = _keys_attended(seq, ly.window, attention, context)
        total += batch * (seq * per_token + pairs * 2 * 2 * ly.head_dim * ly.q_heads)
    if with_head:
        total += batch * seq * 2 * shape.head_in * shape.vocab
    return total




def device_timer(device: torch.device):
    """`timer(fn) -> seconds` for `interleaved`: wall time, with the device synchronised around the call on CUDA."""
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started
    return timed


def prefill_call(model, ids):
    """A function that runs one forward of `ids` without a cache."""
    def run():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    return run


def decode_step(model, ids):
    """A prefill of `ids` with a cache, then a function that runs one decode step (the cache grows by one)."""
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    token = ids[:, -1:].contiguous()

    def step():
        with torch.inference_mode():
            return model(input_ids=token, past_key_values=cache, use_cache=True).logits
    return step


def measure(dense, pruned, adapter, *, device: torch.device, batch: int = 8, seq: int = 128, repeats: int = 5,
            decode_steps: int = 16, seed: int = 0) -> dict:
    """Prefill and decode seconds of both models (medians), the measured speed-ups (dense / pruned), and the
    FLOP and parameter ratios (pruned / dense) beside them."""
    vocab = adapter.embedding(pruned).weight.shape[0]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(device)
    timer = device_timer(device)
    prefill = interleaved({"dense": prefill_call(dense, ids), "pruned": prefill_call(pruned, ids)}, repeats, warmup=1,
                          timer=timer)
    decode = interleaved({"dense": decode_step(dense, ids[:1]), "pruned": decode_step(pruned, ids[:1])},
                         decode_steps, warmup=2, timer=timer)
    from diet.prune import count_params  # prune imports targets, which a light import of this module need not

    dense_shape, pruned_shape = decoder_shape(dense, adapter), decoder_shape(pruned, adapter)
    out = {"batch": batch, "seq": seq, "repeats": repeats, "decode_steps": decode_steps, "device": str(device)}
    for name, times in (("prefill", prefill), ("decode", decode)):
        speedup, low, high = median_ratio(times["dense"], times["pruned"])
        out[name] = {"dense_s": statistics.median(times["dense"]), "pruned_s": statistics.median(times["pruned"]),
                     "speedup": speedup, "speedup_range": [low, high]}
    out["flop_ratio"] = (forward_flops(pruned_shape, batch, seq, with_head=True)
                         / forward_flops(dense_shape, batch, seq, with_head=True))
    out["param_ratio"] = count_params(pruned) / count_params(dense)
    return out
