#!/usr/bin/env python
"""Benchmarks of DIET's stages on real model shapes: GPU (bf16) when there is one, else the CPU (float32).

Models are built from configs carrying the published shapes (gemma-2-2b/9b/27b, Llama-3-8B), directly on the device
(transformers' own init, run on the device: normal(0, 0.02) weights, norms at their defaults; nothing is downloaded),
or, for `gemma3_270m`, loaded with their real weights from the offline demo checkpoint (`--cache-dir`). Inputs are
random token ids with full attention masks. GPU timings are CUDA-synchronised (CUDA events around the region); every
figure follows warm-ups and is the median of several repeats; compared variants are interleaved repeat by repeat.

Sections (`--sections`):
  profile  `diet.profile.collect` (target mlp and hidden) vs the same decoder forward passes without hooks: time
           ratio, tokens/s, peak-memory ratio (torch.cuda.max_memory_allocated, reset before every timed call; GPU
           only). `--stats` picks the statistics kernels to time: `eager` and `fused` (`calib.fused_stats`, the
           torch.compile path, diet's default on CUDA); the fused statistics are checked against the eager ones.
  e2e      profile (7 tasks x 100 samples x 512 tokens by default, diet's default statistics kernel for the device)
           + the run's vote stage (method diet, act_l2, majority; `harness.run_vote`) + its pruning, target mlp,
           multiple_of 128 (1 with --tiny), each stage's seconds. It
           prunes, so it runs on a deep copy right after `profile` when a copy fits, and last, in place, when not.
  prefill  dense vs pruned forward at several batch sizes: decoder + LM head (full logits, as lm-eval scores them)
           and decoder only; pruned copies come from the run's `method=random` masks + its pruning; parameter and
           analytic FLOP ratios beside the measured speed-up.
  decode   one token per step with a KV cache of `--seq` tokens, dense vs pruned (runs inside `prefill`).
  taylor   a gradient-based importance pass (|grad * activation| at every down_proj input, one forward + backward
           over the same batches, activation gradients only) vs `collect`, as a time ratio.

Examples:
  python benchmarks/bench_gpu.py --tiny                     # CPU smoke test with tiny shapes (float32)
  python benchmarks/bench_gpu.py --models gemma3_270m --device cpu --sections taylor,e2e --cache-dir /tmp/demo_cache
  python benchmarks/bench_gpu.py --models gemma2_9b --sections profile,prefill,e2e --doc docs/benchmarks.md
  python benchmarks/bench_gpu.py --render a.jsonl b.jsonl --doc docs/benchmarks.md   # tables from saved runs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import harness  # the benchmarks folder is sys.path[0] when a script runs

# Published shapes. Gemma-2: vocab 256000, tied embeddings, sliding window 4096, logit soft-capping (eager attention
# in transformers, which has no SDPA path for soft-capping). Llama-3-8B: vocab 128256, untied.
SHAPES = {
    "gemma2_2b": dict(family="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                      query_pre_attn_scalar=256, sliding_window=4096),
    "gemma2_9b": dict(family="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                      query_pre_attn_scalar=256, sliding_window=4096),
    "gemma2_27b": dict(family="gemma2", hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=256000,
                       query_pre_attn_scalar=144, sliding_window=4096),
    "llama3_8b": dict(family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                      rms_norm_eps=1e-5, tie_word_embeddings=False),
}
REAL_WEIGHTS = ("gemma3_270m",)  # loaded from the offline demo checkpoint (diet.models.demo), not built
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size")
TINY_SHAPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512)
# Models too large for a dense + pruned copy on one 80 GB card: prefill is measured dense, then pruned in place.
IN_PLACE_PREFILL = {"gemma2_27b"}
PROFILE_BS = {"gemma2_27b": 4}

# Most informative first, so a --time-budget cut drops the least: the target variant, then widths that are / are not
# multiples of 8 (bf16 GEMM alignment: odd widths ran 2-3x slower than dense on an H100, see docs/benchmarks.md).
DEFAULT_VARIANTS = "mlp:0.3:128,mlp:0.3:1,mlp:0.3:8,hidden:0.3:1,hidden:0.3:8,mlp:0.2:1,mlp:0.2:128,mlp:0.5:1," \
                   "mlp:0.5:128,hidden:0.2:1,hidden:0.5:1,hidden:0.3:128"
TARGET_VARIANT = ("mlp", 0.3, 128)  # the speed target: at batch 8, speed-up >= 0.8 x FLOP reduction
TARGET_BS = 8

log_file = None


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if log_file is not None:
        log_file.write(line + "\n")
        log_file.flush()


# --------------------------------------------------------------------------------------------------- recording

class Recorder:
    """Results as dicts, each appended to a JSON-lines file as soon as it exists (partial runs still render)."""

    def __init__(self, path: str | None):
        self.rows: list[dict] = []
        self.path = path
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def add(self, kind: str, **row) -> dict:
        row = {"kind": kind, **row}
        self.rows.append(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row


# ------------------------------------------------------------------------------------------------------ timing

class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> tuple[float, int]:
        """Seconds of one call of fn and the peak allocated bytes during it (0 on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            peak = torch.cuda.max_memory_allocated()
            del out
            return start.elapsed_time(end) / 1000.0, peak
        started = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - started
        del out
        return elapsed, 0


def interleaved(clock: Clock, fns: dict, reps: int, warmup: int) -> dict[str, dict]:
    """`harness.interleaved` timed by `clock`, with the peak memory of each variant's timed calls."""
    peaks = {n: 0 for n in fns}
    timed = {n: (n, fn) for n, fn in fns.items()}

    def timer(entry):
        name, fn = entry
        seconds, peak = clock.time(fn)
        peaks[name] = max(peaks[name], peak)
        return seconds

    harness.interleaved(timed, 0, warmup=warmup, timer=timer)  # warm-up only; its peaks are dropped
    peaks.update({n: 0 for n in fns})
    times = harness.interleaved(timed, reps, timer=timer)
    return {n: {"median_s": statistics.median(times[n]), "times_s": times[n], "peak_bytes": peaks[n]}
            for n in fns}


# ------------------------------------------------------------------------------------------------------ models

def shape_of(name: str, tiny: bool) -> dict:
    shape = dict(SHAPES[name])
    if tiny:
        family = shape["family"]
        shape = dict(TINY_SHAPE, family=family)
        if family == "gemma2":
            shape.update(query_pre_attn_scalar=16, sliding_window=4096)
    return shape


def build_model(name: str, device: torch.device, dtype: torch.dtype, tiny: bool, cache_dir: str):
    """(model, adapter, seconds, shape): `shape` holds the published shape (or the loaded config's)."""
    import transformers
    from diet.models.adapters import get_adapter

    started = time.perf_counter()
    if name in REAL_WEIGHTS and not tiny:
        from diet.models import demo

        model = transformers.AutoModelForCausalLM.from_pretrained(demo.checkpoint(cache_dir), dtype=dtype)
        model.to(device)
        shape = {k: getattr(model.config, k) for k in SHAPE_KEYS}
    else:
        shape = shape_of(name, tiny)
        config_args = {k: v for k, v in shape.items() if k != "family"}
        config = transformers.AutoConfig.for_model(shape["family"], max_position_embeddings=8192, pad_token_id=0,
                                                   bos_token_id=2, eos_token_id=1, **config_args)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model, get_adapter(model), time.perf_counter() - started, shape


def random_ids(n: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seq), generator=generator)


def random_batches(n_samples: int, seq: int, bs: int, vocab: int, seed: int) -> list[dict]:
    """CPU batches as `diet.profile.tokenize` returns them (the collect loop moves them to the device)."""
    ids = random_ids(n_samples, seq, vocab, seed)
    return [{"input_ids": ids[s:s + bs].contiguous(), "attention_mask": torch.ones_like(ids[s:s + bs])}
            for s in range(0, n_samples, bs)]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------- analytics

def flop_ratio(pruned, dense, batch: int, seq: int, with_head: bool, context: int | None = None) -> float:
    """Matmul FLOPs of the pruned over the dense model (`harness.forward_flops`, shapes read from the weights):
    prefill counted causally (query p attends to keys 0..p, within a layer's sliding window), decode as `seq`
    new tokens against a cache of `context` keys. Element-wise work is left out."""
    kw = dict(attention="causal", context=context, with_head=with_head)
    return harness.forward_flops(pruned, batch, seq, **kw) / harness.forward_flops(dense, batch, seq, **kw)


# ------------------------------------------------------------------------------------------------ checks

def max_rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for point in a:
        for stat in a[point]:
            x, y = a[point][stat].double(), b[point][stat].double()
            worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)))
    return worst


# ----------------------------------------------------------------------------------------------------- sections

def bench_profile(rec, name, model, adapter, device, clock, args, shape):
    from diet.profile import collect

    bs = args.profile_bs or PROFILE_BS.get(name, 16)
    batches = random_batches(bs * args.profile_batches, args.seq, bs, shape["vocab_size"], seed=1)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    decoder = model.get_decoder()

    def no_hooks():
        with torch.inference_mode():
            for batch in batches:
                decoder(input_ids=batch["input_ids"].to(device, non_blocking=True),
                        attention_mask=batch["attention_mask"].to(device, non_blocking=True), use_cache=False)

    def run_collect(target, kernel):
        return lambda: collect(model, adapter, batches, target, fused_stats=kernel == "fused")

    fns = {"no hooks": no_hooks}
    for kernel in args.stats:
        for target in ("mlp", "hidden"):
            if kernel == "fused":  # first call compiles; check the statistics against the eager kernel's
                t0 = time.perf_counter()
                got = collect(model, adapter, batches[:1], target, fused_stats=True)
                clock.sync()
                first_s = time.perf_counter() - t0
                diff = max_rel_diff(got, collect(model, adapter, batches[:1], target, fused_stats=False))
                rec.add("stats_check", model=name, target=target, first_call_s=first_s, max_rel_diff=diff)
                say(f"  fused {target}: first call {first_s:.2f} s, max rel diff vs eager {diff:.2e}")
            fns[f"collect {target} [{kernel}]"] = run_collect(target, kernel)
    results = interleaved(clock, fns, reps=args.reps, warmup=1)
    base = results["no hooks"]
    for variant, r in results.items():
        row = rec.add("profile", model=name, variant=variant, batch=bs, seq=args.seq, batches=len(batches),
                      tokens=tokens, median_s=r["median_s"], times_s=r["times_s"],
                      tokens_per_s=tokens / r["median_s"], ratio=r["median_s"] / base["median_s"],
                      peak_gb=r["peak_bytes"] / 2**30,
                      peak_ratio=(r["peak_bytes"] / base["peak_bytes"]) if base["peak_bytes"] else None)
        say(f"  profile {variant:28s} {row['median_s']:.3f} s  x{row['ratio']:.3f}  "
            f"{row['tokens_per_s']:.0f} tok/s  peak {row['peak_gb']:.2f} GB")


def bench_e2e(rec, name, model, adapter, device, clock, args, shape):
    from diet.profile import collect, use_fused
    from diet.prune import count_params
    from diet.vote import achieved_sparsity

    bs = args.e2e_bs
    tasks = {f"task{t}": random_batches(args.e2e_samples, args.seq, bs, shape["vocab_size"], seed=100 + t)
             for t in range(args.e2e_tasks)}
    tokens = sum(int(b["attention_mask"].sum()) for bl in tasks.values() for b in bl)
    params_dense = count_params(model)
    label = f"diet ({'fused' if use_fused('auto', device) else 'eager'} stats)"
    if getattr(args, "e2e_on_copy", False):
        model = copy.deepcopy(model)  # the caller's dense model stays intact for the sections after this one
    cfg = harness.run_config(["method=diet", "scoring=act_l2", "prune.target=mlp", f"sparsity={args.e2e_sparsity}",
                              f"prune.multiple_of={1 if args.tiny else 128}"])
    loaded = harness.wrap_model(model, adapter)
    clock.sync()
    t0 = time.perf_counter()
    stats = {task: collect(model, adapter, batches, "mlp", desc=task) for task, batches in tasks.items()}
    clock.sync()
    t1 = time.perf_counter()
    masks = harness.run_vote(cfg, loaded, stats)
    t2 = time.perf_counter()
    harness.run_prune(model, adapter, masks, "mlp")
    clock.sync()
    t3 = time.perf_counter()
    row = rec.add("e2e", model=name, variant=label, device=device.type, tasks=len(tasks), samples=args.e2e_samples,
                  seq=args.seq, batch=bs, tokens=tokens, profile_s=t1 - t0, vote_s=t2 - t1, prune_s=t3 - t2,
                  total_s=t3 - t0, sparsity=achieved_sparsity(masks), params_ratio=count_params(model) / params_dense)
    say(f"  e2e profile {row['profile_s']:.2f} s, vote {row['vote_s']:.2f} s, prune {row['prune_s']:.2f} s, "
        f"total {row['total_s']:.2f} s ({tokens} tokens)")


def _prefill_fns(model, ids, mask):
    decoder = model.get_decoder()

    def full():
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def decoder_only():
        with torch.inference_mode():
            return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    return full, decoder_only


def parse_variants(text: str) -> list[tuple[str, float, int]]:
    out = []
    for item in text.split(","):
        target, sparsity, multiple = item.split(":")
        out.append((target, float(sparsity), int(multiple)))
    return out


def bench_prefill(rec, name, model, adapter, device, clock, args, shape):
    from diet.prune import count_params

    in_place = name in IN_PLACE_PREFILL and not args.tiny
    variants = parse_variants(args.variants)
    if in_place:  # one variant, the target one, measured after the dense model: not interleaved
        variants = [TARGET_VARIANT]
    dense_shape = harness.decoder_shape(model, adapter)  # before an in-place prune changes it
    dense_params = count_params(model)
    batch_sizes = [bs for bs in args.batch_sizes if bs <= 8] if in_place else args.batch_sizes  # memory
    inputs = {bs: random_ids(bs, args.seq, shape["vocab_size"], seed=200 + bs).to(device) for bs in batch_sizes}
    decode_inputs = {bs: random_ids(bs, args.seq, shape["vocab_size"], seed=300 + bs).to(device)
                     for bs in args.decode_bs} if "decode" in args.sections else {}
    dense_alone: dict = {}
    if in_place:
        for bs, ids in inputs.items():
            full, dec = _prefill_fns(model, ids, torch.ones_like(ids))
            dense_alone[bs] = interleaved(clock, {"dense full": full, "dense dec": dec}, args.reps, 1)
        for bs, ids in decode_inputs.items():
            dense_alone[("decode", bs)] = interleaved(clock, {"dense": harness.decode_step(model, ids)},
                                                      args.decode_steps, 3)
    for target, sparsity, multiple_of in variants:
        if time_left(args) < args.min_section_s:
            rec.add("skipped", model=name, what=f"prefill {target} {sparsity} m{multiple_of}", why="time budget")
            say(f"  skip prefill {target} {sparsity} m{multiple_of}: time budget")
            continue
        try:
            pruned = model if in_place else copy.deepcopy(model)
            cfg = harness.run_config(["method=random", "seed=0", f"sparsity={sparsity}", f"prune.target={target}",
                                      f"prune.multiple_of={multiple_of}"])
            loaded = harness.wrap_model(pruned, adapter)
            masks = harness.run_vote(cfg, loaded, {})
            harness.run_prune(pruned, adapter, masks, target)
            pruned_shape = harness.decoder_shape(pruned, adapter)
            widths, hidden = [ly.mlp for ly in pruned_shape.layers], pruned_shape.head_in
            params_ratio = count_params(pruned) / dense_params
            for bs, ids in inputs.items():
                mask = torch.ones_like(ids)
                d_full, d_dec = _prefill_fns(model, ids, mask)
                p_full, p_dec = _prefill_fns(pruned, ids, mask)
                if in_place:
                    res = dict(dense_alone[bs])
                    res.update(interleaved(clock, {"pruned full": p_full, "pruned dec": p_dec}, args.reps, 1))
                else:
                    res = interleaved(clock, {"dense full": d_full, "pruned full": p_full, "dense dec": d_dec,
                                              "pruned dec": p_dec}, args.reps, 1)
                for mode, head in (("full", True), ("dec", False)):
                    t_dense, t_pruned = res[f"dense {mode}"]["median_s"], res[f"pruned {mode}"]["median_s"]
                    row = rec.add("prefill", model=name, target=target, sparsity=sparsity, multiple_of=multiple_of,
                                  mode=mode, batch=bs, seq=args.seq, params_ratio=params_ratio,
                                  flop_ratio=flop_ratio(pruned_shape, dense_shape, bs, args.seq, head),
                                  dense_s=t_dense, pruned_s=t_pruned,
                                  dense_times_s=res[f"dense {mode}"]["times_s"],
                                  pruned_times_s=res[f"pruned {mode}"]["times_s"],
                                  tokens_per_s_dense=bs * args.seq / t_dense,
                                  tokens_per_s_pruned=bs * args.seq / t_pruned,
                                  interleaved=not in_place, widths=sorted(set(widths)), hidden=hidden)
                    say(f"  prefill {target} s={sparsity} m={multiple_of} bs={bs} {mode}: dense "
                        f"{t_dense * 1e3:.1f} ms pruned {t_pruned * 1e3:.1f} ms speed-up "
                        f"{1 - t_pruned / t_dense:.3f} FLOP red {1 - row['flop_ratio']:.3f}")
            for bs, ids in decode_inputs.items():
                p_step = harness.decode_step(pruned, ids)
                if in_place:
                    res = {"dense": dense_alone[("decode", bs)]["dense"]}
                    res.update(interleaved(clock, {"pruned": p_step}, args.decode_steps, 3))
                else:
                    res = interleaved(clock, {"dense": harness.decode_step(model, ids), "pruned": p_step},
                                      args.decode_steps, 3)
                row = rec.add("decode", model=name, target=target, sparsity=sparsity, multiple_of=multiple_of,
                              batch=bs, cache=args.seq, params_ratio=params_ratio,
                              flop_ratio=flop_ratio(pruned_shape, dense_shape, bs, 1, True, context=args.seq),
                              dense_s=res["dense"]["median_s"], pruned_s=res["pruned"]["median_s"],
                              interleaved=not in_place)
                say(f"  decode {target} s={sparsity} m={multiple_of} bs={bs}: dense {row['dense_s'] * 1e3:.2f} ms "
                    f"pruned {row['pruned_s'] * 1e3:.2f} ms")
                del p_step
            if not in_place:
                del pruned
        except torch.OutOfMemoryError as exc:
            rec.add("skipped", model=name, what=f"prefill {target} {sparsity} m{multiple_of}", why=f"OOM: {exc}"[:200])
            say(f"  OOM in prefill {target} {sparsity} m{multiple_of}")
        free_memory()


def taylor_pass(model, adapter, batches, device) -> dict[int, torch.Tensor]:
    """Per FFN neuron, sum over non-padding tokens of |dL/da * a| at the down_proj input (next-token loss, one
    forward and one backward per batch; only activation gradients, no weight gradients)."""
    sums: dict[int, torch.Tensor] = {}
    state: dict = {}

    def make_hook(index):
        def pre_hook(_module, args):
            activation = args[0]
            if not activation.requires_grad:
                return

            def on_grad(grad, activation=activation):
                contrib = (grad.float() * activation.float()).abs().reshape(-1, activation.shape[-1])
                value = state["weights"] @ contrib
                if index in sums:
                    sums[index] += value
                else:
                    sums[index] = value

            activation.register_hook(on_grad)
        return pre_hook

    handles = [adapter.mlp_projections(layer)[2].register_forward_pre_hook(make_hook(i))
               for i, layer in enumerate(adapter.decoder_layers(model))]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for batch in batches:
            ids = batch["input_ids"].to(device, non_blocking=True)
            mask = batch["attention_mask"].to(device, non_blocking=True)
            state["weights"] = mask.reshape(-1).float()
            with torch.enable_grad():
                embeds = adapter.embedding(model)(ids).detach().requires_grad_(True)
                labels = ids.masked_fill(mask == 0, -100)
                loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss
                loss.backward()
            del loss, embeds
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return sums


def bench_taylor(rec, name, model, adapter, device, clock, args, shape):
    from diet.profile import collect

    bs = args.taylor_bs
    batches = random_batches(bs * args.taylor_batches, args.seq, bs, shape["vocab_size"], seed=7)
    res = interleaved(clock, {"diet collect mlp": lambda: collect(model, adapter, batches, "mlp"),
                              "taylor grad x act": lambda: taylor_pass(model, adapter, batches, device)},
                      reps=args.taylor_reps, warmup=1)
    base = res["diet collect mlp"]
    for variant, r in res.items():
        row = rec.add("taylor", model=name, variant=variant, batch=bs, seq=args.seq, batches=len(batches),
                      median_s=r["median_s"], times_s=r["times_s"], ratio=r["median_s"] / base["median_s"],
                      peak_gb=r["peak_bytes"] / 2**30)
        say(f"  taylor {variant:20s} {row['median_s']:.3f} s x{row['ratio']:.2f} peak {row['peak_gb']:.1f} GB")


# --------------------------------------------------------------------------------------------------- rendering

def _f(value, fmt="{:.3f}") -> str:
    return "" if value is None else fmt.format(value)


def section_title(rows: list[dict]) -> str:
    """One section per kind of run: the GPU suite, the CPU models part, the tiny smoke test."""
    env = next((r for r in rows if r["kind"] == "env"), {})
    if env.get("tiny"):
        return "Model benchmarks (tiny shapes, CPU smoke test)"
    on_gpu = env.get("cuda_device", not str(env.get("device", "CPU")).startswith("CPU"))  # older rows lack the key
    return "Model benchmarks (GPU)" if on_gpu else "Model benchmarks (CPU)"


def metadata(rows: list[dict]) -> list[str]:
    """The bullets under the heading, from the runs' own env rows (a --render may combine several runs)."""
    env = [r for r in rows if r["kind"] == "env"]
    if not env:
        return []
    e = env[0]
    out = [f"- date: {e['date']}",
           f"- device: {e['device']}; torch {e['torch']} (CUDA {e['cuda']}); transformers "
           f"{e['transformers']}; python {e['python']}; dtype {e['dtype']}"]
    for other in env[1:]:
        if other.get("device") != e.get("device") or other.get("date") != e.get("date"):
            out.append(f"- also: {other['device']}, {other['date']}")
    out.append("- command(s):")
    out.extend(f"  - `{c}`" for c in sorted({r["command"] for r in env}))
    for m in [r for r in rows if r["kind"] == "model"]:
        out.append(f"- {m['model']}: {m['params'] / 1e9:.2f} B parameters, attention "
                   f"`{m['attn_implementation']}`, built in {m['build_s']:.1f} s, finite logits: {m['finite']}")
    return out


def render(rows: list[dict]) -> str:
    out = []
    if any(r["kind"] == "env" for r in rows):
        out.append("Weights: random (transformers' init on the device) for the published shapes, real for "
                   "gemma3_270m; random token ids with full attention masks; medians of the repeats after a warm-up "
                   "(CUDA-event timings on GPUs); compared variants interleaved repeat by repeat unless marked "
                   "otherwise.\n")

    prof = [r for r in rows if r["kind"] == "profile"]
    if prof:
        out.append("### Profiling overhead: `diet.profile.collect` vs the same decoder passes without hooks\n")
        out.append("Target (GPU): time ratio <= 1.05x. `[eager]`: float32 copy of each activation, then abs, matmul "
                   "and max; `[fused]`: the same statistics through torch.compile (`calib.fused_stats`, the default "
                   "on CUDA).\n")
        out.append("| model | batch x seq x batches | variant | median s | tokens/s | time ratio | peak GB | "
                   "peak ratio | <= 1.05x |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in prof:
            ok = "" if r["variant"] == "no hooks" else ("yes" if r["ratio"] <= 1.05 else "no")
            out.append(f"| {r['model']} | {r['batch']} x {r['seq']} x {r['batches']} | {r['variant']} | "
                       f"{r['median_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['ratio']:.3f} | "
                       f"{_f(r['peak_gb'] or None, '{:.2f}')} | "
                       f"{_f(r['peak_ratio'])} | {ok} |")
        checks = [r for r in rows if r["kind"] == "stats_check"]
        if checks:
            out.append("")
            out.append("Fused kernel checks (the first call includes compilation; statistics compared with the eager "
                       "kernel's on one batch):\n")
            out.append("| model | target | first call s | max rel diff vs eager |")
            out.append("|---|---|---|---|")
            for r in checks:
                out.append(f"| {r['model']} | {r['target']} | {r['first_call_s']:.2f} | {r['max_rel_diff']:.1e} |")
        out.append("")

    e2e = [r for r in rows if r["kind"] == "e2e"]
    if e2e:
        out.append("### End to end: profile + vote + prune (target mlp, act_l2, majority, scope=layer)\n")
        out.append("Target: under 60 s on one H100 (model construction not included; the verdict applies to GPU "
                   "rows only).\n")
        out.append("| model | variant | tasks x samples x seq | batch | tokens | profile s | vote s | prune s | "
                   "total s | < 60 s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in e2e:
            total = r.get("total_s")
            out.append(f"| {r['model']} | {r['variant']} | {r['tasks']} x {r['samples']} x {r['seq']} | "
                       f"{r['batch']} | {r['tokens']:,} | {r['profile_s']:.2f} | {_f(r.get('vote_s'), '{:.2f}')} | "
                       f"{_f(r.get('prune_s'), '{:.2f}')} | {_f(total, '{:.2f}')} | "
                       f"{'' if total is None or r.get('device') == 'cpu' else ('yes' if total < 60 else 'no')} |")
        out.append("")

    pre = [r for r in rows if r["kind"] == "prefill"]
    if pre:
        out.append("### Prefill: pruned vs dense\n")
        out.append("speed-up = 1 - t_pruned / t_dense; FLOP red. = 1 - F_pruned / F_dense (analytic matmul FLOPs, "
                   "causal attention); eff. = speed-up / FLOP red. `full` = decoder + LM head (all positions' "
                   "logits), `dec` = decoder only. Target: mlp, multiple_of 128, sparsity 0.3, batch 8: "
                   "speed-up >= 0.8 x FLOP red.\n")
        out.append("| model | target | sparsity | mult. | params ratio | batch x seq | mode | FLOP ratio | "
                   "dense ms | pruned ms | speed-up | FLOP red. | eff. | target met |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in pre:
            speedup = 1 - r["pruned_s"] / r["dense_s"]
            reduction = 1 - r["flop_ratio"]
            eff = speedup / reduction if reduction > 0 else float("nan")
            is_target = (r["target"], r["sparsity"], r["multiple_of"]) == TARGET_VARIANT and r["batch"] == TARGET_BS
            met = ("yes" if speedup >= 0.8 * reduction else "no") if is_target else ""
            note = "" if r.get("interleaved", True) else " (not interleaved)"
            out.append(f"| {r['model']} | {r['target']} | {r['sparsity']} | {r['multiple_of']} | "
                       f"{r['params_ratio']:.3f} | {r['batch']} x {r['seq']} | {r['mode']}{note} | "
                       f"{r['flop_ratio']:.3f} | {r['dense_s'] * 1e3:.1f} | {r['pruned_s'] * 1e3:.1f} | "
                       f"{speedup:.3f} | {reduction:.3f} | {eff:.2f} | {met} |")
        out.append("")

    dec = [r for r in rows if r["kind"] == "decode"]
    if dec:
        out.append("### Decode: one token per step with a KV cache\n")
        out.append("| model | target | sparsity | mult. | params ratio | batch | cache | dense ms/step | "
                   "pruned ms/step | speed-up | FLOP red. |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in dec:
            out.append(f"| {r['model']} | {r['target']} | {r['sparsity']} | {r['multiple_of']} | "
                       f"{r['params_ratio']:.3f} | {r['batch']} | {r['cache']} | {r['dense_s'] * 1e3:.2f} | "
                       f"{r['pruned_s'] * 1e3:.2f} | {1 - r['pruned_s'] / r['dense_s']:.3f} | "
                       f"{1 - r['flop_ratio']:.3f} |")
        out.append("")

    tay = [r for r in rows if r["kind"] == "taylor"]
    if tay:
        out.append("### Gradient-based (Taylor |grad x activation|) importance vs DIET's forward-only profiling\n")
        out.append("One forward + backward per batch of the next-token loss, activation gradients only (no weight "
                   "gradients): the cheapest gradient pass a peer method needs. Peak GB: CUDA allocator, GPU only.\n")
        out.append("| model | batch x seq x batches | variant | median s | ratio to DIET | peak GB |")
        out.append("|---|---|---|---|---|---|")
        for r in tay:
            out.append(f"| {r['model']} | {r['batch']} x {r['seq']} x {r['batches']} | {r['variant']} | "
                       f"{r['median_s']:.3f} | {r['ratio']:.2f} | {_f(r['peak_gb'] or None, '{:.1f}')} |")
        out.append("")

    skipped = [r for r in rows if r["kind"] in ("skipped", "error")]
    if skipped:
        out.append("Not measured: " + "; ".join(f"{r['model']} {r.get('what', '')}: {r.get('why', r.get('error'))}"
                                                for r in skipped) + "\n")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------- main

_DEADLINE = [float("inf")]


def time_left(_args=None) -> float:
    return _DEADLINE[0] - time.perf_counter()


def env_row(rec: Recorder, device: torch.device, dtype: torch.dtype, tiny: bool) -> None:
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    rec.add("env", date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), device=gpu,
            cuda_device=device.type == "cuda", tiny=tiny,
            torch=torch.__version__, cuda=torch.version.cuda, transformers=transformers.__version__,
            python=platform.python_version(), dtype=str(dtype).replace("torch.", ""),
            command=harness.command_line())
    say(f"device {gpu}; torch {torch.__version__}; transformers {transformers.__version__}")


def write(rows: list[dict], doc: str | None) -> None:
    text = render(rows)
    title = section_title(rows)
    print(f"## {title}\n\n" + "\n".join(metadata(rows)) + "\n\n" + text)
    if doc:
        harness.write_section(doc, title, text, metadata(rows))


def main(argv=None) -> int:
    global log_file
    harness.setup_env()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="gemma2_9b", help=f"comma list of {', '.join([*SHAPES, *REAL_WEIGHTS])}")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda or cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cache-dir", default="outputs/cache", help="holds the converted gemma3_270m checkpoint")
    p.add_argument("--sections", default="profile,prefill,decode,e2e",
                   help="comma list of profile, prefill, decode, taylor, e2e")
    p.add_argument("--tiny", action="store_true", help="tiny random shapes on the CPU in float32 (a smoke test)")
    p.add_argument("--seq", type=int, default=512, help="tokens per sample (prefill length; decode cache length)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--profile-bs", type=int, default=0, help="profiling batch size (default 16; 4 for gemma2_27b)")
    p.add_argument("--profile-batches", type=int, default=4)
    p.add_argument("--stats", default="eager,fused", help="statistics kernels the profile section times")
    p.add_argument("--e2e-tasks", type=int, default=7)
    p.add_argument("--e2e-samples", type=int, default=100)
    p.add_argument("--e2e-bs", type=int, default=16)
    p.add_argument("--e2e-sparsity", type=float, default=0.2)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="target:sparsity:multiple_of,...")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--decode-bs", default="1,8")
    p.add_argument("--decode-steps", type=int, default=15)
    p.add_argument("--taylor-bs", type=int, default=4)
    p.add_argument("--taylor-batches", type=int, default=4)
    p.add_argument("--taylor-reps", type=int, default=3)
    p.add_argument("--time-budget", type=float, default=0, help="seconds; sections past it are skipped (0: none)")
    p.add_argument("--min-section-s", type=float, default=20)
    p.add_argument("--json-out", default=None, help="append every result as a JSON line here")
    p.add_argument("--log", default=None, help="copy of the console output")
    p.add_argument("--doc", default=None,
                   help="write (replace) this run's section in this markdown file (e.g. docs/benchmarks.md)")
    p.add_argument("--render", nargs="*", default=None, help="only render saved JSON-lines files (no measurement)")
    args = p.parse_args(argv)

    if args.render is not None:
        rows = [json.loads(line) for path in args.render for line in Path(path).read_text().splitlines() if line]
        write(rows, args.doc)
        return 0

    started = time.perf_counter()
    if args.time_budget:
        _DEADLINE[0] = started + args.time_budget
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(args.log, "a")
    args.sections = [s for s in args.sections.split(",") if s]
    args.stats = [k for k in args.stats.split(",") if k]
    models = [m for m in args.models.split(",") if m]
    for flag, given, allowed in (("--stats", args.stats, ("eager", "fused")),
                                 ("--models", models, (*SHAPES, *REAL_WEIGHTS))):
        unknown = [v for v in given if v not in allowed]
        if unknown:
            print(f"bench_gpu: error: unknown {flag} value(s) {unknown}; allowed: {', '.join(allowed)}",
                  file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.decode_bs = [int(b) for b in args.decode_bs.split(",") if b]
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        args.seq = min(args.seq, 32)
        args.reps, args.profile_batches, args.e2e_samples = min(args.reps, 2), 2, min(args.e2e_samples, 8)
        args.e2e_bs, args.decode_steps, args.taylor_reps = min(args.e2e_bs, 4), min(args.decode_steps, 3), 1
        args.batch_sizes = [b for b in args.batch_sizes if b <= 8] or [1]
    else:
        want = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if want == "cuda" and not torch.cuda.is_available():
            print("bench_gpu: error: --device cuda: no CUDA device here; allowed: --device cpu (gemma3_270m) or --tiny",
                  file=sys.stderr)
            return 2
        too_big = [m for m in models if m not in REAL_WEIGHTS]
        if want == "cpu" and too_big:
            print(f"bench_gpu: error: --models {','.join(too_big)} on the CPU: billions of float32 parameters do not "
                  f"fit this machine; allowed on the CPU: {', '.join(REAL_WEIGHTS)} (real weights) or --tiny",
                  file=sys.stderr)
            return 2
        device = torch.device(want)
        dtype = torch.bfloat16 if want == "cuda" else torch.float32
    rec = Recorder(args.json_out)
    env_row(rec, device, dtype, args.tiny)
    clock = Clock(device)
    sections = [s for s in ("profile", "prefill", "taylor", "e2e") if s in args.sections]
    if "decode" in args.sections and "prefill" not in sections:
        sections.insert(0, "prefill")
        args.variants = ",".join(f"{t}:{s}:{m}" for t, s, m in [TARGET_VARIANT])
        args.batch_sizes = []
    bench = {"profile": bench_profile, "prefill": bench_prefill, "taylor": bench_taylor, "e2e": bench_e2e}
    for name in models:
        if time_left() < args.min_section_s:
            rec.add("skipped", model=name, what="all", why="time budget")
            continue
        say(f"== {name} ({time.perf_counter() - started:.0f} s in)")
        try:
            model, adapter, build_s, shape = build_model(name, device, dtype, args.tiny, args.cache_dir)
        except Exception as exc:
            rec.add("error", model=name, what="build", error=repr(exc)[:300])
            say(traceback.format_exc())
            free_memory()
            continue
        with torch.inference_mode():
            probe = torch.randint(3, shape["vocab_size"], (1, 16), device=device)
            finite = bool(torch.isfinite(model(input_ids=probe).logits).all())
        from diet.prune import count_params
        rec.add("model", model=name, params=count_params(model), build_s=build_s, finite=finite,
                attn_implementation=model.config._attn_implementation,
                shape={k: v for k, v in shape.items() if k != "family"})
        say(f"  built in {build_s:.1f} s; {count_params(model) / 1e9:.2f} B params; attention "
            f"{model.config._attn_implementation}; finite logits {finite}")
        # e2e prunes; it runs second on a deep copy when one fits on the device, else last on the model itself
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        args.e2e_on_copy = device.type == "cpu" or torch.cuda.mem_get_info()[0] > 1.6 * model_bytes
        order = (["profile", "e2e", "prefill", "taylor"] if args.e2e_on_copy else
                 ["profile", "prefill", "taylor", "e2e"])
        for section in [s for s in order if s in sections]:
            if time_left() < args.min_section_s:
                rec.add("skipped", model=name, what=section, why="time budget")
                say(f"  skip {section}: time budget")
                continue
            t0 = time.perf_counter()
            try:
                bench[section](rec, name, model, adapter, device, clock, args, shape)
            except Exception as exc:
                rec.add("error", model=name, what=section, error=repr(exc)[:300])
                say(traceback.format_exc())
            free_memory()
            say(f"  [{section} took {time.perf_counter() - t0:.1f} s]")
        del model, adapter
        free_memory()
    write(rec.rows, args.doc)
    say(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
