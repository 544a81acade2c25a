import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from diet import DietError
from diet.config import CONF_DIR, check_group_choices, validate


def test_paper_defaults(compose_cfg):
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.model.name_or_path == "google/gemma-2-2b"
    assert list(cfg.tasks.names) == ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    assert (cfg.sparsity, cfg.calib.n_samples, cfg.vote.threshold, cfg.seed) == (0.2, 100, None, 0)
    assert (cfg.prune.target, cfg.scoring.name, cfg.method.name, cfg.logger.name, cfg.logger.mode) == \
        ("mlp", "act_l2", "diet", "wandb", "offline")


def test_users_command_composes(compose_cfg):
    cfg = compose_cfg("model=gemma2_9b", "sparsity=0.3")
    validate(cfg)
    assert (cfg.model.name_or_path, cfg.sparsity, cfg.model.gpus) == ("google/gemma-2-9b", 0.3, 1)


def test_demo_experiment_composes(compose_cfg):
    cfg = compose_cfg("experiment=demo")
    validate(cfg)
    assert cfg.model.name == "gemma3_270m" and cfg.model.source == "demo"
    assert cfg.tasks.names[0].startswith("demo_") and cfg.eval.dense is True


def test_any_task_list_and_checkpoint_path(compose_cfg):
    cfg = compose_cfg("tasks.names=[boolq,piqa]", "model.name_or_path=/ckpt/x", "scoring=act_l1", "logger=none",
                      "vote.threshold=0.5", "prune.target=hidden")
    validate(cfg)
    assert list(cfg.tasks.names) == ["boolq", "piqa"] and cfg.model.name_or_path == "/ckpt/x"


@pytest.mark.parametrize("override,message", [
    ("sparsity=1.0", "sparsity: 1.0 is not allowed; allowed: a number in [0, 1)"),
    ("sparsity=-0.1", "sparsity: -0.1 is not allowed"),
    ("calib.n_samples=0", "calib.n_samples: 0 is not allowed; allowed: an integer >= 1"),
    ("vote.threshold=0", "vote.threshold: 0 is not allowed; allowed: a fraction in (0, 1]"),
    ("vote.threshold=1.5", "vote.threshold: 1.5 is not allowed"),
    ("prune.target=width", "prune.target: 'width' is not allowed; allowed: mlp, hidden, heads"),
        ("prune.heads_gqa=some", "prune.heads_gqa: 'some' is not allowed; allowed: per_group, kv_group"),
        ("prune.sparsity_per_target.heads=0.3", "prune.sparsity_per_target.heads: 0.3 is not allowed; allowed: a key among prune.target (mlp)"),
    ("eval.batch_size=big", "eval.batch_size: 'big' is not allowed; allowed: an integer >= 1 or auto"),
    ("tasks.names=[]", "tasks.names: [] is not allowed"),
    ("data.local_dir=/no/such/dir", "data.local_dir: '/no/such/dir' is not a folder"),
    ("calib.fused_stats=sometimes", "calib.fused_stats: 'sometimes' is not allowed; allowed: auto (torch.compile on"),
])
def test_bad_values_name_key_value_and_allowed(compose_cfg, override, message):
    with pytest.raises(DietError) as err:
        validate(compose_cfg(override))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_group_choice_is_one_line():
    with pytest.raises(DietError, match=r"^model: unknown choice 'gemma2_99b'; allowed: gemma2_27b, gemma2_2b, gemma2_9b"):
        check_group_choices(["model=gemma2_99b"])
    with pytest.raises(DietError, match="scoring: unknown choice 'act_l3'"):
        check_group_choices(["-m", "scoring=act_l1,act_l3"])
    check_group_choices(["model=tiny_llama", "model.name_or_path=/x", "sparsity=0.1,0.2", "hydra/launcher=local"])


def test_launchers_compose():
    for launcher in ("local", "slurm"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}", "model=gemma2_9b"],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.sweep.dir = "/tmp/sweep"
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.mem_gb == 64
        assert cfg.hydra.launcher._target_.endswith("LocalLauncher" if launcher == "local" else "SlurmLauncher")
