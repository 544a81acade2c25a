import os
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
