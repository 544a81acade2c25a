"""What a new user meets on a cluster: a wheel install, their own config folder, any checkpoint, a sweep whose jobs
fail, shared-storage file modes, device-independent defaults, dry runs and the docs' commands."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import QUIET, diet_cli

REPO = Path(__file__).resolve().parent.parent


def _env_without_checkout(**extra) -> dict:
    """The environment minus this checkout on PYTHONPATH (the venv's site-packages still hold the dependencies)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


@pytest.mark.slow
def test_wheel_install_runs_from_any_directory(tmp_path):
    # Build from a copy of the files a release holds, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for name in ("diet", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("diet-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], capture_output=True,
                               text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (site / "diet" / "conf" / "model" / "tiny_gemma2.yaml").is_file()
    assert (site / "diet" / "conf" / "hydra" / "launcher" / "local.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env_without_checkout(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import diet, diet.config as c; print(diet.__file__, c.CONF_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert where.stdout.split() == [str(site / "diet" / "__init__.py"), str(site / "diet" / "conf")], where.stderr
    proc = subprocess.run([sys.executable, "-m", "diet.run", "model=tiny_gemma2", *QUIET, "eval.limit=4",
                           f"cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run"],
                          capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "results.json").read_text())["model"] == "tiny_gemma2"


def _save_checkpoint(folder: Path, family: str = "llama", intermediate_size: int = 512) -> Path:
    from diet.models import tiny

    model, tokenizer = tiny.build(family, {"hidden_size": 64, "intermediate_size": intermediate_size,
                                           "num_hidden_layers": 2, "num_attention_heads": 4,
                                           "num_key_value_heads": 2, "max_position_embeddings": 1024}, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_user_config_folder_with_a_minimal_model_file(tmp_path):
    ckpt = _save_checkpoint(tmp_path / "ckpts" / "my-llama")
    user_conf = tmp_path / "my_conf"
    (user_conf / "model").mkdir(parents=True)
    (user_conf / "model" / "my_model.yaml").write_text(f"name: my_model\nname_or_path: {ckpt}\ndtype: float32\n")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "diet.run", "--config-dir", str(user_conf), "model=my_model", *QUIET,
                           "sparsity=0.25", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "my_model" and results["model_id"] == str(ckpt)
    # the keys the user left out come from conf/model_defaults.yaml: speed-safe widths, one GPU
    assert results["prune"]["multiple_of"] == 128 and results["sparsity"]["achieved"] == 0.25
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run / ".hydra" / "config.yaml").model
    assert (saved.source, saved.gpus, saved.width_multiple, saved.offload) == ("hub", 1, 128, False)
    # the run ends by saying where it went and its headline number
    assert proc.stdout.strip().splitlines()[-1] == (
        f"diet: run folder {run}: average {results['average']['paper']:.4f}, sparsity 0.250")


def test_early_choice_check_knows_user_folders(tmp_path):
    from diet import DietError, config

    (tmp_path / "a" / "model").mkdir(parents=True)
    (tmp_path / "a" / "model" / "mine.yaml").write_text("name: mine\nname_or_path: x\ndtype: float32\n")
    (tmp_path / "b" / "tasks").mkdir(parents=True)
    (tmp_path / "b" / "tasks" / "ours.yaml").write_text("names: [demo_sums]\n")
    config.check_group_choices(["--config-dir", str(tmp_path / "a"), "model=mine"])
    config.check_group_choices([f"--config-dir={tmp_path / 'a'}", "model=mine,gemma2_2b"])
    config.check_group_choices([f"hydra.searchpath=[file://{tmp_path / 'a'},file://{tmp_path / 'b'}]",
                                "model=mine", "tasks=ours"])
    with pytest.raises(DietError, match=r"^model: unknown choice 'mine'; allowed: gemma2_27b"):
        config.check_group_choices(["model=mine"])
    with pytest.raises(DietError, match=r"^tasks: unknown choice 'theirs'; allowed: demo, ours, paper7 \(in "):
        config.check_group_choices([f"hydra.searchpath=[file://{tmp_path / 'b'}]", "tasks=theirs"])


@pytest.fixture
def umask_022():
    """The process runs under umask 022 (a user's usual one) for the test; the old umask comes back after it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_generic_hf_model_reads_its_family_and_names_itself(tmp_path, diet_in_process, umask_022):
    ckpt = _save_checkpoint(tmp_path / "ckpts" / "llama-tiny-512", intermediate_size=384)
    # one run checks model=hf and, under umask 022, that everything diet writes is readable by the group
    diet_in_process("model=hf", f"model.name_or_path={ckpt}", "model.dtype=float32", *QUIET, "prune.save=true",
                    "prune.multiple_of=1")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == "llama-tiny-512" and results["model_id"] == str(ckpt)

    written = [p for root in (tmp_path / "run", tmp_path / "cache") for p in [root, *root.rglob("*")]]
    kinds = {p.suffix for p in written}
    assert {".json", ".safetensors", ".png", ".jsonl"} <= kinds and (tmp_path / "run" / "pruned_model").is_dir()
    private = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in written
               if (p.stat().st_mode & (0o055 if p.is_dir() else 0o044)) != (0o055 if p.is_dir() else 0o044)]
    assert not private, private


def test_unsupported_family_and_missing_checkpoint_are_one_line(tmp_path):
    from hydra import compose, initialize_config_dir

    from diet import DietError, config, models

    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(DietError, match=r"^model.name_or_path: '.*/gpt' is a 'gpt2' checkpoint \(config.json "
                                        r"model_type\), which diet cannot prune; supported families: gemma2, "):
        models.check_family(str(tmp_path / "gpt"))
    assert models.check_family(str(_save_checkpoint(tmp_path / "ok"))) == "llama"
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf"])
    with pytest.raises(DietError, match=r"^model.name_or_path: missing; allowed: a hub id"):
        config.validate(cfg)


@pytest.mark.slow
def test_failed_job_fails_a_submitit_sweep_after_the_others_ran(tmp_path):
    quick = [o for o in QUIET if not o.startswith("calib.n_samples")]
    proc = diet_cli(tmp_path, "hydra/launcher=local", "model=tiny_gemma2", *quick, "calib.n_samples=500,6",
                    run_dir="sweep", multirun=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert json.loads((sweep / "1" / "results.json").read_text())["metrics"]  # the good job still ran
    tail = proc.stderr.strip().splitlines()[-5:]
    average = json.loads((sweep / "1" / "results.json").read_text())["average"]["paper"]
    assert tail[0] == f"sweep {sweep}: 2 job(s), 1 done, 1 failed or unfinished"
    assert re.fullmatch(rf"  job 0 failed  {sweep}/0  calib.n_samples: 500 is more than task .*", tail[1])
    assert tail[2] == f"  job 1 done    {sweep}/1  average {average:.4f}, sparsity 0.203"
    assert tail[3].startswith("diet: error: job 0 failed (calib.n_samples=500): calib.n_samples: 500 is more than")
    assert tail[4] == "diet: error: 1 job(s) of the sweep failed; see status.json in their folders"
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "1", "multirun.yaml"]  # no stray %j
    assert all(p.is_file() for p in (sweep / ".submitit").iterdir())


def test_a_crashed_job_is_recorded_and_fails_the_sweep(tmp_path):
    from types import SimpleNamespace

    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from diet import sweeps

    job = tmp_path / "0"
    job.mkdir()
    (job / "status.json").write_text(json.dumps({"state": "running", "stage": "eval"}))
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job)}}})
    ret = SimpleNamespace(status=JobStatus.FAILED, _return_value=RuntimeError("CUDA out of memory\nmore"),
                          hydra_cfg=hydra_cfg)
    sweeps.RunSummary().on_job_end(OmegaConf.create({}), ret)
    status = json.loads((job / "status.json").read_text())
    assert status == {"state": "failed", "stage": "eval", "error": "RuntimeError: CUDA out of memory"}
    sweep_cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "${hydra.job.num}"},
                                            "overrides": {"task": ["sparsity=0.1,0.2"]}}})
    sweeps.RunSummary().on_multirun_start(sweep_cfg)  # Hydra aborts the sweep before on_multirun_end
    try:
        assert sweeps.exit_status() == 2
        assert [o.state for o in sweeps._sweep_failures] == ["failed", "missing"]
    finally:
        sweeps._sweep_failures.clear()
    assert sweeps.exit_status() == 0


def test_default_mask_is_the_same_whatever_the_device(tmp_path, monkeypatch):
    """A minimal model file gets width_multiple 128 from the defaults, and no default depends on the device."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from diet import config, models, profile, stages
    from diet.models import adapters

    user_conf = tmp_path / "conf"
    (user_conf / "model").mkdir(parents=True)
    (user_conf / "model" / "mine.yaml").write_text("name: mine\nname_or_path: /x\ndtype: float32\n")
    cfgs = {}
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        for device in ("cpu", "cuda:0"):
            cfgs[device] = compose("config", overrides=[f"hydra.searchpath=[file://{user_conf}]", "model=mine",
                                                        f"device={device}", "sparsity=0.3"])
    assert {c.prune.multiple_of for c in cfgs.values()} == {128}
    drop = lambda c: {k: v for k, v in OmegaConf.to_container(c, resolve=True).items() if k != "device"}  # noqa: E731
    assert drop(cfgs["cpu"]) == drop(cfgs["cuda:0"])

    from diet.models import tiny

    model, tokenizer = tiny.build("llama", {"hidden_size": 64, "intermediate_size": 1024,
                                                   "num_hidden_layers": 2, "num_attention_heads": 4}, seed=0)
    loaded = models.LoadedModel(model, tokenizer, adapters.get_adapter(model), "fp")
    gen = torch.Generator().manual_seed(0)
    stats = {task: {f"mlp.{layer}": {name: torch.rand(1024, generator=gen) for name in ("sum_sq", "sum_abs", "max_abs")}
                    for layer in range(2)} for task in ("a", "b", "c")}
    for task_stats in stats.values():
        for point in task_stats.values():
            point["count"] = torch.tensor([10.0])
    masks = {}
    for device, cfg in cfgs.items():
        monkeypatch.setattr(profile, "input_device", lambda *a, d=device: torch.device(d))
        masks[device] = stages.vote(config.plan(cfg), loaded, stats).masks
    assert all(torch.equal(masks["cpu"][k], masks["cuda:0"][k]) for k in masks["cpu"])
    assert [int(m.sum()) for m in masks["cpu"].values()] == [768, 768]  # 70% of 1024, rounded to 128


@pytest.mark.slow
def test_dry_run_checks_calibration_split_sizes():
    env = {**os.environ, "DRY_RUN": "1", "LAUNCHER": "local", "PYTHON": sys.executable}
    script = [str(REPO / "launch" / "ablate_scoring.sh"), "model=gemma3_270m", "tasks=demo"]
    too_many = subprocess.run(script, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert too_many.returncode == 2
    assert re.search(r"diet: error: job 0 \(.*\): calib.n_samples: 100 is more than task 'demo_\w+' can supply",
                     too_many.stderr), too_many.stderr[-2000:]
    fits = subprocess.run([*script, "calib.n_samples=16"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert ("dry run: 4 jobs compose and validate; launcher LocalLauncher; swept: scoring (4); calibration split "
            "sizes checked\n") in fits.stdout


def test_docs_wandb_sync_globs_match_without_globstar(tmp_path):
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "launch" / "README.md"]
    commands = [line for doc in docs for line in re.findall(r"`(wandb sync [^`]+)`", doc.read_text())]
    # the two the docs give: every run under outputs/, and the runs of the launch/ sweeps
    assert any("sweeps" in c for c in commands) and any("sweeps" not in c for c in commands), commands
    for run_dir in ("outputs/2026-11-30/12-00-00", "outputs/multirun/2026-11-30/12-00-00/3",
                    "outputs/sweeps/ablate_scoring-20261130-120000/2",
                    "outputs/sweeps/ablate_target-20261130-120000/mlp/1"):
        (tmp_path / run_dir / "wandb" / "offline-run-20261130_120000-abc").mkdir(parents=True)
    for command in commands:
        # bash as a user has it (no globstar: a `**` pattern matches nothing and stays literal); wandb prints its args
        fake_wandb = "wandb() { shift; printf '%s\\n' \"$@\"; }"
        listed = subprocess.run(["bash", "-c", f"{fake_wandb}; cd {tmp_path} && {command}"], capture_output=True,
                                text=True).stdout.split()
        assert listed and all((tmp_path / p).is_dir() for p in listed), (command, listed)
        assert len(listed) == (2 if "sweeps" in command else 4), (command, listed)
