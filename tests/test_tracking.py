import os

import pytest

from diet import tracking


def test_flattened_config_has_every_key_as_a_column_and_no_secrets():
    config = {"sparsity": 0.3, "model": {"name": "gemma2_9b", "hf_token": "hf_abc", "name_or_path": "google/gemma-2-9b"},
              "logger": {"name": "wandb", "api_key": "xyz", "tags": ["a"]}, "vote": {"threshold": None}}
    flat = tracking.flatten_config(config)
    assert flat == {"sparsity": 0.3, "model.name": "gemma2_9b", "model.name_or_path": "google/gemma-2-9b",
                    "logger.name": "wandb", "logger.tags": ["a"], "vote.threshold": None}
    assert "hf_abc" not in repr(flat) and "xyz" not in repr(flat)


def test_config_hash_ignores_what_does_not_change_the_mask():
    base = {"sparsity": 0.3, "seed": 0, "logger": {"name": "wandb"}, "eval": {"limit": 10}}
    assert tracking.config_hash(base) == tracking.config_hash({**base, "logger": {"name": "none"},
                                                               "eval": {"limit": None}})
    assert tracking.config_hash(base) != tracking.config_hash({**base, "sparsity": 0.2})


def test_disabled_and_none_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.log_run({"name": "wandb", "mode": "offline"}, run_dir=str(tmp_path), config={}, results={},
                            mask_path="", name="x", group=None) is None
    assert tracking.log_run({"name": "none"}, run_dir=str(tmp_path), config={}, results={}, mask_path="", name="x",
                            group=None) is None
    assert os.listdir(tmp_path) == []


def test_one_flatten_serves_profile_statistics_wandb_configs_and_report_settings():
    import torch

    from diet import flatten, profile

    # profile: {point: {stat: tensor}} -> "point/stat", in the order collected
    stats = {"mlp.1": {"sum_abs": torch.ones(2), "sum_sq": torch.zeros(2)}, "mlp.0": {"sum_abs": torch.ones(3)}}
    flat = flatten(stats, sep="/")
    assert list(flat) == ["mlp.1/sum_abs", "mlp.1/sum_sq", "mlp.0/sum_abs"]
    assert profile.unflatten(flat).keys() == stats.keys() and flat["mlp.0/sum_abs"] is stats["mlp.0"]["sum_abs"]
    # config (W&B columns, report settings): "a.b.c"; lists stay values, an empty group gives no column
    config = {"model": {"name": "m", "config": {"hidden_size": 8, 0: None}}, "tasks": {"names": ["a", {"x": 1}]},
              "sparsity": 0.3, "empty": {}, "logger": {"api_key": "xyz", "secrets": {"a": 1}, "tags": []}}
    assert list(flatten(config).items()) == [
        ("model.name", "m"), ("model.config.hidden_size", 8), ("model.config.0", None),
        ("tasks.names", ["a", {"x": 1}]), ("sparsity", 0.3), ("logger.api_key", "xyz"), ("logger.secrets.a", 1),
        ("logger.tags", [])]
    assert list(tracking.flatten_config(config).items()) == [
        ("model.name", "m"), ("model.config.hidden_size", 8), ("model.config.0", None),
        ("tasks.names", ["a", {"x": 1}]), ("sparsity", 0.3), ("logger.tags", [])]


def test_the_wandb_mode_is_set_for_one_run_only(tmp_path, monkeypatch):
    """The logger sets WANDB_MODE while it logs (the environment outranks init's mode) and puts it back, so the
    next job of an in-process sweep reads its own logger.mode, not the last one's or an offline fallback's."""
    seen = []

    def fake_run(wandb, logger_cfg, mode, *args):
        seen.append(os.environ["WANDB_MODE"])
        if mode == "online":
            raise ConnectionError("no network")
        return "folder"

    monkeypatch.setattr(tracking, "_log_run", fake_run)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    kwargs = dict(run_dir=str(tmp_path), config={}, results={}, mask_path="", name="x", group=None)
    assert tracking.log_run({"name": "wandb", "mode": "online"}, **kwargs) == "folder"  # fell back offline
    assert seen == ["online", "offline"] and "WANDB_MODE" not in os.environ
    assert tracking.log_run({"name": "wandb", "mode": "online"}, **kwargs) == "folder"
    assert seen[2] == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.log_run({"name": "wandb", "mode": "online"}, **kwargs) == "folder"
    assert seen[4:] == ["offline"] and os.environ["WANDB_MODE"] == "offline"
