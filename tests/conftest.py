import copy
import functools
import logging
import os
import sys
import tempfile

# Before any Hugging Face import: offline, and every cache in a throwaway folder (CI exports these too).
_scratch = tempfile.mkdtemp(prefix="diet-tests-")
for name, value in {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
    "HF_HOME": os.path.join(_scratch, "hf"), "WANDB_DIR": os.path.join(_scratch, "wandb"),
    "WANDB_DATA_DIR": os.path.join(_scratch, "wandb-data"), "WANDB_CACHE_DIR": os.path.join(_scratch, "wandb-cache"),
    "WANDB_CONFIG_DIR": os.path.join(_scratch, "wandb-config"), "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(name, value)

# Under pytest-xdist, each worker gets its share of the cores for torch (and passes it on to the subprocesses its
# tests start), so two workers on two cores do not run four busy threads. Set before torch is imported.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = max(1, len(os.sched_getaffinity(0)) // _workers)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(_threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_threads)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models():
    """Both tiny families as the configs in conf/model describe them."""
    from omegaconf import OmegaConf

    from diet.config import CONF_DIR
    from diet.models import tiny

    built = {}
    for name in ("tiny_gemma2", "tiny_llama"):
        cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
        built[name] = tiny.build(cfg.family, dict(cfg.config), seed=0)
    return built


@pytest.fixture(scope="session")
def compose_cfg():
    """diet.config.compose(OVERRIDES): the config `python -m diet.run OVERRIDES` runs. Each distinct override list is
    composed once per session (lightning-hydra-template's cfg_train_global); every call hands out a fresh copy."""
    from diet import config

    @functools.cache
    def composed(overrides: tuple[str, ...]):
        return config.compose(list(overrides))

    return lambda *overrides: copy.deepcopy(composed(overrides))


@pytest.fixture
def diet_in_process(compose_cfg, tmp_path, caplog, monkeypatch):
    """`python -m diet.run OVERRIDES` without the subprocess: diet_in_process(*overrides, run_dir="run") composes the
    overrides, puts the caches in tmp_path/cache (this test's own), runs into tmp_path/RUN_DIR and returns what
    diet.run.run returns (the RunResult). A user error raises diet.DietError, which the command line prints as one
    line and exits 2. diet's INFO log lines are in caplog; what the run prints is in capsys."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from diet import run

    caplog.set_level(logging.INFO, logger="diet")
    monkeypatch.setenv("WANDB_MODE", os.environ["WANDB_MODE"])  # a test may change it; undone after the test

    def run_in_process(*overrides: str, run_dir: str = "run"):
        cfg = compose_cfg(*overrides)
        with open_dict(cfg):
            cfg.cache_dir = str(tmp_path / "cache")
        return run.run(cfg, tmp_path / run_dir)

    yield run_in_process
    GlobalHydra.instance().clear()
