"""load(cfg) -> LoadedModel: the model, its tokenizer, its family adapter and a fingerprint of its weights."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file

from diet import DietError
from diet.cache import digest
from diet.models import demo, tiny
from diet.models.adapters import ADAPTERS, get_adapter

log = logging.getLogger(__name__)

SOURCES = ("hub", "demo", "tiny")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: object
    fingerprint: str  # changes whenever the weights may differ; part of every cache key


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DietError(f"device: '{device}' is not a torch device; allowed: auto, cpu, cuda, cuda:N") from None


def load(model_cfg, *, device: torch.device, cache_dir: str, seed: int = 0) -> LoadedModel:
    source = model_cfg.source
    if source not in SOURCES:
        raise DietError(f"model.source: '{source}' is not one of {', '.join(SOURCES)}")
    if model_cfg.dtype not in DTYPES:
        raise DietError(f"model.dtype: '{model_cfg.dtype}' is not one of {', '.join(DTYPES)}")
    dtype = DTYPES[model_cfg.dtype]
    if source == "tiny":
        overrides = dict(model_cfg.config)
        model, tokenizer = tiny.build(model_cfg.family, overrides, seed=seed, dtype=dtype)
        fingerprint = digest({"tiny": model_cfg.family, "config": overrides, "seed": seed, "dtype": model_cfg.dtype})
    else:
        if source == "demo":
            path = str(demo.checkpoint(cache_dir))
        else:
            path = model_cfg.name_or_path
            check_family(path, model_cfg.revision)
        device_map = model_cfg.get("device_map")
        model, tokenizer = _from_pretrained(path, model_cfg.revision, dtype, device_map)
        fingerprint = digest({"path": model_cfg.name_or_path, "revision": model_cfg.revision,
                             "commit": getattr(model.config, "_commit_hash", None),
                             "files": _local_weight_stamp(path), "dtype": model_cfg.dtype})
    adapter = get_adapter(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not (model_cfg.get("device_map") or model_cfg.get("offload")):
        model = model.to(device)  # a device map places the model itself; offload keeps it in CPU memory
    return LoadedModel(model.eval(), tokenizer, adapter, fingerprint)


def check_family(path: str, revision=None) -> str | None:
    """The checkpoint's family (config.json's model_type), read before any weights are loaded; one line if diet has no
    adapter for it. None when config.json cannot be read here: the loader then says why."""
    try:
        config_file = cached_file(path, "config.json", revision=revision)
        family = json.loads(Path(config_file).read_text()).get("model_type")
    except Exception:  # no such folder, hub unreachable, gated: reported by _from_pretrained
        return None
    if family not in ADAPTERS:
        raise DietError(f"model.name_or_path: '{path}' is a {family!r} checkpoint (config.json model_type), which diet "
                        f"cannot prune; supported families: {', '.join(sorted(ADAPTERS))}")
    return family


def _from_pretrained(path: str, revision, dtype, device_map=None):
    is_dir = os.path.isdir(path)
    looks_local = path.startswith(("/", "./", "../", "~")) or is_dir
    if looks_local and not (Path(path).expanduser() / "config.json").exists():
        raise DietError(f"model.name_or_path: '{path}' is not a Hugging Face checkpoint folder (no config.json there)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype, device_map=device_map)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(err).lower()
        reason = ("the Hugging Face hub is unreachable (offline) and it is not in the local HF cache"
                  if offline else f"it could not be loaded: {str(err).splitlines()[0]}")
        raise DietError(f"model.name_or_path: '{path}': {reason}; use a local checkpoint folder, "
                        "model=gemma3_270m (offline demo) or model=tiny_gemma2") from None
    return model, tokenizer


def _local_weight_stamp(path: str) -> list:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return []
    return sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in folder.iterdir()
                  if f.suffix in (".safetensors", ".bin", ".json"))
