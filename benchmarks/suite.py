#!/usr/bin/env python
"""The whole benchmark suite in one command: the CPU parts always, the GPU part when CUDA is present.

  profile     bench_profile.py: hook overhead (time, allocator and process-RSS peaks), Gemma-3 270M, real weights
  prune       bench_prune.py: the run's vote + prune seconds vs profiling; pruned-vs-dense prefill at sparsity
              0.2/0.3/0.5, mlp, hidden, heads, mlp+heads (those diet accepts), multiple_of 1 and 128, batch 1/8/32,
              with parameter and FLOP ratios
  methods     bench_methods.py: every method (diet, generic, random, Wanda-sp, FLAP, ShortGPT, SLEB, SliceGPT) pruned
              to parameter budgets 0.2 and 0.4 on Gemma-3 270M, loaded back from its checkpoint and timed against
              dense in one interleaved loop: prefill and decode speed-ups, FLOP ratios
  models-cpu  bench_gpu.py --device cpu on gemma3_270m (real weights): the Taylor (gradient) importance pass vs
              DIET's forward-only profiling, end to end profile + vote + prune at 7 tasks x 100 samples, decode
  gpu         bench_gpu.py on CUDA in bf16: gemma3_270m (real weights) and the gemma2 2b/9b/27b and Llama-3-8B shapes
              (random weights), every section; skipped, and said so, without a GPU

Every part is a subprocess that writes its own sections (date, machine, versions, exact command) into `--doc`,
replacing the ones a previous run wrote there (one current section per benchmark; history lives in git).
Exit status: 0 when every part that ran succeeded, 1 otherwise (the failed parts are listed).

  python benchmarks/suite.py --cache-dir outputs/cache --doc docs/benchmarks.md             # ~40 min on 2 cores
  python benchmarks/suite.py --quick                                                        # ~8 min, prints only
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # each part records its command relative to the repository root itself
PARTS = ("profile", "prune", "methods", "models-cpu", "gpu")
GPU_MODELS = "gemma3_270m,gemma2_2b,gemma2_9b,gemma2_27b,llama3_8b"


def commands(args, has_cuda: bool) -> dict[str, list[str] | None]:
    common = ["--cache-dir", args.cache_dir] + (["--doc", args.doc] if args.doc else [])
    quick = ["--quick"] if args.quick else []
    cpu_models = ["--seq", "128", "--e2e-samples", "100", "--taylor-batches", "4", "--reps", "3"]
    if args.quick:
        cpu_models = ["--seq", "64", "--e2e-samples", "10", "--taylor-batches", "1", "--reps", "2",
                      "--taylor-reps", "1", "--decode-steps", "5"]
    python = sys.executable  # the suite's own interpreter: `python` on PATH may be another one, without diet
    return {
        "profile": [python, str(HERE / "bench_profile.py"), *common, *quick],
        "prune": [python, str(HERE / "bench_prune.py"), *common, *quick, "--batch-sizes",
                  "1,8" if args.quick else "1,8,32", "--multiple-of", "1,128",
                  "--tokens", "64" if args.quick else "128"],
        "methods": [python, str(HERE / "bench_methods.py"), *common,
                    *(["--budgets", "0.2", "--repeats", "2", "--decode-steps", "4"] if args.quick else [])],
        "models-cpu": [python, str(HERE / "bench_gpu.py"), "--device", "cpu", "--models", "gemma3_270m",
                       "--sections", "taylor,e2e,decode", "--stats", "eager", *cpu_models, *common],
        "gpu": [python, str(HERE / "bench_gpu.py"), "--device", "cuda", "--models", GPU_MODELS,
                "--sections", "profile,e2e,prefill,decode,taylor", "--time-budget", str(args.gpu_budget),
                *common] if has_cuda else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache-dir", default="outputs/cache", help="holds the converted Gemma-3 270M checkpoint")
    p.add_argument("--doc", default=None, help="markdown file in which each part writes (replaces) its sections")
    p.add_argument("--quick", action="store_true", help="smaller settings everywhere (a smoke run of the suite)")
    p.add_argument("--skip", default="", help=f"comma list of parts to leave out: {', '.join(PARTS)}")
    p.add_argument("--gpu-budget", type=float, default=1800, help="seconds for the GPU part")
    args = p.parse_args(argv)
    skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in skip if s not in PARTS]
    if unknown:
        print(f"suite: error: --skip {','.join(unknown)}: unknown part; allowed: {', '.join(PARTS)}", file=sys.stderr)
        return 2

    import torch

    has_cuda = torch.cuda.is_available()
    outcome = {}
    for part, cmd in commands(args, has_cuda).items():
        if part in skip:
            outcome[part] = "skipped (--skip)"
            continue
        if cmd is None:
            outcome[part] = "skipped: no CUDA device on this machine"
            continue
        print(f"== {part}: {shlex.join(cmd)}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(cmd)
        outcome[part] = f"{'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - started:.0f} s"
    print("\nsuite summary:")
    for part, text in outcome.items():
        print(f"  {part:10s} {text}")
    return 1 if any(text.startswith("FAILED") for text in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
