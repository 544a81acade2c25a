"""Vote/prune performance (Gemma-3 270M, CPU): (a) the run's vote and prune time against the profiling pass that
feeds them, (b) prefill speed of physically pruned models against the dense one, next to their parameter and FLOP
ratios.

    python benchmarks/bench_prune.py [--quick | --tiny] [--doc docs/benchmarks.md]

Everything diet does here goes through the run's own entry points, named once in `harness.py` (`run_config`,
`run_profile`, `run_vote`, `run_prune`): the config is the run's demo experiment with the overrides
each part states, so the masks come from the same code, budget rules and `prune.multiple_of` as in
`python -m diet.run`. A target diet does not accept yet (`heads`, `mlp+heads` before the heads target lands) is
skipped with diet's own refusal printed under the table.

(a) For each target, each repeat runs, in this order: the profiling pass over four demo tasks (`run_profile` over
    `calibration_set(task, n_docs, seed=0)` of demo_capitals, demo_antonyms, demo_sums, demo_plurals; max_length 512,
    batch 8; tokenizing included, as in the pipeline), the vote (`run_vote`: method diet, act_l2, majority, exact
    budget, sparsity 0.2, the model's multiple_of), and `run_prune` on a `copy.deepcopy` of the dense model (the
    copy is not timed). Reported: the median over repeats of (vote + prune) / profile.

(b) Prefill of B x S random token ids (seed 0, no padding), float32, `torch.inference_mode`, for the dense model and
    for models pruned with the run's `method=random` masks (seed 0; speed does not depend on which dimensions go;
    `--multiple-of 1,128` sets `prune.multiple_of`, so kept widths are multiples of it). Every model, the dense
    reference included, is a deep copy of the loaded one (the loaded weights are an mmap of the safetensors file;
    copies are anonymous memory), and a second dense copy, `dense copy`, is timed like a pruned model: its ratio to
    `dense` is the noise floor. After one untimed batch-1 pass of every model:
      decoder   `model.get_decoder()(input_ids, attention_mask, use_cache=False)`, all models interleaved with the
                order rotated each repeat (--repeats); the ratio to dense is taken per repeat, median reported;
      LM head   `model.lm_head(h)` on that decoder output h (all B*S positions, as `model(...)` computes them;
                Gemma-3 270M has no final logit soft-capping, so this is the only other work `model(...)` does),
                interleaved the same way (--head-repeats) after one untimed dense head pass at that batch size (the
                first 2 GiB logits allocation is slow). A model whose head has the dense shape reuses the dense
                head's time.
      with LM head = (median decoder + median LM head) / the same for dense.
    FLOPs are analytic, from the actual weight shapes (`harness.forward_flops`): 2 * in * out per token for q, k, v,
    o (by the heads each layer keeps, so removed heads cut q, o and their attention), gate, up, down, plus the LM
    head 2 * d * vocab per token for the "with LM head" columns, plus attention scores and values 2 * 2 * head_dim
    per query-key pair and query head (the full S x S product that eager attention computes, sliding layers
    included: their window is a mask on it); norms, activations, rotary and the embedding lookup are not counted.
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

import torch

import harness  # the benchmarks folder is sys.path[0] when a script runs

TITLE_VOTE = "Vote/prune: overhead against profiling ({model}, CPU)"
TITLE_SPEED = "Pruned-model prefill speed ({model}, CPU)"
MODEL_LABELS = {"gemma3_270m": "Gemma-3 270M"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cfg_for(target, overrides: list[str]):
    value = target if isinstance(target, str) else "[" + ",".join(target) + "]"
    return harness.run_config([f"prune.target={value}", *overrides])


def kept_description(model, adapter, target) -> str:
    """What the pruned model keeps of each part of `target`: MLP width, residual width, query heads per layer."""
    shape = harness.decoder_shape(model, adapter)
    parts = [target] if isinstance(target, str) else target
    out = []
    for part in parts:
        if part == "hidden":
            out.append(str(shape.layers[0].hidden))
            continue
        values = [ly.mlp if part == "mlp" else ly.q_heads for ly in shape.layers]
        text = str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"
        out.append(text + (" heads" if part == "heads" else ""))
    return " / ".join(out)


# ------------------------------------------------------------------------------------------------- (a) vote/prune

def vote_prune_overhead(loaded, texts: dict[str, list[str]], cfg, repeats: int) -> dict:
    from diet import profile

    target = cfg.prune.target
    tokens = sum(int(b["attention_mask"].sum()) for t in texts.values()
                 for b in profile.tokenize(loaded.tokenizer, t, cfg.calib.max_length, cfg.calib.batch_size))
    profile_s, vote_s, prune_s = [], [], []
    for r in range(repeats):
        started = time.perf_counter()
        stats = {name: harness.run_profile(loaded, t, cfg) for name, t in texts.items()}
        profile_s.append(time.perf_counter() - started)

        started = time.perf_counter()
        masks = harness.run_vote(cfg, loaded, stats)
        vote_s.append(time.perf_counter() - started)

        pruned = copy.deepcopy(loaded.model)
        started = time.perf_counter()
        harness.run_prune(pruned, loaded.adapter, masks, target)
        prune_s.append(time.perf_counter() - started)
        del pruned
        gc.collect()
        log(f"  {harness.target_label(target)} repeat {r + 1}/{repeats}: profile {profile_s[-1]:.2f}s, "
            f"vote {vote_s[-1] * 1e3:.1f}ms, prune {prune_s[-1] * 1e3:.1f}ms")
    fractions = [(v + p) / t for v, p, t in zip(vote_s, prune_s, profile_s)]
    return {"tokens": tokens, "profile": statistics.median(profile_s), "vote": statistics.median(vote_s),
            "prune": statistics.median(prune_s), "fraction": statistics.median(fractions),
            "fraction_range": (min(fractions), max(fractions))}


# ----------------------------------------------------------------------------------------------- (b) prefill speed

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
    for b in batch_sizes:
        hidden = {}

        def decoder_fn(name, ids=inputs[b]):
            def run():
                out = decoder_pass(models[name], ids)
                if name in own_head:
                    hidden[name] = out
            return run

        def head_fn(name):
            return lambda: head_pass(models[name], hidden[name])

        log(f"  batch {b}: decoder")
        decoder = harness.interleaved({n: decoder_fn(n) for n in models}, repeats, log=log)
        head_pass(models["dense"], hidden["dense"])  # untimed: the first full-size logits allocation is slow
        log(f"  batch {b}: LM head")
        head = harness.interleaved({n: head_fn(n) for n in own_head}, head_repeats, log=log)
        times[b] = {n: {"decoder": decoder[n], "head": list(head[n if n in own_head else "dense"])} for n in models}
        del hidden
    return times


# ----------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the converted checkpoint lives")
    parser.add_argument("--model", default="gemma3_270m", help="a conf/model name (the run's loader)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller run: 16 docs per task, sparsity 0.5 only, 128 tokens, 2 repeats")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: model tiny_gemma2 (random weights), 4 docs, sparsity 0.5, batch 1,2 x 16 "
                             "tokens, 1 repeat")
    parser.add_argument("--doc", metavar="MD", help="write (replace) this benchmark's sections in this markdown file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads are slowed "
                             "5-10x by any other load, which swamps the ratios)")
    parser.add_argument("--n-docs", type=int, default=None, help="(a) calibration documents per demo task (max 50)")
    parser.add_argument("--vote-sparsity", type=float, default=0.2)
    parser.add_argument("--vote-repeats", type=int, default=None)
    parser.add_argument("--sparsities", default=None, help="(b) comma-separated, default 0.2,0.3,0.5")
    parser.add_argument("--targets", default="mlp,hidden,heads,mlp+heads",
                        help="comma-separated; a+b prunes both (prune.target=[a,b]); targets diet does not accept "
                             "yet are skipped with its refusal in the output")
    parser.add_argument("--batch-sizes", default=None, help="(b) default 1,8")
    parser.add_argument("--tokens", type=int, default=None, help="(b) prefill length, default 256")
    parser.add_argument("--repeats", type=int, default=None, help="(b) interleaved decoder repeats, default 4")
    parser.add_argument("--head-repeats", type=int, default=None, help="(b) interleaved LM-head repeats, default 2")
    parser.add_argument("--multiple-of", default="1",
                        help="(b) prune.multiple_of for the random masks, comma-separated to compare several in one "
                             "run (e.g. 1,128)")
    parser.add_argument("--skip-vote", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-speed", action="store_true", help="skip part (b)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"n_docs": 16 if quick else 48, "vote_repeats": 2 if quick else 3,
                "sparsities": "0.5" if quick else "0.2,0.3,0.5", "tokens": 128 if quick else 256,
                "repeats": 2 if quick else 4, "head_repeats": 1 if quick else 2, "batch_sizes": "1,8"}
    if args.tiny:
        args.model = "tiny_gemma2"
        defaults = {"n_docs": 4, "vote_repeats": 1, "sparsities": "0.5", "tokens": 16, "repeats": 1,
                    "head_repeats": 1, "batch_sizes": "1,2"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def split_available(labels: list[str]) -> tuple[list, list[str]]:
    """(targets diet accepts, in the run's form; 'label: diet's refusal' for the others)."""
    ok, refused = [], []
    for label in labels:
        target = harness.parse_target(label)
        reason = harness.target_unavailable(target)
        if reason is None:
            ok.append(target)
        else:
            refused.append(f"`{label}`: {reason}")
    return ok, refused


def not_measured(refused: list[str]) -> str:
    if not refused:
        return ""
    return ("\nNot measured (diet does not accept these targets yet; the rows appear once it does): "
            + "; ".join(refused) + "\n")


def main(argv=None) -> None:
    harness.setup_env()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    from diet import DietError, prune, vote

    started = time.perf_counter()
    loaded = harness.load_model(harness.run_config([f"model={args.model}"]), args.cache_dir)
    model, adapter = loaded.model, loaded.adapter
    targets, refused = split_available([t for t in args.targets.split(",") if t])
    for line in refused:
        log(f"skip {line}")
    label = MODEL_LABELS.get(args.model, args.model)
    sections = {}
    model_setting = [f"model={args.model}", "seed=0"]

    if not args.skip_vote:
        texts = harness.calibration_texts(harness.load_demo_tasks(args.cache_dir), args.n_docs)
        rows = []
        multiple_of = None
        for target in targets:
            log(f"(a) vote + prune, target {harness.target_label(target)}")
            cfg = cfg_for(target, model_setting + ["method=diet", "scoring=act_l2", f"sparsity={args.vote_sparsity}",
                                                   "calib.max_length=512", "calib.batch_size=8"])
            multiple_of = cfg.prune.multiple_of
            res = vote_prune_overhead(loaded, texts, cfg, args.vote_repeats)
            lo, hi = res["fraction_range"]
            tokens_for_target = (res["vote"] + res["prune"]) / 0.02 * res["tokens"] / res["profile"]
            rows.append([harness.target_label(target), f"{res['tokens']}", f"{res['profile']:.2f}",
                         f"{res['vote'] * 1e3:.1f}", f"{res['prune'] * 1e3:.1f}",
                         f"**{res['fraction'] * 100:.2f}%** [{lo * 100:.2f}-{hi * 100:.2f}]",
                         "yes" if res["fraction"] < 0.02 else "**no**", f"{tokens_for_target:,.0f}"])
        table = harness.markdown_table(
            ["target", "profiled tokens", "profiling pass s", "vote ms", "prune ms", "(vote + prune) / profile",
             "< 2%", "profiled tokens at which it is 2%"], rows)
        sections[TITLE_VOTE.format(model=label)] = (
            f"The run's vote stage and pruning against the profiling pass they follow: {len(texts)} demo tasks x "
            f"{args.n_docs} calibration documents (max_length 512, batch 8), method diet, act_l2, majority vote, "
            f"exact budget, sparsity {args.vote_sparsity}, prune.multiple_of {multiple_of} (the model's default); "
            f"medians of {args.vote_repeats} repeats (the deep copy that pruning works on is not timed). Vote and "
            f"prune cost a fixed time and profiling grows with the calibration tokens, so the last column gives the "
            f"calibration size (at this run's profiling speed) above which the target holds.\n\n{table}\n"
            f"{not_measured(refused)}\nThreads: {torch.get_num_threads()}.\n")

    if not args.skip_speed:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        sparsities = [float(s) for s in args.sparsities.split(",")]
        # Every model is a deep copy (anonymous memory, like the pruned ones; the loaded weights are a file mmap).
        # "dense copy" is a second dense copy: its time ratio to "dense" is the noise floor of the comparison.
        models = {"dense": copy.deepcopy(model), "dense copy": copy.deepcopy(model)}
        info = {"dense": ("dense", 0.0), "dense copy": ("dense copy", 0.0)}
        seen, failed = set(), []
        for target in targets:
            for multiple_of in [int(m) for m in str(args.multiple_of).split(",")]:
                for sparsity in sparsities:
                    cfg = cfg_for(target, model_setting + ["method=random", f"sparsity={sparsity}",
                                                           f"prune.multiple_of={multiple_of}"])
                    try:
                        masks = harness.run_vote(cfg, loaded, {})
                    except DietError as err:
                        failed.append(f"{harness.target_label(target)} at sparsity {sparsity}, multiple_of "
                                      f"{multiple_of}: {err}")
                        continue
                    kept = (harness.target_label(target), tuple(int(m.sum()) for m in masks.values()))
                    if kept in seen:  # e.g. sparsity 0.5 keeps 1024 with or without multiple_of
                        continue
                    seen.add(kept)
                    pruned = copy.deepcopy(model)
                    harness.run_prune(pruned, adapter, masks, target)
                    name = f"{harness.target_label(target)}@{sparsity}" + (
                        f"/m{multiple_of}" if multiple_of != 1 else "")
                    models[name], info[name] = pruned.eval(), (target, vote.achieved_sparsity(masks))
                    log(f"  {name}: keeps {kept_description(pruned, adapter, target)}")
                    gc.collect()
        for line in failed:
            log(f"skip {line}")
        model = models["dense"]  # drop the loaded (mmapped) model
        loaded = None
        gc.collect()
        log(f"(b) prefill speed, {len(models)} models, {args.tokens} tokens, batches {batch_sizes}")
        times = prefill_speed(models, adapter, batch_sizes, args.tokens, args.repeats, args.head_repeats)
        dense_params = prune.count_params(model)
        shapes = {name: harness.decoder_shape(m, adapter) for name, m in models.items()}
        rows = []
        for b in batch_sizes:
            t = times[b]
            dense_dec = harness.forward_flops(shapes["dense"], b, args.tokens)
            dense_full = harness.forward_flops(shapes["dense"], b, args.tokens, with_head=True)
            dd = statistics.median(t["dense"]["decoder"])
            dh = statistics.median(t["dense"]["decoder"]) + statistics.median(t["dense"]["head"])
            rows.append([b, "dense", "-", "-", "1.000", f"{dd:.3f} s", f"{dense_dec / 1e9:.0f} GF", "", "",
                         f"{dh:.3f} s", f"{dense_full / 1e9:.0f} GF", "", ""])
            for name in models:
                if name == "dense":
                    continue
                target, achieved = info[name]
                f_dec = harness.forward_flops(shapes[name], b, args.tokens)
                f_full = harness.forward_flops(shapes[name], b, args.tokens, with_head=True)
                text = harness.target_label(target)
                row_label = f"{text}, multiple_of {name.split('/m')[1]}" if "/m" in name else text
                kept = "-" if name.startswith("dense") else kept_description(models[name], adapter, target)
                cells = [b, row_label, f"{achieved:.3f}" if name != "dense copy" else "-", kept,
                         f"{prune.count_params(models[name]) / dense_params:.3f}"]
                med = {k: statistics.median(t[name][k]) for k in ("decoder", "head")}
                dense_med = {k: statistics.median(t["dense"][k]) for k in ("decoder", "head")}
                ratio, lo, hi = harness.median_ratio(t[name]["decoder"], t["dense"]["decoder"])
                full_ratio = (med["decoder"] + med["head"]) / (dense_med["decoder"] + dense_med["head"])
                for text, time_ratio, f_p, f_d in ((f"{ratio:.3f} [{lo:.3f}-{hi:.3f}]", ratio, f_dec, dense_dec),
                                                   (f"{full_ratio:.3f}", full_ratio, f_full, dense_full)):
                    flop_ratio = f_p / f_d
                    if flop_ratio >= 1:  # the dense copy: no FLOPs removed, the time ratio is the noise floor
                        cells += [text, f"{flop_ratio:.3f}", "-", "-"]
                        continue
                    realised = (1 - time_ratio) / (1 - flop_ratio)
                    met = "yes" if realised >= 0.8 else "**no**"
                    cells += [text, f"{flop_ratio:.3f}", f"{realised:.3f}", met if b == 8 else f"({met})"]
                rows.append(cells)
        table = harness.markdown_table(  # the dense rows carry absolute seconds and FLOPs in the ratio columns
            ["batch", "target", "sparsity", "kept", "param ratio", "decoder: time ratio [range]",
             "decoder: FLOP ratio", "decoder: realised", "decoder: >= 0.8", "with LM head: time ratio",
             "with LM head: FLOP ratio", "with LM head: realised", "with LM head: >= 0.8"], rows)
        skipped = "".join(f"\nSkipped: {line}\n" for line in failed)
        sections[TITLE_SPEED.format(model=label)] = (
            f"Prefill speed of pruned vs dense: {args.tokens} tokens, float32, the run's random masks (method=random, "
            f"seed 0, prune.multiple_of {args.multiple_of}); every model, dense included, is a deep copy of the "
            f"loaded one, and `dense copy` is a second copy of the dense model whose ratio shows the noise floor. "
            f"kept: MLP width / residual width / query heads per layer, by target. decoder: median over "
            f"{args.repeats} interleaved repeats of the per-repeat ratio [range]. with LM head: (median decoder + "
            f"median `lm_head` time over all positions, {args.head_repeats} interleaved head repeats) / the same for "
            f"dense; models whose LM head keeps the dense shape reuse the dense head's time. Dense rows give "
            f"absolute time and FLOPs instead of ratios. realised = (1 - time ratio) / (1 - FLOP ratio); the issue's "
            f"target is >= 0.8 at batch 8 (batch-1 verdicts in brackets are informational). param ratio counts all "
            f"parameters, the tied embedding/LM head included.\n\n{table}\n{not_measured(refused)}{skipped}"
            f"\nThreads: {torch.get_num_threads()}.\n")

    total = f"Total benchmark time {time.perf_counter() - started:.0f} s (both parts)."
    for title, body in sections.items():
        print(f"## {title}\n\n{body}")
        if args.doc:
            harness.write_section(args.doc, title, body)
    print(total)


if __name__ == "__main__":
    main()
