"""The benchmark scripts are not tests, but they must keep working as diet changes under them: smoke runs of each
script on tiny shapes check what they record, the suite's command line is checked without running it, and the shared
harness's section replacement and FLOP count are checked exactly."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402


@pytest.mark.slow
def test_bench_gpu_tiny_records_every_section(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--models", "llama3_8b",
         "--sections", "profile,e2e,taylor,decode", "--json-out", str(out), "--doc", str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"env", "model", "profile", "stats_check", "e2e", "taylor", "decode"} <= kinds
    assert "error" not in kinds, [r for r in rows if r["kind"] == "error"]
    checks = [r for r in rows if r["kind"] == "stats_check"]
    assert sorted(r["target"] for r in checks) == ["hidden", "mlp"]
    assert all(r["max_rel_diff"] < 1e-4 for r in checks)  # diet's fused statistics agree with the eager ones
    variants = {r["variant"] for r in rows if r["kind"] == "profile"}
    assert variants == {"no hooks", "collect mlp [eager]", "collect hidden [eager]", "collect mlp [fused]",
                        "collect hidden [fused]"}
    (e2e,) = [r for r in rows if r["kind"] == "e2e"]
    assert e2e["tasks"] == 7 and e2e["tokens"] == 7 * 8 * 32 and 0.15 < e2e["sparsity"] < 0.25
    assert e2e["params_ratio"] < 1
    markdown = (tmp_path / "b.md").read_text()
    assert markdown.startswith("# Benchmarks\n\n## Model benchmarks (tiny shapes, CPU smoke test)\n\n- date: ")
    assert "### End to end" in markdown and "### Gradient-based (Taylor" in markdown


@pytest.mark.slow
def test_bench_gpu_refuses_billion_parameter_shapes_on_the_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu",
                           "--models", "gemma2_9b"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bench_gpu: error: --models gemma2_9b on the CPU")


def test_suite_runs_the_gpu_part_only_with_cuda_and_rejects_unknown_parts(capsys):
    args = type("Args", (), dict(cache_dir="c", doc="docs/benchmarks.md", quick=False, gpu_budget=60))()
    without, with_cuda = suite.commands(args, has_cuda=False), suite.commands(args, has_cuda=True)
    assert list(without) == list(suite.PARTS) and without["gpu"] is None
    assert with_cuda["gpu"][with_cuda["gpu"].index("--device") + 1] == "cuda"
    assert all(cmd[cmd.index("--doc") + 1] == "docs/benchmarks.md" for cmd in with_cuda.values())
    assert suite.main(["--skip", "profile,bogus"]) == 2
    assert capsys.readouterr().err.strip() == ("suite: error: --skip bogus: unknown part; allowed: profile, prune, "
                                               "methods, models-cpu, gpu")


# ------------------------------------------------------------------------------------------------- the harness

import harness  # noqa: E402

BEFORE = """# Benchmarks

Intro.

## Profile stage (X)

- date: old
old body

## Other

```text
## Profile stage (X)
```
keep me

## Profile stage (X)

- date: an older duplicate
"""

AFTER = """# Benchmarks

Intro.

## Profile stage (X)

- date: new

new body

## Other

```text
## Profile stage (X)
```
keep me
"""


def test_replace_section_replaces_in_place_drops_duplicates_and_skips_fenced_lines():
    section = "## Profile stage (X)\n\n- date: new\n\nnew body\n"
    assert harness.replace_section(BEFORE, "Profile stage (X)", section) == AFTER
    assert harness.replace_section(AFTER, "Profile stage (X)", section) == AFTER  # idempotent
    assert harness.replace_section(AFTER, "New one", "## New one\n\nbody\n") == AFTER + "\n## New one\n\nbody\n"


def test_write_section_creates_then_replaces_the_file(tmp_path):
    doc = tmp_path / "docs" / "b.md"
    harness.write_section(str(doc), "Speed (tiny)", "| a |\n|---|\n| 1 |\n", ["- date: d1", "- command: `c1`"])
    harness.write_section(str(doc), "Other", "x\n", ["- date: d0"])
    harness.write_section(str(doc), "Speed (tiny)", "| a |\n|---|\n| 2 |\n", ["- date: d2", "- command: `c2`"])
    assert doc.read_text() == ("# Benchmarks\n\n## Speed (tiny)\n\n- date: d2\n- command: `c2`\n\n| a |\n|---|\n| 2 |\n"
                               "\n## Other\n\n- date: d0\n\nx\n")


def test_forward_flops_by_hand():
    # layer 0: hidden 8, 4 query heads, 2 KV heads, head_dim 2, MLP 16, full attention
    # layer 1: hidden 8, 2 query heads (two removed), 1 KV head (one group removed), MLP 12, sliding window 3
    shape = harness.DecoderShape((harness.LayerShape(8, 4, 2, 2, 16, None), harness.LayerShape(8, 2, 1, 2, 12, 3)),
                                 vocab=10, head_in=8)
    # per token, 2 FLOPs per multiply-add:        q            k + v            o            gate + up + down
    layer0 = 2 * 8 * 8 + 2 * 2 * 8 * 4 + 2 * 8 * 8 + 3 * 2 * 8 * 16  # = 128 + 128 + 128 + 768 = 1152
    layer1 = 2 * 8 * 4 + 2 * 2 * 8 * 2 + 2 * 4 * 8 + 3 * 2 * 8 * 12  # = 64 + 64 + 64 + 576 = 768
    assert (layer0, layer1) == (1152, 768)
    # attention, per query-key pair: scores 2 * head_dim + values 2 * head_dim, per query head: 32 and 16
    # full (4 x 4 pairs in both layers; the window only masks), batch 2, 4 tokens
    assert harness.forward_flops(shape, 2, 4) == 2 * (4 * 1152 + 16 * 32 + 4 * 768 + 16 * 16) == 16896
    assert harness.forward_flops(shape, 2, 4, with_head=True) == 16896 + 2 * 4 * 2 * 8 * 10 == 18176
    # causal: 1+2+3+4 = 10 pairs; with window 3: 1+2+3+3 = 9 pairs
    assert harness.forward_flops(shape, 2, 4, attention="causal") == 2 * (4 * 1152 + 10 * 32 + 4 * 768 + 9 * 16)
    # decode: one new token against a cache of 5 keys (3 in the sliding layer)
    assert harness.forward_flops(shape, 2, 1, context=5) == 2 * (1152 + 5 * 32 + 768 + 3 * 16) == 4256


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_forward_flops_match_torch_flop_counter_after_removing_a_kv_group(family):
    """The weight-shape reader and the formula against torch's own count of every matmul of a real forward (eager
    attention), on a tiny model whose layer 1 lost query heads 2-3 and their KV group, as heads pruning does."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diet.models import tiny
    from diet.models.adapters import get_adapter

    extra = {"sliding_window": 3, "query_pre_attn_scalar": 4} if family == "gemma2" else {}
    model, _ = tiny.build(family, dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=4, **extra), seed=0)
    model.set_attn_implementation("eager")
    adapter = get_adapter(model)
    attn = adapter.decoder_layers(model)[1].self_attn
    with torch.no_grad():
        for linear, rows in ((attn.q_proj, 8), (attn.k_proj, 4), (attn.v_proj, 4)):
            linear.weight = torch.nn.Parameter(linear.weight[:rows].clone())
            linear.out_features = rows
        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight[:, :8].clone())
        attn.o_proj.in_features = 8
    shape = harness.decoder_shape(model, adapter)
    assert [(ly.q_heads, ly.kv_heads) for ly in shape.layers] == [(4, 2), (2, 1)]
    ids = torch.randint(4, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    assert counter.get_total_flops() == harness.forward_flops(shape, 2, 6, with_head=True)


@pytest.mark.slow
def test_bench_prune_tiny_times_the_run_vote_and_lists_or_runs_heads(tmp_path):
    """The smoke run writes both sections; heads rows appear exactly when diet accepts prune.target=heads."""
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## Vote/prune: overhead against profiling (tiny_gemma2, CPU)\n\nstale\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_prune.py"), "--tiny", "--cache-dir", str(tmp_path / "c"),
         "--doc", str(doc)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "stale" not in text and text.count("## Vote/prune: overhead against profiling (tiny_gemma2, CPU)") == 1
    assert text.count("## Pruned-model prefill speed (tiny_gemma2, CPU)") == 1
    assert "- command: `python benchmarks/bench_prune.py --tiny --cache-dir" in text
    assert "| mlp | " in text and "| hidden | " in text and "| 2 | dense copy |" in text
    heads_accepted = harness.target_unavailable("heads") is None
    assert ("| 1 | heads |" in text) == heads_accepted
    assert ("Not measured (diet does not accept these targets yet" in text) == (not heads_accepted)
    if not heads_accepted:
        assert "`heads`: prune.target: 'heads' is not allowed" in text


@pytest.mark.slow
def test_bench_profile_tiny_writes_its_section(tmp_path):
    doc = tmp_path / "b.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_profile.py"), "--tiny", "--cache-dir", str(tmp_path / "c"),
         "--doc", str(doc)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Profile stage: hook overhead (tiny_gemma2, CPU)\n\n- date: ")
    assert "| long: 2 x 32 tokens, batch 8 | hidden |" in text


@pytest.mark.slow
def test_bench_methods_tiny_times_every_method_from_its_saved_checkpoint(tmp_path):
    """Every method pruned to one parameter budget through the run, saved, loaded back and timed against dense in one
    loop: each row's share of the decoder removed and its FLOP ratio are those of its own structure."""
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_methods.py"), "--tiny", "--cache-dir",
                           str(tmp_path / "cache"), "--json-out", str(out), "--doc", str(tmp_path / "b.md")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["row"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["dense", "dense copy", *(f"{m} 0.4" for m in (
        "diet", "generic", "random", "wanda_sp", "flap", "shortgpt", "sleb", "slicegpt"))]
    assert rows["dense copy"]["flop_ratio"] == 1.0 and rows["dense"]["prefill_speedup"] == [1.0, 1.0, 1.0]
    # the three FFN rows remove the same neurons per layer; 2 of the 4 layers are half the decoder
    assert {rows[f"{m} 0.4"]["flop_ratio"] for m in ("diet", "generic", "random")} == {rows["diet 0.4"]["flop_ratio"]}
    assert rows["shortgpt 0.4"]["decoder_params_removed"] == rows["sleb 0.4"]["decoder_params_removed"] == 0.5
    assert all(abs(r["decoder_params_removed"] - 0.4) < 0.05 for n, r in rows.items()
               if n.split()[0] in ("diet", "wanda_sp", "flap", "slicegpt"))
    assert all(r["flop_ratio"] < 0.75 and r["prefill_speedup"][1] > 0 for n, r in rows.items() if " 0.4" in n)
    markdown = (tmp_path / "b.md").read_text()
    assert "## Measured speed of each method's pruned model (tiny shapes, CPU)" in markdown
    assert "| slicegpt | residual width (rotated) | 0.4 | " in markdown


@pytest.mark.parametrize("args, message", [
    (["--methods", "diet,wanda"], "--methods wanda: unknown; allowed: diet, generic, random, wanda_sp, flap, "
                                  "shortgpt, sleb, slicegpt"),
    (["--budgets", "0.2,1.5"], "--budgets 0.2,1.5: each must lie in (0, 1)")])
def test_bench_methods_bad_arguments_are_one_line(args, message, capsys):
    import bench_methods

    with pytest.raises(SystemExit) as exit_info:
        bench_methods.parse(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench_methods: error: {message}"
