"""What the end-to-end tests share: the override lists of a quick run, and `python -m diet.run` as a user types it.

Most end-to-end tests run in this process through conftest's `diet_in_process`; `diet_cli` is for the tests that are
about the command line itself (exit codes, the one-line error on stderr, multirun summaries, launchers)."""
import os
import subprocess
import sys
from pathlib import Path

# A run on the demo tasks that takes seconds with a tiny model: 6 calibration documents of 32 tokens, 8 eval items.
QUICK = ["tasks=demo", "calib.n_samples=6", "calib.max_length=32", "eval.limit=8", "eval.bootstrap_iters=0"]
# The same with no W&B.
QUIET = [*QUICK, "logger=none"]
# test_report's sweep base: tiny_gemma2 on the demo tasks without W&B (each sweep sets its sample and item counts).
TINY = ["model=tiny_gemma2", "tasks=demo", "calib.max_length=32", "eval.bootstrap_iters=0", "logger=none"]


def diet_cli(tmp_path: Path, *overrides: str, run_dir: str = "run", env: dict | None = None, multirun=False):
    """`python -m diet.run [-m] OVERRIDES` in a subprocess, caches in tmp_path/cache, output in tmp_path/RUN_DIR."""
    args = [sys.executable, "-m", "diet.run"] + (["-m"] if multirun else []) + [
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / run_dir}" if not multirun else f"hydra.sweep.dir={tmp_path / run_dir}",
        *overrides]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
