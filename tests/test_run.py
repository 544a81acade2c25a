"""End to end on the tiny models and the demo tasks, offline: diet.run.run on a composed config (what
`python -m diet.run OVERRIDES` runs, in this process), and the command line itself where a test is about it (exit
codes, the one-line error on stderr, the W&B fallback, lm-eval's own CLI)."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diet import DietError
from helpers import QUICK, diet_cli


def test_end_to_end_run_writes_the_output_contract(tmp_path, diet_in_process, capsys):
    diet_in_process("model=tiny_gemma2", *QUICK, "eval.dense=true", "logger=wandb", "sparsity=0.25")
    stdout = capsys.readouterr().out
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert results["model"] == "tiny_gemma2" and results["method"] == "diet" and results["target"] == "mlp"
    assert results["tasks"] == results["eval_tasks"] == ["demo_capitals", "demo_antonyms", "demo_sums", "demo_plurals"]
    removed = 2 * 32 * 3 * 64  # 32 of 128 neurons per layer: their gate/up rows and down columns
    params = results["params"]
    assert results["sparsity"] == {"requested": 0.25, "achieved": 0.25, "params": {
        "decoder": removed / params["decoder_dense"], "model": removed / params["dense"]}}
    assert params["pruned"] == params["dense"] - removed
    assert params["decoder_pruned"] == params["decoder_dense"] - removed
    assert set(results["timings_s"]) == {"profile", "vote", "prune", "eval", "dense_eval", "total"}
    assert results["profile_cache"] == {t: "miss" for t in results["tasks"]}
    for task, row in results["metrics"].items():
        assert 0 <= row["acc"] <= 1 and 0 <= row["acc_norm"] <= 1
        assert results["drop"][task]["acc"] == pytest.approx(results["dense_metrics"][task]["acc"] - row["acc"])
    assert results["average"]["acc"] == pytest.approx(sum(r["acc"] for r in results["metrics"].values()) / 4)
    with safe_open(run / "mask.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["target"] == "mlp"
        final = {k: f.get_tensor(k) for k in ("mlp.0", "mlp.1")}
        assert all(f.get_tensor(k).dtype == torch.bool for k in keys)
    assert keys == {"mlp.0", "mlp.1"} | {f"task.{t}.mlp.{i}" for t in results["tasks"] for i in (0, 1)}
    assert all(int(m.sum()) == 96 for m in final.values())
    for png in ("kept_per_layer.png", "vote_histogram.png", "mask_overlap.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (run / png).stat().st_size > 2000
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    (record,) = offline_run.glob("*.wandb")  # W&B's transaction log: config, summary, history, artifacts
    log_bytes = record.read_bytes()
    for needle in (b"average/paper", b"demo_sums/acc", b"sparsity/achieved", b"params/ratio", b"time/profile",
                   b"profile_cache/misses", b"mask.safetensors", b"calib.n_samples"):
        assert needle in log_bytes, needle
    (table,) = offline_run.glob("files/media/table/per_task_*.table.json")
    rows = json.loads(table.read_text())["data"]
    assert [r[0] for r in rows] == results["tasks"]
    assert rows[0][2:] == pytest.approx([results["dense_metrics"]["demo_capitals"]["acc"],
                                         results["metrics"]["demo_capitals"]["acc"], results["drop"]["demo_capitals"]["acc"]])
    assert len(list(offline_run.glob("files/media/images/plots/*.png"))) == 3
    assert "dense vs" not in stdout and "demo_capitals" in stdout and "average" in stdout


def test_same_config_gives_identical_mask_and_second_run_hits_profile_cache(tmp_path, diet_in_process):
    diet_in_process("model=tiny_llama", *QUICK, "logger=none", "prune.target=hidden", run_dir="a")
    diet_in_process("model=tiny_llama", *QUICK, "logger=none", "prune.target=hidden", run_dir="b")
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["mask_sha256"] == b["mask_sha256"]
    masks = [load_file(tmp_path / d / "mask.safetensors") for d in ("a", "b")]
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert set(a["profile_cache"].values()) == {"miss"} and set(b["profile_cache"].values()) == {"hit"}
    assert a["params"]["pruned"] < a["params"]["dense"] and a["sparsity"]["achieved"] == pytest.approx(12 / 64)
    assert (tmp_path / "b" / "kept_by_score.png").stat().st_size > 2000


def test_sparsity_sweep_profiles_once(tmp_path, diet_in_process):
    # the jobs of `-m sparsity=0.1,0.2,0.3` as Hydra's basic launcher runs them: one after the other in one process
    for num, sparsity in enumerate((0.1, 0.2, 0.3)):
        diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", f"sparsity={sparsity}", run_dir=f"sweep/{num}")
    results = [json.loads((tmp_path / "sweep" / str(i) / "results.json").read_text()) for i in range(3)]
    assert [r["sparsity"]["requested"] for r in results] == [0.1, 0.2, 0.3]
    assert [set(r["profile_cache"].values()) for r in results] == [{"miss"}, {"hit"}, {"hit"}]
    assert results[0]["params"]["pruned"] > results[1]["params"]["pruned"] > results[2]["params"]["pruned"]


def test_saved_pruned_model_loads_back_with_plain_transformers(tmp_path, diet_in_process):
    from transformers import AutoModelForCausalLM

    diet_in_process("model=tiny_llama", *QUICK, "logger=none", "prune.save=true", "method=random")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "pruned_model")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert model.config.intermediate_size == 128 - 26
    assert sum(p.numel() for p in model.parameters()) == results["params"]["pruned"]
    assert results["profile_cache"] == {} and results["timings_s"]["profile"] < 1


@pytest.mark.slow
def test_wandb_failure_still_writes_results_and_exits_zero(tmp_path):
    # Online with no API key: W&B refuses at once; the run falls back to offline and keeps every local output.
    # A true command-line run: the exit status is the point, and W&B's mode lives in the process environment.
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "", "WANDB_BASE_URL": "http://127.0.0.1:9"}
    proc = diet_cli(tmp_path, "model=tiny_gemma2", *QUICK, "logger=wandb", "logger.mode=online", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert "falling back to offline" in proc.stdout + proc.stderr


# On the command line: an unknown group choice (caught before Hydra), a bad value (caught by validation inside the
# Hydra app) and one found mid-run (after the tasks are loaded) each end as one `diet: error:` line and exit 2.
@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["model=gemma2_99b"], "diet: error: model: unknown choice 'gemma2_99b'; allowed: gemma2_27b, gemma2_2b"),
    (["model=tiny_llama", "sparsity=1.0"], "sparsity: 1.0 is not allowed; allowed: a number in [0, 1)"),
    (["model=tiny_llama", "tasks=demo", "calib.n_samples=500"], "calib.n_samples: 500 is more than task"),
])
def test_bad_input_is_one_line_exit_2_and_no_results(tmp_path, overrides, message):
    proc = diet_cli(tmp_path, *overrides, "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("diet: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


# The rest in this process: the run raises one DietError line (which the command line prints and exits 2 on, as
# above) and writes no results.json.
@pytest.mark.parametrize("overrides,message", [
    (["model=tiny_llama", "tasks.names=[boolqq]"], "tasks.names: unknown lm-eval task 'boolqq'"),
    (["model=tiny_llama", "tasks=demo", "eval.tasks=[demo_sums,boolqq]"], "eval.tasks: unknown lm-eval task 'boolqq'"),
    (["model=tiny_llama", "vote.threshold=0"], "vote.threshold: 0 is not allowed"),
    (["model=gemma2_2b", "tasks=demo", "calib.n_samples=4"], "model.name_or_path: 'google/gemma-2-2b': the Hugging Face hub is unreachable"),
    (["model=tiny_llama", "model.name_or_path=/no/such/ckpt", "model.source=hub", "tasks=demo", "calib.n_samples=4"],
     "model.name_or_path: '/no/such/ckpt' is not a Hugging Face checkpoint folder"),
])
def test_bad_input_is_one_diet_error_line_and_no_results(tmp_path, diet_in_process, overrides, message):
    with pytest.raises(DietError) as err:
        diet_in_process(*overrides, "logger=none")
    assert str(err.value).splitlines() == [str(err.value)] and message in str(err.value)
    assert not (tmp_path / "run" / "results.json").exists()


def test_leave_one_out_evaluates_outside_the_mix_and_dense_eval_is_cached(tmp_path, diet_in_process, caplog):
    overrides = ["model=tiny_gemma2", *QUICK, "logger=none", "tasks.names=[demo_capitals,demo_antonyms,demo_plurals]",
                 "eval.tasks=[demo_sums]", "eval.dense=true", "eval.log_samples=true"]
    diet_in_process(*overrides, run_dir="a")
    first_log = caplog.text
    caplog.clear()
    diet_in_process(*overrides, "sparsity=0.5", run_dir="b")
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["tasks"] == ["demo_capitals", "demo_antonyms", "demo_plurals"] and a["eval_tasks"] == ["demo_sums"]
    assert set(a["metrics"]) == {"demo_sums"} and set(a["profile_cache"]) == set(a["tasks"])
    assert "dense eval cache: miss" in first_log
    assert "dense eval cache: hit" in caplog.text
    assert a["dense_metrics"] == b["dense_metrics"] and "dense_eval" in a["timings_s"]
    samples = json.loads((tmp_path / "a" / "eval_samples.json").read_text())
    assert list(samples) == ["demo_sums"] and len(samples["demo_sums"]) == 8  # eval.limit documents


def test_global_scope_gives_per_layer_widths_that_load_back(tmp_path, diet_in_process):
    from diet.prune import count_params, load_pruned

    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "prune.scope=global", "prune.multiple_of=8",
                    "scoring=wanda", "sparsity=0.3", "prune.save=true")
    masks = load_file(tmp_path / "run" / "mask.safetensors")
    kept = [int(masks[f"mlp.{i}"].sum()) for i in (0, 1)]
    assert all(k % 8 == 0 and k >= 16 for k in kept) and abs(sum(kept) - 0.7 * 256) <= 4
    model, _ = load_pruned(tmp_path / "run" / "pruned_model")
    assert [layer.mlp.down_proj.in_features for layer in model.model.layers] == kept
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert count_params(model) == results["params"]["pruned"]


def test_per_task_method_evaluates_each_task_with_its_own_mask(tmp_path, diet_in_process):
    diet_in_process("model=tiny_llama", *QUICK, "logger=none", "method=per_task",
                    "tasks.names=[demo_capitals,demo_sums]")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    masks = load_file(tmp_path / "run" / "mask.safetensors")
    assert set(results["metrics"]) == {"demo_capitals", "demo_sums"}
    assert not torch.equal(masks["task.demo_capitals.mlp.0"], masks["task.demo_sums.mlp.0"])
    assert int(masks["task.demo_sums.mlp.1"].sum()) == 128 - 26
    # the hashes are of the masks the evaluated models used, each task's own, not of the merged mask
    from diet.record import mask_sha256

    own = {t: {k.split(".", 2)[2]: m for k, m in masks.items() if k.startswith(f"task.{t}.")}
           for t in ("demo_capitals", "demo_sums")}
    assert results["task_mask_sha256"] == {t: mask_sha256(m) for t, m in own.items()}
    assert results["mask_sha256"] == mask_sha256({k: m for k, m in masks.items() if k.startswith("task.")})
    assert results["mask_sha256"] != mask_sha256({k: m for k, m in masks.items() if not k.startswith("task.")})


def test_mlp_and_heads_run_prunes_both_with_their_own_sparsity(tmp_path, diet_in_process):
    from transformers import AutoModelForCausalLM

    diet_in_process("model=tiny_llama", *QUICK, "logger=none", "prune.target=[mlp,heads]",
                    "prune.sparsity_per_target.heads=0.5", "prune.save=true")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["target"] == "mlp+heads"
    assert results["sparsity"]["per_target"] == {"mlp": 26 / 128, "heads": 0.5}
    masks = load_file(tmp_path / "run" / "mask.safetensors")
    assert {k for k in masks if not k.startswith("task.")} == {"mlp.0", "mlp.1", "heads.0", "heads.1"}
    for i in (0, 1):  # tiny_llama: 4 query heads in 2 KV groups; per_group keeps one of each
        assert masks[f"heads.{i}"].reshape(2, 2).sum(dim=1).tolist() == [1, 1]
        assert all(masks[f"task.{t}.heads.{i}"].reshape(2, 2).sum(dim=1).tolist() == [1, 1] for t in results["tasks"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "pruned_model")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    assert model.config.intermediate_size == 128 - 26
    assert sum(p.numel() for p in model.parameters()) == results["params"]["pruned"]
    assert (tmp_path / "run" / "kept_heads_per_layer.png").stat().st_size > 2000


@pytest.mark.slow
def test_lm_eval_command_line_loads_the_saved_pruned_model(tmp_path, diet_in_process):
    """A pruned checkpoint is an ordinary HF checkpoint: lm-eval's own CLI evaluates it by path."""
    import yaml

    from diet.tasks import demo

    diet_in_process("model=tiny_gemma2", *QUICK, "logger=none", "prune.save=true", "prune.target=hidden",
                    "eval.tasks=[demo_sums]")
    include = tmp_path / "tasks"
    include.mkdir()
    (include / "demo_sums.yaml").write_text(yaml.safe_dump(demo.demo_task_config("demo_sums", tmp_path / "data")))
    demo.write_demo_data("demo_sums", tmp_path / "data")
    cli = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={tmp_path / 'run' / 'pruned_model'},dtype=float32", "--tasks", "demo_sums",
         "--include_path", str(include), "--limit", "8", "--device", "cpu", "--batch_size", "4",
         "--output_path", str(tmp_path / "lm_eval_out")],
        capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    ours = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]["demo_sums"]["acc"]
    (saved,) = (tmp_path / "lm_eval_out").rglob("results_*.json")
    assert json.loads(saved.read_text())["results"]["demo_sums"]["acc,none"] == pytest.approx(ours)


def test_unaligned_widths_warn_on_gpu_only():
    from diet.prune import gpu_alignment_warning

    cuda = torch.device("cuda", 0)
    assert gpu_alignment_warning(torch.device("cpu"), 1) is None
    assert gpu_alignment_warning(cuda, 128) is None and gpu_alignment_warning(cuda, 64) is None
    message = gpu_alignment_warning(cuda, 8)
    assert message.startswith("prune.multiple_of=8 on a GPU") and "prune.multiple_of=128 is recommended" in message
