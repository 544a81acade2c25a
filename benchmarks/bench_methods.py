"""The speed each method's pruned model really gains: DIET and the literature's methods pruned to the same budgets of
the decoder's parameters (`prune.budget=params`), every pruned model loaded back and timed against the dense one and
against each other in one process.

    python benchmarks/bench_methods.py [--budgets 0.2,0.4] [--device cpu|cuda] [--tiny] [--doc docs/benchmarks.md]

Each row is a real run (`diet.run.run` on the demo experiment with the row's overrides, seed 0, `prune.save=true`,
evaluation cut to one item a task: the masks are what matter here), its `pruned_model/` read back with
`diet.prune.load_pruned`: the checkpoint a user would ship, not the in-memory model. The rows (`--methods`):

    diet       method=diet, FFN neurons              wanda_sp   method=wanda_sp, FFN neurons and heads
    generic    method=generic, FFN neurons           flap       method=flap, FFN neurons and heads
    random     method=random, FFN neurons            shortgpt   method=shortgpt, whole layers
    slicegpt   method=slicegpt, residual width       sleb       method=sleb, whole layers

The peers calibrate on `--calib-text` (default pydoc, offline: the demo's general-English text). diet, generic and
random remove the same number of neurons per layer, so their times differ only by noise: the spread between them,
and `dense copy` (a deep copy of the dense model timed as if pruned), are the noise floor of this machine.

Timing (diet.speed, as `eval.speed=true` times one pair): every model, the dense one included, in one interleaved
loop with the order rotated each repeat (`--repeats`), after one untimed round; prefill is one forward of B x S
random token ids (seed 0) without a cache, decode one new token per step against a KV cache of S tokens
(`--decode-steps` interleaved steps). Each ratio is dense time / model time per repeat (so > 1 is faster); the
median and [min-max] over repeats are reported. Every timed model is a deep copy (anonymous memory): dense and
`dense copy` of the loaded model, each pruned one of what `load_pruned` read, since loaded weights can be an mmap
of the checkpoint file. FLOP ratio: the analytic forward FLOPs of the pruned shapes, LM
head included (`diet.speed.forward_flops`, a rotated model's shortcut matrices counted), over dense's. params
removed: the fraction of the decoder layers' parameters removed, from the run's results.json (negative: the
model grew).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import harness  # the benchmarks folder is sys.path[0] when a script runs

TITLE = "Measured speed of each method's pruned model ({model}, {device})"
ROWS = {
    "diet": ("FFN neurons", ["method=diet", "prune.target=mlp"]),
    "generic": ("FFN neurons", ["method=generic", "prune.target=mlp"]),
    "random": ("FFN neurons", ["method=random", "prune.target=mlp"]),
    "wanda_sp": ("neurons + heads", ["method=wanda_sp", "prune.target=[mlp,heads]"]),
    "flap": ("neurons + heads", ["method=flap", "prune.target=[mlp,heads]"]),
    "shortgpt": ("layers", ["method=shortgpt", "prune.target=layers"]),
    "sleb": ("layers", ["method=sleb", "prune.target=layers"]),
    "slicegpt": ("residual width (rotated)", ["method=slicegpt"]),
}
TEXT_METHODS = {"wanda_sp", "flap", "shortgpt", "sleb", "slicegpt"}
TINY = ["model=tiny_gemma2", "model.config.num_hidden_layers=4", "calib.max_length=32", "calib.n_samples=4",
        "prune.multiple_of=1"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prune_one(name: str, budget: float, args, work: Path):
    """The row's run in `work`, then its saved checkpoint loaded back: (model, results.json)."""
    from diet import run as diet_run
    from diet.prune import load_pruned

    overrides = [*ROWS[name][1], "prune.budget=params", f"sparsity={budget}", "seed=0", "prune.save=true",
                 "eval.limit=1", "eval.dense=false", "eval.speed=false", "eval.bootstrap_iters=0",
                 f"cache_dir={args.cache_dir}", f"model.dtype={args.dtype}", f"device={args.device}",
                 *([f"calib.text={args.calib_text}"] if name in TEXT_METHODS else []), *(TINY if args.tiny else [])]
    cfg = harness.run_config(overrides)
    run_dir = work / f"{name}_{budget}"
    started = time.perf_counter()
    diet_run.run(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    model, _ = load_pruned(run_dir / "pruned_model")  # the saved dtype: the run's
    model = copy.deepcopy(model).to(args.device).eval()  # as dense: anonymous memory, not a view of the file
    log(f"{name} at {budget}: pruned, saved and loaded back in {time.perf_counter() - started:.0f} s")
    return model, results


def measure(models: dict, adapter, args) -> dict:
    """Per model: {prefill: (median, min, max), decode: (median, min, max)} of dense time / its time per repeat."""
    import torch

    device = torch.device(args.device)
    vocab = adapter.embedding(models["dense"]).weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    timer = harness.device_timer(device)
    prefill = harness.interleaved({n: harness.prefill_call(m, ids) for n, m in models.items()}, args.repeats,
                                  warmup=1, timer=timer, log=log)
    decode = harness.interleaved({n: harness.decode_step(m, ids[:1]) for n, m in models.items()}, args.decode_steps,
                                 warmup=2, timer=timer)
    return {n: {"prefill": harness.median_ratio(prefill["dense"], prefill[n]),
                "decode": harness.median_ratio(decode["dense"], decode[n]),
                "prefill_s": min(prefill[n]), "decode_s": min(decode[n])} for n in models}


def ratio(stat) -> str:
    median, low, high = stat
    return f"{median:.2f} [{low:.2f}-{high:.2f}]"


def parse(argv):
    p = argparse.ArgumentParser(prog="bench_methods", description=__doc__.split("\n")[0])
    p.add_argument("--cache-dir", default="outputs/cache", help="the run's cache_dir (converted model, profiles)")
    p.add_argument("--budgets", default="0.2,0.4", help="fractions of the decoder's parameters removed")
    p.add_argument("--methods", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    p.add_argument("--calib-text", default="pydoc", help="the peers' calib.text (pydoc: offline)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="model dtype (default float32 on the CPU, bfloat16 on CUDA)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="interleaved prefill rounds")
    p.add_argument("--decode-steps", type=int, default=16, help="interleaved decode steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: robust to other load)")
    p.add_argument("--tiny", action="store_true", help="tiny Gemma-2 shapes: a smoke test, numbers meaningless")
    p.add_argument("--doc", metavar="MD", help="write (replace) this benchmark's section in this markdown file")
    p.add_argument("--json-out", metavar="FILE", help="also write every figure as JSON")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods.split(",") if m not in ROWS]
    if unknown:
        p.error(f"--methods {','.join(unknown)}: unknown; allowed: {', '.join(ROWS)}")
    try:
        args.budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        p.error(f"--budgets {args.budgets}: not a comma list of numbers")
    if not all(0 < b < 1 for b in args.budgets):
        p.error(f"--budgets {','.join(map(str, args.budgets))}: each must lie in (0, 1)")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.tiny:  # a smoke test: small shapes, budgets of at least 0.25 only (0.4 when none is left)
        args.batch, args.seq, args.repeats, args.decode_steps = 2, 16, 2, 2
        args.budgets = [b for b in args.budgets if b >= 0.25] or [0.4]
    return args


def main(argv=None) -> int:
    harness.setup_env()
    args = parse(argv)
    from diet import DietError

    try:
        return run(args)
    except DietError as err:  # a row diet refuses (a budget a structure cannot meet): diet's own line
        print(f"bench_methods: error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg = harness.run_config([f"model.dtype={args.dtype}", *(TINY if args.tiny else [])])
    loaded = harness.load_model(cfg, args.cache_dir)
    adapter = loaded.adapter
    # loaded weights can be an mmap of the checkpoint; every timed model is a deep copy (see the docstring)
    dense = copy.deepcopy(loaded.model).to(args.device).eval()
    models = {"dense": dense, "dense copy": copy.deepcopy(dense)}
    del loaded
    meta = {"dense": ("-", None, None), "dense copy": ("-", None, None)}
    with tempfile.TemporaryDirectory(prefix="bench_methods_") as work:
        for budget in args.budgets:
            for name in args.methods.split(","):
                model, results = prune_one(name, budget, args, Path(work))
                models[f"{name} {budget:g}"] = model
                meta[f"{name} {budget:g}"] = (ROWS[name][0], budget, results["sparsity"]["params"]["decoder"])
                gc.collect()
    figures = measure(models, adapter, args)
    dense_shape = harness.decoder_shape(dense, adapter)
    table, records = [], []
    for name, model in models.items():
        structure, budget, removed = meta[name]
        flops = (harness.forward_flops(harness.decoder_shape(model, adapter), args.batch, args.seq, with_head=True)
                 / harness.forward_flops(dense_shape, args.batch, args.seq, with_head=True))
        f = figures[name]
        table.append([name.split()[0] if budget is not None else name, structure,
                      "-" if budget is None else f"{budget:g}", "-" if removed is None else f"{removed:.3f}",
                      f"{flops:.3f}", ratio(f["prefill"]), ratio(f["decode"])])
        records.append({"row": name, "structure": structure, "budget": budget, "decoder_params_removed": removed,
                        "flop_ratio": flops, "prefill_speedup": f["prefill"], "decode_speedup": f["decode"],
                        "prefill_s": f["prefill_s"], "decode_s": f["decode_s"]})
    header = ["method", "removes", "budget (params)", "params removed", "FLOP ratio", "prefill ×", "decode ×"]
    body = (f"Batch {args.batch} x {args.seq} tokens, {args.dtype}, {args.device}, torch threads {args.threads}; "
            f"{args.repeats} interleaved prefill rounds and {args.decode_steps} decode steps over all "
            f"{len(models)} models (one process, {time.perf_counter() - started:.0f} s in all). × = dense time / "
            f"the model's time, median [min-max] over rounds (> 1: faster). Dense prefill "
            f"{figures['dense']['prefill_s']:.3f} s, decode step {1000 * figures['dense']['decode_s']:.1f} ms "
            f"(fastest round). Method in `benchmarks/bench_methods.py`'s docstring.\n\n"
            + harness.markdown_table(header, table))
    print(body)
    model_name = "tiny shapes" if args.tiny else {"gemma3_270m": "Gemma-3 270M"}.get(cfg.model.name, cfg.model.name)
    if args.json_out:
        Path(args.json_out).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if args.doc:
        harness.write_section(args.doc, TITLE.format(model=model_name, device=args.device.upper() if args.device ==
                                                     "cpu" else "GPU"), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
