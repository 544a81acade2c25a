"""Sweeps as users launch them: submitit's local launcher, the slurm launcher off a cluster, resume after a kill, the
profile stage. The launchers, the kill and the sweep's exit status are command-line runs; the stage=profile runs
and the resumed run are in this process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import QUICK, diet_cli


@pytest.mark.slow
def test_submitit_local_multirun_runs_every_job(tmp_path):
    proc = diet_cli(tmp_path, "hydra/launcher=local", "model=tiny_gemma2", *QUICK, "logger=none",
                    "sparsity=0.1,0.3", run_dir="sweep", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["sparsity"]["requested"] for r in results] == [0.1, 0.3]
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # the jobs really went through submitit


@pytest.mark.slow
def test_slurm_off_a_cluster_is_one_clear_line(tmp_path):
    proc = diet_cli(tmp_path, "hydra/launcher=slurm", "model=tiny_gemma2", "sparsity=0.1,0.2", run_dir="sweep",
                    multirun=True)
    assert proc.returncode == 2
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("diet: error: hydra/launcher: 'slurm' needs SLURM's srun, which is not on PATH")


def test_profile_stage_only_fills_the_cache(tmp_path, diet_in_process):
    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "stage=profile", run_dir="p")
    assert not (tmp_path / "p" / "results.json").exists() and not (tmp_path / "p" / "mask.safetensors").exists()
    status = json.loads((tmp_path / "p" / "status.json").read_text())
    assert status["state"] == "done" and set(status["profile_cache"].values()) == {"miss"}
    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", run_dir="full")
    assert set(json.loads((tmp_path / "full" / "results.json").read_text())["profile_cache"].values()) == {"hit"}


@pytest.mark.slow
def test_job_killed_after_profiling_resumes_from_the_cache(tmp_path, diet_in_process):
    args = [sys.executable, "-m", "diet.run", "model=tiny_gemma2", *QUICK, "logger=none", "eval.dense=true",
            "eval.limit=40", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    status_file = tmp_path / "run" / "status.json"
    deadline = time.time() + 120
    stage = None
    while time.time() < deadline and job.poll() is None:
        try:
            stage = json.loads(status_file.read_text()).get("stage")
        except (FileNotFoundError, json.JSONDecodeError):
            stage = None
        if stage in ("vote", "dense_eval", "prune", "eval"):
            os.killpg(job.pid, signal.SIGKILL)  # what a preempted SLURM job looks like to the file system
            break
        time.sleep(0.02)
    job.wait()
    assert stage in ("vote", "dense_eval", "prune", "eval"), f"job ended before it could be killed (stage {stage})"
    assert not (tmp_path / "run" / "results.json").exists()
    assert json.loads(status_file.read_text())["state"] == "running"  # no result that looks valid

    # the requeued job: the same config into the same folder (in this process; the kill above needs a process)
    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "eval.dense=true", "eval.limit=40")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["profile_cache"].values()) == {"hit"}


@pytest.mark.slow
def test_a_failing_job_does_not_cancel_the_rest_of_the_sweep(tmp_path):
    # Job 0 asks for more calibration documents than a task has; job 1 is fine and must still run.
    quick = [o for o in QUICK if not o.startswith("calib.n_samples")]
    proc = diet_cli(tmp_path, "model=tiny_gemma2", *quick, "logger=none", "calib.n_samples=500,6", run_dir="sweep",
                    multirun=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    status = json.loads((tmp_path / "sweep" / "0" / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("calib.n_samples: 500 is more than task")
    assert not (tmp_path / "sweep" / "0" / "results.json").exists()
    assert json.loads((tmp_path / "sweep" / "1" / "results.json").read_text())["metrics"]
    (job_line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("diet: error: job 0 (")]
    assert "calib.n_samples=500" in job_line and "is more than task" in job_line
    assert "diet: error: 1 job(s) of the sweep failed" in proc.stderr


def test_profile_stage_also_fills_the_dense_eval_cache(diet_in_process, caplog):
    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "stage=profile", "method=random", "eval.dense=true",
                    run_dir="p")
    first_log = caplog.text
    caplog.clear()
    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "eval.dense=true", run_dir="full")
    assert "dense eval cache: miss" in first_log
    assert "dense eval cache: hit" in caplog.text
