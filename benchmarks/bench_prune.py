"""Vote/prune performance on Gemma-3 270M (CPU): (a) vote + prune time against the profiling pass that feeds them,
(b) prefill speed of physically pruned models against the dense one, next to their parameter and FLOP ratios.

    python benchmarks/bench_prune.py [--quick] [--append docs/benchmarks.md]

(a) For target mlp and hidden, each repeat runs, in this order: the profiling pass over four demo tasks
    (`diet.profile.profile_texts` over `calibration_set(task, n_docs, seed=0)` of demo_capitals, demo_antonyms,
    demo_sums, demo_plurals; max_length 512, batch 8; tokenizing included, as in the pipeline), the vote
    (`vote.group_scores(act_l2)` per task, `vote.task_masks`, `vote.merge`, sparsity 0.2), and `prune.prune_model`
    on a `copy.deepcopy` of the dense model (the copy is not timed). Reported: the median over repeats of
    (vote + prune) / profile.

(b) Prefill of B x S random token ids (seed 0, no padding), float32, `torch.inference_mode`, for the dense model and
    for models pruned with `vote.random_masks(widths, sparsity, seed=0)` (speed does not depend on which dimensions
    go; `--multiple-of 1,64` adds models whose kept widths are multiples of 64). Every model, the dense reference
    included, is a deep copy of the loaded one (the loaded weights are an mmap of the safetensors file; copies are
    anonymous memory), and a second dense copy, `dense copy`, is timed like a pruned model: its ratio to `dense` is
    the noise floor. After one untimed batch-1 pass of every model:
      decoder   `model.get_decoder()(input_ids, attention_mask, use_cache=False)`, all models interleaved with the
                order rotated each repeat (--repeats); the ratio to dense is taken per repeat, median reported;
      LM head   `model.lm_head(h)` on that decoder output h (all B*S positions, as `model(...)` computes them;
                Gemma-3 270M has no final logit soft-capping, so this is the only other work `model(...)` does),
                interleaved the same way (--head-repeats) after one untimed dense head pass at that batch size (the
                first 2 GiB logits allocation is slow). An mlp-pruned model's head is the dense head, so those rows
                reuse the dense head's time.
      with LM head = (median decoder + median LM head) / the same for dense.
    FLOPs are analytic, from the actual weight shapes: 2 * in * out per token for every linear (q, k, v, o, gate,
    up, down; plus the LM head 2 * d * vocab per token for the "with LM head" columns), plus attention scores and
    values 2 * 2 * S * S * head_dim per head, layer and sequence (the full S x S product that the CPU attention
    computes, window >= S); norms, activations, rotary and the embedding lookup are not counted.
    The issue's target: (1 - t_pruned/t_dense) >= 0.8 * (1 - flops_pruned/flops_dense) at batch 8; `realised` is
    (1 - t_pruned/t_dense) / (1 - flops_pruned/flops_dense), the target is met when it is >= 0.8.
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_profile as common  # noqa: E402  (sets the offline environment and sys.path before torch/diet)
import torch  # noqa: E402

from diet import profile, prune, scoring, vote  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mask_widths(model, adapter, target: str) -> dict[str, int]:
    if target == "hidden":
        return {"hidden": adapter.hidden_size(model)}
    return {f"mlp.{i}": w for i, w in enumerate(adapter.intermediate_sizes(model))}


# ------------------------------------------------------------------------------------------------- (a) vote/prune

def vote_prune_overhead(model, tokenizer, adapter, texts: dict[str, list[str]], target: str, sparsity: float,
                        repeats: int) -> dict:
    tokens = sum(int(b["attention_mask"].sum()) for t in texts.values() for b in profile.tokenize(tokenizer, t, 512, 8))
    profile_s, vote_s, prune_s = [], [], []
    for r in range(repeats):
        started = time.perf_counter()
        stats = {name: profile.profile_texts(model, adapter, tokenizer, t, target, max_length=512, batch_size=8)
                 for name, t in texts.items()}
        profile_s.append(time.perf_counter() - started)

        started = time.perf_counter()
        scores = {name: scoring.group_scores(s, "act_l2", target) for name, s in stats.items()}
        per_task = {name: vote.task_masks(s, sparsity) for name, s in scores.items()}
        masks, _ = vote.merge(per_task, scores, sparsity)
        vote_s.append(time.perf_counter() - started)

        pruned = copy.deepcopy(model)
        started = time.perf_counter()
        prune.prune_model(pruned, adapter, masks, target)
        prune_s.append(time.perf_counter() - started)
        del pruned
        gc.collect()
        log(f"  {target} repeat {r + 1}/{repeats}: profile {profile_s[-1]:.2f}s, vote {vote_s[-1] * 1e3:.1f}ms, "
            f"prune {prune_s[-1] * 1e3:.1f}ms")
    fractions = [(v + p) / t for v, p, t in zip(vote_s, prune_s, profile_s)]
    return {"tokens": tokens, "profile": statistics.median(profile_s), "vote": statistics.median(vote_s),
            "prune": statistics.median(prune_s), "fraction": statistics.median(fractions),
            "fraction_range": (min(fractions), max(fractions))}


# ----------------------------------------------------------------------------------------------- (b) prefill speed

def linear_flops_per_token(model, adapter) -> int:
    total = 0
    for layer in adapter.decoder_layers(model):
        attn = layer.self_attn
        gate, up, down = adapter.mlp_projections(layer)
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, gate, up, down):
            total += 2 * linear.weight.shape[0] * linear.weight.shape[1]
    return total


def attention_flops_per_sequence(model, adapter, seq: int) -> int:
    total = 0
    for layer in adapter.decoder_layers(model):
        attn = layer.self_attn
        heads = attn.q_proj.weight.shape[0] // attn.head_dim
        window = getattr(attn, "sliding_window", None) or seq
        total += 2 * 2 * seq * min(seq, window) * attn.head_dim * heads
    return total


def head_flops_per_token(model, adapter) -> int:
    weight = adapter.lm_head(model).weight
    return 2 * weight.shape[0] * weight.shape[1]


def flops(model, adapter, batch: int, seq: int) -> tuple[int, int]:
    """(decoder only, with LM head) FLOPs of one prefill of batch x seq tokens."""
    decoder = batch * seq * linear_flops_per_token(model, adapter) + batch * attention_flops_per_sequence(
        model, adapter, seq)
    return decoder, decoder + batch * seq * head_flops_per_token(model, adapter)


def prefill_speed(models: dict, adapter, batch_sizes: list[int], seq: int, repeats: int, head_repeats: int
                  ) -> dict:
    """{batch: {name: {"decoder": [s...], "head": [s...]}}}: decoder passes of all models interleaved (`repeats`
    rounds), then LM-head passes interleaved (`head_repeats` rounds) over the decoder outputs. Heads are timed only
    for models whose head differs from the dense one; the others get the dense head's times."""
    generator = torch.Generator().manual_seed(0)
    vocab = adapter.lm_head(models["dense"]).weight.shape[0]
    inputs = {b: torch.randint(4, vocab, (b, seq), generator=generator) for b in batch_sizes}
    dense_head = adapter.lm_head(models["dense"]).weight
    own_head = [name for name, m in models.items()
                if name == "dense" or adapter.lm_head(m).weight.shape != dense_head.shape]

    @torch.inference_mode()
    def decoder_pass(model, ids):
        return model.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False
                                   ).last_hidden_state

    @torch.inference_mode()
    def head_pass(model, hidden):
        return adapter.lm_head(model)(hidden)

    small = inputs[min(batch_sizes)]
    for model in models.values():  # untimed warm-up, cheapest batch
        head_pass(model, decoder_pass(model, small))
    times = {}
    names = list(models)
    for b in batch_sizes:
        times[b] = {name: {"decoder": [], "head": []} for name in names}
        hidden = {}
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                started = time.perf_counter()
                out = decoder_pass(models[name], inputs[b])
                times[b][name]["decoder"].append(time.perf_counter() - started)
                if name in own_head:
                    hidden[name] = out
                del out
            log(f"  batch {b} decoder repeat {r + 1}/{repeats}: "
                + ", ".join(f"{n} {times[b][n]['decoder'][-1]:.2f}" for n in names))
        head_pass(models["dense"], hidden["dense"])  # untimed: the first full-size logits allocation is slow
        for r in range(head_repeats):
            order = own_head[r % len(own_head):] + own_head[:r % len(own_head)]
            for name in order:
                started = time.perf_counter()
                logits = head_pass(models[name], hidden[name])
                times[b][name]["head"].append(time.perf_counter() - started)
                del logits
            log(f"  batch {b} LM head repeat {r + 1}/{head_repeats}: "
                + ", ".join(f"{n} {times[b][n]['head'][-1]:.2f}" for n in own_head))
        for name in names:
            if name not in own_head:
                times[b][name]["head"] = list(times[b]["dense"]["head"])
    return times


# ----------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the converted checkpoint lives")
    parser.add_argument("--quick", action="store_true",
                        help="smaller run: 16 docs per task, sparsity 0.5 only, 128 tokens, 2 repeats")
    parser.add_argument("--append", metavar="MD", help="append the tables to this markdown file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads are slowed "
                             "5-10x by any other load, which swamps the ratios)")
    parser.add_argument("--n-docs", type=int, default=None, help="(a) calibration documents per demo task (max 50)")
    parser.add_argument("--vote-sparsity", type=float, default=0.2)
    parser.add_argument("--vote-repeats", type=int, default=None)
    parser.add_argument("--sparsities", default=None, help="(b) comma-separated, default 0.2,0.3,0.5")
    parser.add_argument("--targets", default="mlp,hidden")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--tokens", type=int, default=None, help="(b) prefill length, default 256")
    parser.add_argument("--repeats", type=int, default=None, help="(b) interleaved decoder repeats, default 4")
    parser.add_argument("--head-repeats", type=int, default=None, help="(b) interleaved LM-head repeats, default 2")
    parser.add_argument("--multiple-of", default="1",
                        help="(b) random_masks(multiple_of=...), comma-separated to compare several in one run "
                             "(e.g. 1,64); kept widths are rounded to multiples of it")
    parser.add_argument("--skip-vote", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-speed", action="store_true", help="skip part (b)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"n_docs": 16 if quick else 48, "vote_repeats": 2 if quick else 3,
                "sparsities": "0.5" if quick else "0.2,0.3,0.5", "tokens": 128 if quick else 256,
                "repeats": 2 if quick else 4, "head_repeats": 1 if quick else 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer, adapter = common.load_model(args.cache_dir)
    targets = args.targets.split(",")
    if args.multiple_of != "1" and "hidden" in targets:
        log("note: multiple_of also rounds the hidden width")
    sections = []

    if not args.skip_vote:
        texts = common.calibration_texts(common.load_demo_tasks(args.cache_dir), args.n_docs)
        rows = []
        for target in targets:
            log(f"(a) vote + prune, target {target}")
            res = vote_prune_overhead(model, tokenizer, adapter, texts, target, args.vote_sparsity, args.vote_repeats)
            lo, hi = res["fraction_range"]
            tokens_for_target = (res["vote"] + res["prune"]) / 0.02 * res["tokens"] / res["profile"]
            rows.append([target, f"{res['tokens']}", f"{res['profile']:.2f}", f"{res['vote'] * 1e3:.1f}",
                         f"{res['prune'] * 1e3:.1f}",
                         f"**{res['fraction'] * 100:.2f}%** [{lo * 100:.2f}-{hi * 100:.2f}]",
                         "yes" if res["fraction"] < 0.02 else "**no**", f"{tokens_for_target:,.0f}"])
        table = common.markdown_table(
            ["target", "profiled tokens", "profiling pass s", "vote ms", "prune ms", "(vote + prune) / profile",
             "< 2%", "profiled tokens at which it is 2%"], rows)
        sections.append(
            f"(a) Vote + prune against the profiling pass they follow: {len(texts)} demo tasks x {args.n_docs} "
            f"calibration documents (batch 8), act_l2, majority merge, sparsity {args.vote_sparsity}; medians of "
            f"{args.vote_repeats} repeats (the deep copy that prune_model works on is not timed). Vote and prune "
            f"cost a fixed time and profiling grows with the calibration tokens, so the last column gives the "
            f"calibration size (at this run's profiling speed) above which the target holds.\n\n{table}\n")

    if not args.skip_speed:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        sparsities = [float(s) for s in args.sparsities.split(",")]
        # Every model is a deep copy (anonymous memory, like the pruned ones; the loaded weights are a file mmap).
        # "dense copy" is a second dense copy: its time ratio to "dense" is the noise floor of the comparison.
        models = {"dense": copy.deepcopy(model), "dense copy": copy.deepcopy(model)}
        info = {"dense": ("dense", 0.0), "dense copy": ("dense copy", 0.0)}
        seen_widths = set()
        for target in targets:
            for multiple_of in [int(m) for m in str(args.multiple_of).split(",")]:
                for sparsity in sparsities:
                    masks = vote.random_masks(mask_widths(model, adapter, target), sparsity, seed=0,
                                              multiple_of=multiple_of)
                    widths = (target, tuple(int(m.sum()) for m in masks.values()))
                    if widths in seen_widths:  # e.g. sparsity 0.5 keeps 1024 with or without multiple_of
                        continue
                    seen_widths.add(widths)
                    pruned = copy.deepcopy(model)
                    prune.prune_model(pruned, adapter, masks, target)
                    name = f"{target}@{sparsity}" + (f"/m{multiple_of}" if multiple_of != 1 else "")
                    log(f"  {name}: kept width {widths[1][0]}")
                    models[name], info[name] = pruned.eval(), (target, vote.achieved_sparsity(masks))
                    gc.collect()
        model = models["dense"]  # drop the loaded (mmapped) model
        gc.collect()
        log(f"(b) prefill speed, {len(models)} models, {args.tokens} tokens, batches {batch_sizes}")
        times = prefill_speed(models, adapter, batch_sizes, args.tokens, args.repeats, args.head_repeats)
        dense_params = prune.count_params(model)
        rows = []
        kept = {name: ("-" if name.startswith("dense") else
                       str(mask_widths(m, adapter, info[name][0])["hidden" if info[name][0] == "hidden" else "mlp.0"]))
                for name, m in models.items()}
        for b in batch_sizes:
            t = times[b]
            dense_dec, dense_full = flops(model, adapter, b, args.tokens)
            dd = statistics.median(t["dense"]["decoder"])
            dh = statistics.median(t["dense"]["decoder"]) + statistics.median(t["dense"]["head"])
            rows.append([b, "dense", "-", "-", "1.000", f"{dd:.3f} s", f"{dense_dec / 1e9:.0f} GF", "", "",
                         f"{dh:.3f} s", f"{dense_full / 1e9:.0f} GF", "", ""])
            for name in models:
                if name == "dense":
                    continue
                target, achieved = info[name]
                f_dec, f_full = flops(models[name], adapter, b, args.tokens)
                label = f"{target}, multiple_of {name.split('/m')[1]}" if "/m" in name else target
                cells = [b, label, f"{achieved:.3f}" if name != "dense copy" else "-", kept[name],
                         f"{prune.count_params(models[name]) / dense_params:.3f}"]
                med = {k: statistics.median(t[name][k]) for k in ("decoder", "head")}
                dense_med = {k: statistics.median(t["dense"][k]) for k in ("decoder", "head")}
                ratios = [p / d for p, d in zip(t[name]["decoder"], t["dense"]["decoder"])]
                full_ratio = (med["decoder"] + med["head"]) / (dense_med["decoder"] + dense_med["head"])
                for text, time_ratio, f_p, f_d in (
                        (f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]",
                         statistics.median(ratios), f_dec, dense_dec),
                        (f"{full_ratio:.3f}", full_ratio, f_full, dense_full)):
                    flop_ratio = f_p / f_d
                    if flop_ratio >= 1:  # the dense copy: no FLOPs removed, the time ratio is the noise floor
                        cells += [text, f"{flop_ratio:.3f}", "-", "-"]
                        continue
                    realised = (1 - time_ratio) / (1 - flop_ratio)
                    met = "yes" if realised >= 0.8 else "**no**"
                    cells += [text, f"{flop_ratio:.3f}", f"{realised:.3f}", met if b == 8 else f"({met})"]
                rows.append(cells)
        table = common.markdown_table(  # the dense rows carry absolute seconds and FLOPs in the ratio columns
            ["batch", "target", "sparsity", "kept width", "param ratio", "decoder: time ratio [range]",
             "decoder: FLOP ratio",
             "decoder: realised", "decoder: >= 0.8", "with LM head: time ratio", "with LM head: FLOP ratio",
             "with LM head: realised", "with LM head: >= 0.8"], rows)
        sections.append(
            f"(b) Prefill speed of pruned vs dense: {args.tokens} tokens, float32, random masks (seed 0"
            f"{', multiple_of ' + args.multiple_of if args.multiple_of != '1' else ''}); every model, dense "
            f"included, is a deep copy of the loaded one, and `dense copy` is a second copy of the dense model whose "
            f"ratio shows the noise floor. decoder: median over {args.repeats} interleaved repeats of "
            f"the per-repeat ratio [range]. with LM head: (median decoder + median `lm_head` time over all positions, "
            f"{args.head_repeats} interleaved head repeats) / the same for dense; mlp-pruned models reuse the dense "
            f"head's time (identical weights). Dense rows give absolute time and FLOPs instead of ratios. "
            f"realised = (1 - time ratio) / (1 - FLOP ratio); the issue's target is >= 0.8 at batch 8 (batch-1 "
            f"verdicts in brackets are informational). param ratio counts all parameters, the tied 262k x d "
            f"embedding/LM head (168M of 268M) included.\n\n{table}\n")

    body = "\n".join(sections) + f"\nThreads: {torch.get_num_threads()}. Total benchmark time " \
                                 f"{time.perf_counter() - started:.0f} s.\n"
    print(body)
    if args.append:
        common.append_markdown(args.append, "Vote/prune: overhead and pruned-model speed (Gemma-3 270M, CPU)", body)


if __name__ == "__main__":
    main()
