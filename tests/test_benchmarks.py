"""The benchmark scripts are not tests, but they must keep working as diet changes under them: a smoke run of
bench_gpu.py on tiny shapes checks what it records, and the suite's command line is checked without running it."""
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402


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
    assert "### End to end" in markdown and "### Gradient-based (Taylor" in markdown


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
                                               "models-cpu, gpu")
