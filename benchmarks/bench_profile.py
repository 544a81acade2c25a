"""Profile-stage performance on Gemma-3 270M (CPU): `diet.profile.collect` vs the same forward passes without hooks.

    python benchmarks/bench_profile.py [--quick | --tiny] [--doc docs/benchmarks.md]

Settings (both from the demo tasks, no network needed):
  short  the pipeline's own calibration batches: `calibration_set(demo_capitals, n_docs, seed=0)` tokenized by
         `diet.profile.tokenize` (max_length 512, batch 8, right-padded, sorted by length): ~8-token documents.
  long   n x L tokens, no padding: the calibration texts of the four demo tasks (48 each, interleaved round-robin,
         joined by newlines) form one deterministic stream; document i is that stream rotated to start at text 24*i,
         truncated to L tokens.

Variants, timed interleaved (A B C D, A B C D, ... with the order rotated every repeat) after one untimed pass each:
  plain   `model.get_decoder()(input_ids, attention_mask, use_cache=False)` per batch under inference_mode: exactly
          the forward that collect runs;
  mlp / hidden   `diet.profile.collect(model, adapter, batches, target)` (hooks registered and removed inside);
  full    `model(input_ids, attention_mask, use_cache=False)`: the decoder plus the LM head (262k-vocab logits),
          i.e. what a naive implementation would run.
Ratios are taken within each repeat (collect_r / plain_r) and the median over repeats is reported.

Peak memory, two methods:
  alloc  torch's CPU allocator, through torch.profiler(profile_memory=True): the largest "Total Allocated" during
         one pass minus the value before it, i.e. the peak of live tensor bytes the pass itself allocated (weights
         excluded). Exact and deterministic, but blind to non-torch memory and to freed memory that the C
         allocator (glibc malloc) keeps resident, i.e. to heap fragmentation.
  rss    process level: each variant runs in fresh subprocesses (load model, build batches, fault in every weight
         page, read VmRSS, reset the peak with `echo 5 > /proc/self/clear_refs`, run one pass, read VmHWM),
         --rss-samples times for the long setting (once for the short one), two processes at a time. Reported as
         the median peak RSS of the whole process (weights included), the median and largest growth over the
         pre-pass RSS, and the ratio of median peaks (worst sample in brackets). Several samples matter: glibc's
         heap layout after loading differs from run to run, and so does how much freed memory a pass pins.
The issue's target (profiling peak within 5% of the plain forward) is checked on both the activation peak (alloc)
and the process peak (rss).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness  # the benchmarks folder is sys.path[0] when a script runs

TITLE = "Profile stage: hook overhead (Gemma-3 270M, CPU)"


def alloc_peak(fn) -> tuple[int, object]:
    """(peak bytes of live CPU tensors allocated by fn(), its result), from the profiler's memory events."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [(e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    if not totals:
        return 0, result
    start = totals[0][0] - totals[0][1]
    return max(t for t, _ in totals) - start, result


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_peak_of(fn) -> dict[str, float]:
    """Run fn() once; (peak RSS of the process during it, RSS before it) in MiB. Needs a fresh process to mean
    much: freed memory that the allocator kept from earlier work would hide new allocations."""
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return {"before_mib": before / 1024, "peak_mib": _status_kb("VmHWM") / 1024}


# ---------------------------------------------------------------------------------------------- this benchmark

def build_settings(tokenizer, cache_dir: str, n_docs: int, batch_size: int, long_docs: int, long_tokens: int):
    from diet import profile

    task_objects = harness.load_demo_tasks(cache_dir)
    short_texts = harness.calibration_texts({"demo_capitals": task_objects["demo_capitals"]},
                                            n_docs)["demo_capitals"]
    short = profile.tokenize(tokenizer, short_texts, 512, batch_size)
    per_task = harness.calibration_texts(task_objects, 48)
    stream = [texts[i] for i in range(48) for texts in per_task.values()]
    long_texts = ["\n".join(stream[24 * i:] + stream[:24 * i]) for i in range(long_docs)]
    long = profile.tokenize(tokenizer, long_texts, long_tokens, batch_size)
    return {
        f"short: {n_docs} docs of demo_capitals, batch {batch_size}": short,
        f"long: {long_docs} x {long_tokens} tokens, batch {batch_size}": long,
    }


def make_variants(model, adapter, batches) -> dict:
    from diet import profile

    decoder = model.get_decoder()

    @torch.inference_mode()
    def plain():
        for b in batches:
            decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)

    @torch.inference_mode()
    def full():
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)

    return {
        "plain": plain,
        "mlp": lambda: profile.collect(model, adapter, batches, "mlp"),
        "hidden": lambda: profile.collect(model, adapter, batches, "hidden"),
        "full": full,
    }


def load(args):
    loaded = harness.load_model(harness.run_config([f"model={args.model}"]), args.cache_dir)
    return loaded.model, loaded.tokenizer, loaded.adapter


def rss_worker(args) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer, adapter = load(args)
    settings = build_settings(tokenizer, args.cache_dir, args.n_docs, args.batch_size, args.long_docs,
                              args.long_tokens)
    batches = list(settings.values())[args.rss_worker_setting]
    fn = make_variants(model, adapter, batches)[args.rss_worker_variant]
    with torch.no_grad():  # fault in every weight page first (safetensors weights may be mmapped, read lazily)
        for parameter in model.parameters():
            parameter.sum()
    print("RSS " + json.dumps(rss_peak_of(fn)))


def rss_in_subprocesses(args, setting_index: int, variants: list[str], samples: int) -> dict[str, list[dict]]:
    """Each variant `samples` times, each in a fresh process; two processes at a time (memory, not time, is
    measured, so they may share the cores)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(variant: str):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cache-dir", args.cache_dir, "--model", args.model,
               "--threads", str(args.threads), "--n-docs", str(args.n_docs), "--batch-size", str(args.batch_size),
               "--long-docs", str(args.long_docs), "--long-tokens", str(args.long_tokens),
               "--rss-worker-setting", str(setting_index), "--rss-worker-variant", variant]
        done = subprocess.run(cmd, capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if line.startswith("RSS "):
                return variant, json.loads(line[4:])
        print(f"rss worker failed ({variant}): {done.stderr[-2000:]}", file=sys.stderr)
        return variant, None

    jobs = [v for _ in range(samples) for v in variants]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, jobs))
    out: dict[str, list[dict]] = {v: [] for v in variants}
    for variant, result in results:
        if result is not None:
            out[variant].append(result)
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the converted checkpoint lives")
    parser.add_argument("--quick", action="store_true", help="smaller run: 16 docs, 4 x 128 tokens, fewer repeats, "
                                                             "no rss subprocesses")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test: model tiny_gemma2 (random weights), 8 docs, 2 x 32 tokens, 1 repeat, no rss")
    parser.add_argument("--model", default="gemma3_270m", help="a conf/model name (the run's loader)")
    parser.add_argument("--doc", metavar="MD", help="write (replace) this benchmark's section in this markdown file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads are slowed "
                             "5-10x by any other load, which swamps the ratios)")
    parser.add_argument("--n-docs", type=int, default=None, help="short setting: calibration documents (max 50)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-docs", type=int, default=None)
    parser.add_argument("--long-tokens", type=int, default=None)
    parser.add_argument("--repeats-short", type=int, default=None)
    parser.add_argument("--repeats-long", type=int, default=None)
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-subprocess RSS measurement")
    parser.add_argument("--rss-samples", type=int, default=3,
                        help="fresh processes per variant for the long setting's RSS (the short setting uses 1)")
    parser.add_argument("--rss-worker-setting", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-worker-variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"n_docs": 16 if quick else 48, "long_docs": 4 if quick else 8, "long_tokens": 128 if quick else 256,
                "repeats_short": 3 if quick else 5, "repeats_long": 2 if quick else 3}
    if args.tiny:
        args.model = "tiny_gemma2"
        defaults = {"n_docs": 8, "long_docs": 2, "long_tokens": 32, "repeats_short": 1, "repeats_long": 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick or args.tiny:
        args.no_rss = True
    return args


def main(argv=None) -> None:
    harness.setup_env()
    args = parse_args(argv)
    if args.rss_worker_variant is not None:
        rss_worker(args)
        return
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    model, tokenizer, adapter = load(args)
    settings = build_settings(tokenizer, args.cache_dir, args.n_docs, args.batch_size, args.long_docs,
                              args.long_tokens)
    timing_rows, memory_rows = [], []
    for index, (setting, batches) in enumerate(settings.items()):
        tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
        padded = int(sum(b["attention_mask"].numel() for b in batches))
        variants = make_variants(model, adapter, batches)
        log(f"{setting}: {len(batches)} batches, {tokens} tokens ({padded} with padding)")
        # One untimed pass of each variant (it warms up, and gives the allocator peak).
        peaks, results = {}, {}
        for name, fn in variants.items():
            peaks[name], results[name] = alloc_peak(fn)
        stats_bytes = {t: sum(x.numel() * x.element_size() for point in results[t].values() for x in point.values())
                       for t in ("mlp", "hidden")}
        del results
        log("  alloc peaks MiB: " + ", ".join(f"{n} {p / 2**20:.1f}" for n, p in peaks.items()))
        repeats = args.repeats_short if index == 0 else args.repeats_long
        times = harness.interleaved(variants, repeats, log=log)
        plain = statistics.median(times["plain"])
        rss = {}
        if not args.no_rss:
            samples = 1 if index == 0 else args.rss_samples
            rss = rss_in_subprocesses(args, index, ["plain", "mlp", "hidden"], samples)
            for name, results in rss.items():
                log(f"  rss {name}: " + ", ".join(f"peak {r['peak_mib']:.0f} (+{r['peak_mib'] - r['before_mib']:.0f})"
                                                 for r in results))
        for target in ("mlp", "hidden"):
            ratio, lo, hi = harness.median_ratio(times[target], times["plain"])
            vs_full, _, _ = harness.median_ratio(times[target], times["full"])
            collect_s = statistics.median(times[target])
            timing_rows.append([
                setting, target, f"{tokens} ({padded})", f"{plain:.3f}", f"{collect_s:.3f}",
                f"**{ratio:.3f}** [{lo:.3f}-{hi:.3f}]", "yes" if ratio <= 1.10 else "**no**",
                f"{tokens / collect_s:,.0f}", f"{statistics.median(times['full']):.3f}", f"{vs_full:.3f}",
            ])
            alloc_ratio = peaks[target] / peaks["plain"] if peaks["plain"] else float("nan")
            row = [setting, target, f"{peaks['plain'] / 2**20:.2f}", f"{peaks[target] / 2**20:.2f}",
                   f"{stats_bytes[target] / 2**20:.2f}", f"{alloc_ratio:.3f}",
                   "yes" if alloc_ratio <= 1.05 else "**no**"]
            if rss.get("plain") and rss.get(target):
                def summary(results):
                    peaks_mib = [r["peak_mib"] for r in results]
                    growth = [r["peak_mib"] - r["before_mib"] for r in results]
                    text = f"{statistics.median(peaks_mib):.0f} (+{statistics.median(growth):.0f}"
                    return statistics.median(peaks_mib), max(peaks_mib), text + (
                        f", max +{max(growth):.0f})" if len(results) > 1 else ")")
                plain_peak, _, plain_text = summary(rss["plain"])
                target_peak, target_worst, target_text = summary(rss[target])
                ratio_median, ratio_worst = target_peak / plain_peak, target_worst / plain_peak
                verdict = "yes" if ratio_median <= 1.05 else "**no**"
                if ratio_worst > 1.05 >= ratio_median:
                    verdict += " (worst: **no**)"
                row += [f"{len(rss[target])}", plain_text, target_text,
                        f"{ratio_median:.3f} ({ratio_worst:.3f})", verdict]
            else:
                row += ["-", "-", "-", "-", "-"]
            memory_rows.append(row)
        memory_rows.append([setting, "full (naive)", f"{peaks['plain'] / 2**20:.2f}",
                            f"{peaks['full'] / 2**20:.2f}", "-",
                            f"{peaks['full'] / peaks['plain']:.3f}", "", "-", "-", "-", "-", ""])

    timing = harness.markdown_table(
        ["setting", "target", "tokens (with pad)", "plain decoder s", "collect s", "collect / plain, median [range]",
         "<= 1.10x", "profiling tok/s", "full model(...) s", "collect / full"], timing_rows)
    memory = harness.markdown_table(
        ["setting", "target", "alloc peak plain MiB", "alloc peak collect MiB", "of which returned stats MiB",
         "alloc ratio", "<= 1.05x",
         "RSS samples", "RSS peak plain MiB (+growth)", "RSS peak collect MiB (+growth)",
         "RSS peak ratio median (worst)", "<= 1.05x"], memory_rows)
    repeats = f"{args.repeats_short} (short) / {args.repeats_long} (long)"
    body = (f"Time: {repeats} interleaved repeats after one untimed pass; `plain` is the decoder-only forward that "
            f"collect runs, `full` is `model(...)` with the LM head. Threads: {torch.get_num_threads()}.\n\n"
            f"{timing}\n\nPeak memory of one pass. alloc: live torch CPU tensor bytes allocated by the pass "
            f"(torch.profiler memory events; weights excluded; the collect peak includes the statistics it returns, "
            f"which stay allocated after the pass). RSS: each variant in fresh subprocesses (weights "
            f"paged in first), VmHWM after resetting it just before the pass: median peak of the whole process "
            f"(weights included), in brackets the median growth over the pre-pass RSS and the largest growth seen; "
            f"ratio = median collect peak / median plain peak (worst sample in brackets).\n\n"
            f"{memory}\n\nTotal benchmark time {time.perf_counter() - started:.0f} s.\n")
    print(body)
    if args.doc:
        title = TITLE if args.model == "gemma3_270m" else TITLE.replace("Gemma-3 270M", args.model)
        harness.write_section(args.doc, title, body)


if __name__ == "__main__":
    main()
