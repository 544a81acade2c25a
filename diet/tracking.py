"""W&B tracking. Never fatal: every local output is written before W&B is touched, and any W&B failure is a warning."""
from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
_SECRET = re.compile(r"(token|key|secret|password)", re.IGNORECASE)


def flatten_config(cfg: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b.c": value}, so every swept key is a filterable W&B column. Secrets are dropped."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if _SECRET.search(str(key)):
            continue
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_run(logger_cfg: dict, *, run_dir: str, config: dict, results: dict, mask_path: str, name: str,
            group: str | None) -> str | None:
    """Log one finished run; returns the W&B run folder, or None when tracking is off or failed."""
    if logger_cfg.get("name", "none") == "none":
        return None
    mode = os.environ.get("WANDB_MODE") or logger_cfg.get("mode") or "offline"
    try:
        import wandb

        os.environ.setdefault("WANDB_INIT_TIMEOUT", "20")  # the default 90 s blocks a run with no network
        run = wandb.init(
            project=logger_cfg.get("project", "diet"), entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group") or group, tags=list(logger_cfg.get("tags") or []), name=name,
            mode=mode, dir=run_dir, config=flatten_config(config), reinit="finish_previous",
        )
        for task, values in results["metrics"].items():
            for metric, value in values.items():
                if value is not None:
                    run.summary[f"{task}/{metric}"] = value
        for metric, value in results["average"].items():
            if value is not None:
                run.summary[f"average/{metric}"] = value
        run.summary["sparsity/achieved"] = results["sparsity"]["achieved"]
        run.summary["params/pruned"] = results["params"]["pruned"]
        run.summary["params/ratio"] = results["params"]["pruned"] / results["params"]["dense"]
        for stage, seconds in results["timings_s"].items():
            run.summary[f"time/{stage}"] = seconds
        artifact = wandb.Artifact(f"mask-{results['mask_sha256'][:12]}", type="mask",
                                  metadata={k: results[k] for k in ("target", "method", "scoring", "model")})
        artifact.add_file(mask_path, name="mask.safetensors")
        run.log_artifact(artifact)
        folder = run.dir
        run.finish()
        return os.path.dirname(folder)
    except Exception as err:  # tracking must never lose a result
        log.warning("W&B logging failed (%s: %s); results.json and mask.safetensors are complete in %s",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "", run_dir)
        return None
