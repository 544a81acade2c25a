"""python -m diet.report on a real sweep, and the launch/ scripts: every printed command composes, one runs for real."""
import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
TINY = ["model=tiny_gemma2", "tasks=demo", "calib.max_length=32", "eval.bootstrap_iters=0", "logger=none"]
DEMO_TASKS = ["demo_capitals", "demo_antonyms", "demo_sums", "demo_plurals"]


def run(args, env=None, timeout=300):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def report(*args, env=None):
    return run([sys.executable, "-m", "diet.report", *map(str, args)], env=env)


def launch(script, *args, env=None):
    return run(["bash", str(LAUNCH / script), *map(str, args)], env={"PYTHON": sys.executable, **(env or {})})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 2 x 2 sweep with the dense model, plus a job that failed with a message and one that never finished."""
    root = tmp_path_factory.mktemp("report")
    proc = run([sys.executable, "-m", "diet.run", "-m", *TINY, "calib.n_samples=6", "eval.limit=8", "eval.dense=true",
                "method=diet,random", "sparsity=0.2,0.4", f"hydra.sweep.dir={root / 'sweep'}",
                f"cache_dir={root / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num, status in ((8, {"state": "running", "stage": "eval"}),
                        (9, {"state": "failed", "error": "vote.threshold: 1.0 keeps no dimension of mlp.0"})):
        (root / "sweep" / str(num) / ".hydra").mkdir(parents=True)
        (root / "sweep" / str(num) / "status.json").write_text(json.dumps(status))
    return root / "sweep"


def load_results(sweep):
    return {(r["method"], r["sparsity"]["requested"]): r
            for r in (json.loads((sweep / str(i) / "results.json").read_text()) for i in range(4))}


def table_rows(markdown):
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_report_table_matches_the_results(sweep, tmp_path):
    proc = report(sweep, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report: 4 runs, 2 failed or missing" in proc.stdout
    results = load_results(sweep)
    header, rule, *rows = table_rows((tmp_path / "report.md").read_text())
    assert header == ["model", "method", "target", "sparsity", *[f"{t} (acc)" for t in DEMO_TASKS], "average"]
    assert rule == ["---"] * 4 + ["---:"] * 5

    def pct(v):
        return f"{100 * v:.1f}"

    dense = results["diet", 0.2]
    assert rows[0] == ["tiny_gemma2", "dense", "–", "0", *[pct(dense["dense_metrics"][t]["acc"]) for t in DEMO_TASKS],
                       pct(dense["dense_average"]["paper"])]
    order = [("random", 0.2), ("diet", 0.2), ("random", 0.4), ("diet", 0.4)]  # by sparsity, baselines first
    assert [(r[1], float(r[3])) for r in rows[1:]] == order
    for row, key in zip(rows[1:], order):
        values = [results[key]["metrics"][t]["acc"] for t in DEMO_TASKS] + [results[key]["average"]["paper"]]
        rival = results[("diet" if key[0] == "random" else "random", key[1])]
        rivals = [rival["metrics"][t]["acc"] for t in DEMO_TASKS] + [rival["average"]["paper"]]
        # bold = best of the two methods at the same sparsity (ties: both)
        assert row[4:] == [f"**{pct(v)}**" if v >= w else pct(v) for v, w in zip(values, rivals)], (key, row)
    text = (tmp_path / "report.md").read_text()
    failed = text.split("## Failed or missing runs")[1]
    assert "failed: vote.threshold: 1.0 keeps no dimension of mlp.0" in failed
    assert "did not finish (last stage: eval)" in failed
    assert failed.count("\n- ") == 2 and "/9`" in failed and "/8`" in failed

    with open(tmp_path / "report.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == ["model", "method", "target", "sparsity", "achieved_sparsity", "params_ratio",
                                *[f"{t}/acc" for t in DEMO_TASKS], "average", "run"]
    assert [(r["method"], float(r["sparsity"])) for r in records] == [("dense", 0.0), *order]
    for record, key in zip(records[1:], order):
        res = results[key]
        assert float(record["average"]) == res["average"]["paper"]  # raw floats, exactly
        assert [float(record[f"{t}/acc"]) for t in DEMO_TASKS] == [res["metrics"][t]["acc"] for t in DEMO_TASKS]
        assert float(record["achieved_sparsity"]) == res["sparsity"]["achieved"]
        assert float(record["params_ratio"]) == res["params"]["pruned"] / res["params"]["dense"]
    png = tmp_path / "avg_vs_sparsity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["avg_vs_sparsity.png"]  # nothing else varies


def test_a_job_that_never_started_is_listed(sweep, tmp_path, capsys):
    import shutil

    from diet.report import main

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    shutil.rmtree(copy / "3")  # the multirun asked for it (multirun.yaml), but it has no folder
    main([str(copy)])
    failed = (copy / "report.md").read_text().split("## Failed or missing runs")[1]
    assert f"- `{copy / '3'}`: never started (method=random sparsity=0.4)" in failed
    assert "report: 3 runs, 3 failed or missing" in capsys.readouterr().out


def test_wandb_fields_give_the_same_row(sweep):
    # What diet.tracking puts in a W&B run (flat config, summary) reads back as the same numbers.
    from omegaconf import OmegaConf

    from diet.report import run_from_results, run_from_wandb
    from diet.tracking import flatten_config, summary_values

    job = sweep / "1"
    results = json.loads((job / "results.json").read_text())
    cfg = flatten_config(OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "config.yaml"), resolve=True))
    remote = run_from_wandb(cfg, summary_values(results), "https://wandb.ai/e/p/runs/x")
    local = run_from_results(results, str(job))
    assert (remote.model, remote.method, remote.target, remote.sparsity) == (local.model, local.method, local.target,
                                                                           local.sparsity)
    assert remote.scores == local.scores and remote.average == local.average
    assert remote.dense == pytest.approx(local.dense) and remote.dense_average == pytest.approx(local.dense_average)


def test_missing_folder_is_one_line_exit_2():
    proc = report("/no/such/sweep")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("diet: error: sweep dir: '/no/such/sweep' is not a folder; allowed: folders "
                                   "holding results.json files (a Hydra multirun folder, a run folder, or a parent of "
                                   "several)")


@pytest.mark.parametrize("args,message", [
    (["EMPTY"], "diet: error: sweep dir: no results.json under"),
    (["--wandb", "ent/proj/group"], "diet: error: --wandb: could not read ent/proj/group from the W&B API"),
    (["--wandb", "proj"], "diet: error: --wandb: 'proj' is not allowed; allowed: ENTITY/PROJECT/GROUP"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    from diet.report import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # offline: no key, no server
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path) if a == "EMPTY" else a for a in args])
    assert exit_info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines


# ----------------------------------------------------------------------------------------------------- launch/

SCRIPTS = {  # script -> jobs per printed sweep, with the script's own defaults
    "paper_main.sh": [50], "ablate_samples.sh": [5], "ablate_threshold.sh": [7, 3], "ablate_scoring.sh": [4],
    "ablate_target.sh": [1, 2], "ablate_leave_one_out.sh": [7], "profile_first.sh": [14, 2, 2, 50],
}


def printed_commands(stdout):
    return [shlex.split(ln[2:]) for ln in stdout.splitlines() if ln.startswith("+ ")]


def test_every_launcher_prints_commands_whose_jobs_all_compose(tmp_path):
    spec = importlib.util.spec_from_file_location("launch_compose", LAUNCH / "compose.py")
    compose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compose)
    for script, jobs in SCRIPTS.items():
        proc = launch(script, f"hydra.sweep.dir={tmp_path / script}", env={"DRY_RUN": "print"})
        assert proc.returncode == 0, (script, proc.stderr[-3000:])
        commands = printed_commands(proc.stdout)
        assert len(commands) == len(jobs), (script, proc.stdout)
        for command, expected in zip(commands, jobs):
            assert command[:4] == [sys.executable, "-m", "diet.run", "-m"]
            assert "hydra/launcher=slurm" in command and command[-1].startswith(f"hydra.sweep.dir={tmp_path}")
            n, _, launcher = compose.check(command[4:], cover_only=True)  # every swept value composed once
            assert (n, launcher) == (expected, "SlurmLauncher"), (script, command)
        assert f"report: {sys.executable} -m diet.report {tmp_path / script}" in proc.stdout
    assert not list(tmp_path.rglob("*.json"))  # nothing ran


def test_dry_run_composes_in_a_subprocess_and_names_a_bad_override(tmp_path):
    ok = launch("ablate_samples.sh", f"hydra.sweep.dir={tmp_path}", env={"DRY_RUN": "1", "LAUNCHER": "local"})
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "hydra/launcher=local" in ok.stdout
    assert "dry run: 5 jobs compose and validate; launcher LocalLauncher; swept: calib.n_samples (5)" in ok.stdout
    bad = launch("ablate_samples.sh", "sparsity=1.5", f"hydra.sweep.dir={tmp_path}", env={"DRY_RUN": "1"})
    assert bad.returncode == 2
    assert "diet: error: job 0 (calib.n_samples=10" in bad.stderr and "sparsity: 1.5 is not allowed" in bad.stderr
    wrong = launch("ablate_samples.sh", env={"LAUNCHER": "pbs"})
    assert wrong.returncode == 2 and "launch: error: LAUNCHER='pbs' is not allowed" in wrong.stderr


def test_overrides_replace_script_defaults_by_key(tmp_path):
    proc = launch("paper_main.sh", "model=tiny_gemma2", "sparsity=0.3", f"hydra.sweep.dir={tmp_path}",
                  env={"DRY_RUN": "print", "LAUNCHER": "basic"})
    (command,) = printed_commands(proc.stdout)
    keys = [a.split("=", 1)[0].lstrip("+") for a in command[4:]]
    assert len(keys) == len(set(keys))  # every key once: the user's value replaced the script's
    assert "model=tiny_gemma2" in command and "sparsity=0.3" in command and "hydra/launcher=basic" in command
    assert f"++logger.group={tmp_path.name}" in command
    loo = launch("ablate_leave_one_out.sh", "tasks=demo", f"hydra.sweep.dir={tmp_path}", env={"DRY_RUN": "print"})
    (command,) = printed_commands(loo.stdout)  # the mix comes from the tasks group given
    held_out = [f"[{','.join(t for t in DEMO_TASKS if t != held)}]" for held in DEMO_TASKS]
    assert f"tasks.names={','.join(held_out)}" in command and f"eval.tasks=[{','.join(DEMO_TASKS)}]" in command


def test_a_launcher_runs_for_real_and_its_sweeps_report(tmp_path):
    # Two sweeps (hidden; mlp x layer,global) under one root, through Hydra's basic launcher.
    proc = launch("ablate_target.sh", *TINY, "calib.n_samples=4", "eval.limit=4", f"hydra.sweep.dir={tmp_path / 's'}",
                  f"cache_dir={tmp_path / 'cache'}", env={"LAUNCHER": "basic"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(printed_commands(proc.stdout)) == 2
    jobs = {"hidden/0": ("hidden", "layer"), "mlp/0": ("mlp", "layer"), "mlp/1": ("mlp", "global")}
    for job, (target, scope) in jobs.items():
        results = json.loads((tmp_path / "s" / job / "results.json").read_text())
        assert (results["target"], results["scope"], results["model"]) == (target, scope, "tiny_gemma2")
        assert set(results["metrics"]) == set(DEMO_TASKS) and results["average"]["paper"] is not None
    from diet.report import main

    main([str(tmp_path / "s")])
    header, _, *rows = table_rows((tmp_path / "s" / "report.md").read_text())
    # hidden: 12 of 64 residual dims is 0.1875, more than a point off 0.2, so the achieved sparsity is shown too
    assert header == ["model", "method", "target", "sparsity", "achieved", "prune.scope",  # the key that varies
                      *[f"{t} (acc)" for t in DEMO_TASKS], "average"]
    achieved = {(target, scope): json.loads((tmp_path / "s" / job / "results.json").read_text())["sparsity"]["achieved"]
                for job, (target, scope) in jobs.items()}
    assert sorted((r[2], r[5], r[4]) for r in rows) == sorted((t, s, f"{a:.3f}") for (t, s), a in achieved.items())
    assert (tmp_path / "s" / "avg_vs_prune_scope.png").stat().st_size > 2000
    assert "## Failed or missing runs\n\nNone." in (tmp_path / "s" / "report.md").read_text()
