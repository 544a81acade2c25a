"""python -m diet.report on a real sweep, and the launch/ scripts: every printed command composes, one runs for real."""
import csv
import io
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"
DEMO_TASKS = ["demo_capitals", "demo_antonyms", "demo_sums", "demo_plurals"]


def run(args, env=None, timeout=300):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def report(*args, env=None):
    return run([sys.executable, "-m", "diet.report", *map(str, args)], env=env)


def launch(script, *args, env=None):
    return run(["bash", str(LAUNCH / script), *map(str, args)], env={"PYTHON": sys.executable, **(env or {})})


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A real 2 x 2 sweep with the dense model, plus a job that failed with a message and one that never finished.
    A true `python -m diet.run -m`: the report reads what Hydra writes (multirun.yaml, each job's .hydra/).
    It runs once per test run: under pytest-xdist the first worker to need it runs it under a file lock in the run's
    shared temporary folder, and a worker that asks later reads the same folder."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # above each worker's own basetemp: one folder per test run
    root = shared / "report-sweep"
    with FileLock(f"{root}.lock"):
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            _run_the_sweep(root)
            (root / "complete").touch()
    return root / "sweep"


def _run_the_sweep(root):
    proc = run([sys.executable, "-m", "diet.run", "-m", *TINY, "calib.n_samples=6", "eval.limit=8", "eval.dense=true",
                "method=diet,random", "sparsity=0.2,0.4", f"hydra.sweep.dir={root / 'sweep'}",
                f"cache_dir={root / 'cache'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num, status in ((8, {"state": "running", "stage": "eval"}),
                        (9, {"state": "failed", "error": "vote.threshold: 1.0 keeps no dimension of mlp.0"})):
        (root / "sweep" / str(num) / ".hydra").mkdir(parents=True)
        (root / "sweep" / str(num) / "status.json").write_text(json.dumps(status))


def load_results(sweep):
    return {(r["method"], r["sparsity"]["requested"]): r
            for r in (json.loads((sweep / str(i) / "results.json").read_text()) for i in range(4))}


def table_rows(markdown):
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.mark.slow
def test_report_table_matches_the_results(sweep, tmp_path):
    proc = report(sweep, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report: 4 runs, 2 failed or missing" in proc.stdout
    results = load_results(sweep)
    header, rule, *rows = table_rows((tmp_path / "report.md").read_text())
    # the achieved sparsity is a column as soon as a run removed other than what was asked (width rounding)
    off = any(abs(r["sparsity"]["achieved"] - r["sparsity"]["requested"]) > 1e-4 for r in results.values())
    assert header == ["model", "method", "target", "sparsity", *(["achieved"] if off else []),
                      *[f"{t} (acc)" for t in DEMO_TASKS], "average"]
    assert rule == ["---"] * (4 + off) + ["---:"] * 5
    rows = [row[:4] + row[4 + off:] for row in rows]

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
    assert list(records[0]) == ["model", "method", "target", "sparsity", "seed", "achieved_sparsity", "params_ratio",
                                *[c for t in DEMO_TASKS for c in (f"{t}/acc", f"{t}/acc_stderr")], "average", "run"]
    assert [(r["method"], float(r["sparsity"])) for r in records] == [("dense", 0.0), *order]
    for record, key in zip(records[1:], order):
        res = results[key]
        assert float(record["average"]) == res["average"]["paper"]  # raw floats, exactly
        assert [float(record[f"{t}/acc"]) for t in DEMO_TASKS] == [res["metrics"][t]["acc"] for t in DEMO_TASKS]
        # lm-eval's stderr as reported: None (an empty cell) when it computed none (bootstrap_iters=0 here)
        assert [float(record[f"{t}/acc_stderr"]) if record[f"{t}/acc_stderr"] else None for t in DEMO_TASKS] == [
            res["metrics"][t].get("acc_stderr") for t in DEMO_TASKS]
        assert int(record["seed"]) == res["seed"] == 0
        assert float(record["achieved_sparsity"]) == res["sparsity"]["achieved"]
        assert float(record["params_ratio"]) == res["params"]["pruned"] / res["params"]["dense"]
    png = tmp_path / "avg_vs_sparsity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["avg_vs_sparsity.png"]  # nothing else varies


@pytest.mark.slow
def test_a_job_that_never_started_is_listed(sweep, tmp_path, capsys):
    from diet.report import main

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.png", "*.safetensors"))
    shutil.rmtree(copy / "3")  # the multirun asked for it (multirun.yaml), but it has no folder
    main([str(copy)])
    failed = (copy / "report.md").read_text().split("## Failed or missing runs")[1]
    assert f"- `{copy / '3'}`: never started (method=random sparsity=0.4)" in failed
    assert "report: 3 runs, 3 failed or missing" in capsys.readouterr().out


@pytest.mark.slow
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
    assert cfg["seed"] == results["seed"] == remote.settings["seed"]  # a W&B column: grouping there = rows here
    assert remote.dense == pytest.approx(local.dense) and remote.dense_average == pytest.approx(local.dense_average)


@pytest.mark.slow
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
    "paper_main.sh": [50], "ablate_samples.sh": [5], "ablate_threshold.sh": [7, 4], "ablate_scoring.sh": [4],
    "demo_table.sh": [3, 63, 27],
    "ablate_target.sh": [1, 2], "ablate_leave_one_out.sh": [7], "profile_first.sh": [14, 2, 2, 50],
    "baselines.sh": [5, 45, 15, 15, 30],
}


def printed_commands(stdout):
    return [shlex.split(ln[2:]) for ln in stdout.splitlines() if ln.startswith("+ ")]


@pytest.mark.slow
def test_every_launcher_prints_commands_whose_jobs_all_compose(tmp_path):
    spec = importlib.util.spec_from_file_location("launch_compose", LAUNCH / "compose.py")
    compose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compose)
    for script, jobs in SCRIPTS.items():
        proc = launch(script, f"hydra.sweep.dir={tmp_path / script}", env={"DRY_RUN": "print", "LAUNCHER": "slurm"})
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


def test_baselines_times_only_the_speed_seeds_and_runs_the_others_untimed(tmp_path):
    proc = launch("baselines.sh", f"hydra.sweep.dir={tmp_path}",
                  env={"DRY_RUN": "print", "LAUNCHER": "basic", "SEEDS": "0,1,2", "SPEED_SEEDS": "0",
                       "CALIB": "own", "BUDGETS": "0.2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = {}
    for command in printed_commands(proc.stdout):
        args = dict(a.split("=", 1) for a in command[4:] if "=" in a)
        sweeps[args["hydra.sweep.dir"][len(str(tmp_path)) + 1:]] = (args["seed"], args["eval.speed"])
    timed, untimed = ("0", "true"), ("1,2", "false")
    assert sweeps == {"dense": timed, "diet": timed, "diet/untimed": untimed, "own/wanda_sp": timed,
                      "own/wanda_sp/untimed": untimed, "own/flap": timed, "own/flap/untimed": untimed,
                      "own/layers": timed, "own/layers/untimed": untimed}


@pytest.mark.slow
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


@pytest.mark.slow
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
    # hidden: 12 of 64 residual dims is 0.1875, more than a point off 0.2, so the achieved sparsity is shown too;
    # hidden and mlp dimensions cost different parameters, so what each row removed is shown as well
    assert header == ["model", "method", "target", "sparsity", "achieved", "params removed",
                      "prune.scope",  # the key that varies
                      *[f"{t} (acc)" for t in DEMO_TASKS], "average"]
    written = {(target, scope): json.loads((tmp_path / "s" / job / "results.json").read_text())["sparsity"]
               for job, (target, scope) in jobs.items()}
    assert sorted((r[2], r[6], r[4], r[5]) for r in rows) == sorted(
        (t, s, f"{w['achieved']:.4f}", f"{w['params']['decoder']:.3f}") for (t, s), w in written.items())
    assert (tmp_path / "s" / "avg_vs_prune_scope.png").stat().st_size > 2000
    assert "## Failed or missing runs\n\nNone." in (tmp_path / "s" / "report.md").read_text()


# ----------------------------------------------------------------------------------------------------- statistics

def hand_run(method, seed, average, *, sparsity=0.3, achieved=0.3125, where=None, **settings):
    from diet.report import Run

    return Run(where=where or f"{method}/{seed}", model="m", method=method, target="mlp", sparsity=sparsity,
               achieved=achieved, params_ratio=0.9, scores={"t1": average, "t2": 1 - average},
               metric={"t1": "acc", "t2": "exact_match,strict-match"}, stderr={"t1": 0.01, "t2": 0.02},
               average=average, dense=None, dense_average=None, settings={"seed": seed, **settings})


def test_seeds_form_one_row_with_mean_sd_n_and_a_paired_baseline_difference(tmp_path):
    from diet.report import Collected, build_table
    from diet.report.tables import markdown

    runs = [hand_run("diet", s, a) for s, a in ((0, 0.80), (1, 0.84), (2, 0.88))]
    runs += [hand_run("generic", s, a) for s, a in ((2, 0.79), (0, 0.70), (1, 0.76))]
    runs += [hand_run("magnitude", 0, 0.50)]
    tasks, metric, extras, rows = build_table(runs, baseline="generic")
    assert extras == [] and tasks == ["t1", "t2"] and metric["t2"] == "exact_match,strict-match"
    by_method = {r.method: r for r in rows}
    diet, generic, magnitude = by_method["diet"], by_method["generic"], by_method["magnitude"]
    assert (diet.average.n, generic.average.n, magnitude.average.n) == (3, 3, 1)
    assert diet.average.mean == pytest.approx(0.84) and diet.average.sd == pytest.approx(0.04)
    assert generic.average.mean == pytest.approx(0.75) and generic.average.sd == pytest.approx(0.0021 ** 0.5)
    assert diet.scores["t2"].mean == pytest.approx(0.16) and diet.scores["t2"].sd == pytest.approx(0.04)
    # paired by seed: 0.10, 0.08, 0.09
    assert diet.baseline.paired and diet.baseline.n == 3
    assert diet.baseline.mean == pytest.approx(0.09) and diet.baseline.sd == pytest.approx(0.01)
    # magnitude ran one seed: unpaired, the spread is generic's sd
    assert not magnitude.baseline.paired
    assert magnitude.baseline.mean == pytest.approx(-0.25) and magnitude.baseline.sd == pytest.approx(0.0021 ** 0.5)
    assert generic.baseline is None
    text = markdown(tasks, metric, extras, rows, Collected(runs=runs), ["here"], "generic")
    lines = {r[1]: r for r in table_rows(text)[2:]}
    assert table_rows(text)[0][-4:] == ["average", "n", "seeds", "Δ average vs generic"]
    assert lines["diet"][-4:] == ["**84.0 ± 4.0**", "3", "0,1,2", "+9.0 ± 1.0"]
    assert lines["generic"][-4:] == ["75.0 ± 4.6", "3", "0,1,2", ""]
    assert lines["magnitude"][-4:] == ["50.0", "1", "0", "-25.0 ± 4.6 (unpaired)"]


def test_bold_compares_equal_achieved_sparsity_and_repeated_seeds_are_merged_and_named():
    from diet.report import Collected, build_table
    from diet.report.tables import csv_text, markdown

    runs = [hand_run("diet", 0, 0.80, **{"vote.exact_budget": True}),
            hand_run("random", 0, 0.60, **{"vote.exact_budget": True}),
            # requested 0.3 too, but the vote kept almost everything: never ranked against the runs above
            hand_run("diet", 0, 0.99, achieved=0.011, **{"vote.exact_budget": False}),
            hand_run("random", 0, 0.98, achieved=0.011, **{"vote.exact_budget": False}),
            # the same configuration and seed from a second sweep: merged like a seed, and named
            hand_run("diet", 0, 0.70, where="other_sweep/diet/0", **{"vote.exact_budget": True})]
    tasks, metric, extras, rows = build_table(runs)
    assert extras == ["vote.exact_budget"]
    by_key = {(r.method, r.extras["vote.exact_budget"]): r for r in rows}
    assert "average" in by_key["diet", True].bold and "average" not in by_key["random", True].bold
    assert "average" in by_key["diet", False].bold and "average" not in by_key["random", False].bold
    assert by_key["diet", True].average.mean == pytest.approx(0.75) and by_key["diet", True].seeds == [0, 0]
    text = markdown(tasks, metric, extras, rows, Collected(runs=runs), ["here"])
    assert "1 configurations ran more than once with the same seed" in text and "other_sweep/diet/0" in text
    assert "| achieved |" in text.splitlines()[4].replace("achieved |", "achieved |")
    assert len(csv_text(tasks, metric, extras, rows).strip().splitlines()) == 1 + len(runs)  # every run kept


def test_a_parameter_budget_pairs_methods_that_remove_different_structures(tmp_path):
    """prune.budget=params: rows that asked for the same budget rank against each other and against the baseline
    whatever they removed (no structure hits a budget exactly); the table shows what each removed and its speed."""
    from diet.report import Collected, build_table
    from diet.report.tables import csv_text, markdown

    runs = []
    for seed in (0, 1):
        for method, target, removed, average, speed in (("generic", "mlp", 0.222, 0.80, 1.10),
                                                        ("flap", "mlp+heads", 0.198, 0.70 + seed / 100, 1.20),
                                                        ("shortgpt", "layers", 0.222, 0.50, 1.30)):
            run = hand_run(method, seed, average, sparsity=0.2, achieved=removed)
            run.target, run.param_sparsity, run.param_budget = target, removed, 0.2
            run.speedup, run.decode_speedup = (speed, speed - 0.05) if seed == 0 else (None, None)  # seed 0 timed
            runs.append(run)
    loose = hand_run("diet", 0, 0.99, sparsity=0.2, achieved=0.05)  # budget=dims: never ranked against them
    runs.append(loose)
    tasks, metric, extras, rows = build_table(runs, baseline="generic")
    by_method = {r.method: r for r in rows}
    assert "average" in by_method["generic"].bold and "average" not in by_method["diet"].bold
    assert by_method["flap"].baseline.paired and by_method["flap"].baseline.mean == pytest.approx(-0.095)
    assert by_method["shortgpt"].baseline.mean == pytest.approx(-0.30) and by_method["diet"].baseline is None
    header, _, *lines = table_rows(markdown(tasks, metric, extras, rows, Collected(runs=runs), ["here"], "generic"))
    cells = {line[1]: dict(zip(header, line)) for line in lines}
    assert (cells["flap"]["params removed"], cells["flap"]["prefill ×"], cells["flap"]["decode ×"]) == (
        "0.198", "1.20", "1.15")
    assert cells["shortgpt"]["Δ average vs generic"] == "-30.0 ± 0.0"
    records = list(csv.DictReader(io.StringIO(csv_text(tasks, metric, extras, rows))))
    flap = [r for r in records if r["method"] == "flap"]
    assert [(r["decoder_param_sparsity"], r["prefill_speedup"], r["decode_speedup"]) for r in flap] == [
        ("0.198", "1.2", "1.15"), ("0.198", "", "")]


def test_rows_of_one_width_that_remove_different_parameters_say_so():
    """Slicing 20% of the residual width removes 20% of the parameters unrotated but adds some with SliceGPT's
    shortcut matrices: the table shows each row's decoder share even without a parameter budget, and only then."""
    from diet.report import Collected, build_table
    from diet.report.tables import csv_text, markdown

    def table(removed):
        runs = []
        for method, share in removed.items():
            run = hand_run(method, 0, 0.4, sparsity=0.2, achieved=0.2)
            run.target, run.param_sparsity = "hidden", share
            runs.append(run)
        tasks, metric, extras, rows = build_table(runs)
        return (table_rows(markdown(tasks, metric, extras, rows, Collected(runs=runs), ["here"])),
                list(csv.DictReader(io.StringIO(csv_text(tasks, metric, extras, rows)))))

    (header, _, *lines), records = table({"diet": 0.200, "slicegpt": -0.082})
    assert {line[1]: dict(zip(header, line))["params removed"] for line in lines} == {"diet": "0.200",
                                                                                      "slicegpt": "-0.082"}
    assert [r["decoder_param_sparsity"] for r in records] == ["0.2", "-0.082"]
    (header, _, *lines), records = table({"diet": 0.200, "random": 0.201})
    assert "params removed" not in header and "decoder_param_sparsity" not in records[0]


def test_an_unknown_baseline_is_one_line(monkeypatch, tmp_path):
    import diet.report as package
    from diet import DietError

    runs = [hand_run("diet", 0, 0.8), hand_run("random", 0, 0.6)]
    monkeypatch.setattr(package, "collect", lambda folders: package.Collected(runs=runs))
    with pytest.raises(DietError, match=r"^--baseline: 'generc' has no runs here; allowed: diet, random$"):
        package.report([tmp_path], baseline="generc")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_report_files_get_the_modes_a_plain_write_would(monkeypatch, tmp_path):
    import diet.report as package

    runs = [hand_run("diet", 0, 0.8), hand_run("random", 0, 0.6)]
    monkeypatch.setattr(package, "collect", lambda folders: package.Collected(runs=runs))
    umask = os.umask(0o002)  # group-writable, as on shared storage
    try:
        written = package.report([tmp_path])
    finally:
        os.umask(umask)
    assert written["plots"]
    for path in (written["markdown"], written["csv"], *written["plots"]):
        assert oct(path.stat().st_mode & 0o777) == oct(0o664), path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg_vs_sparsity.png", "report.csv", "report.md"]
