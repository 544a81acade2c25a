"""W&B tracking. Never fatal: every local output is written before W&B is touched, and any W&B failure is a warning."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re

from diet import flatten
from diet.record import RunResult

log = logging.getLogger(__name__)

_SECRET = re.compile(r"(token|key|secret|password)", re.IGNORECASE)


def flatten_config(cfg: dict) -> dict:
    """Nested config -> {"a.b.c": value}, so every swept key is a filterable W&B column. Secrets are dropped."""
    return flatten(cfg, skip=_SECRET.search)


def log_run(logger_cfg: dict, *, run_dir: str, config: dict, results: RunResult, mask_path: str, name: str,
            group: str | None, plot_paths: list[str] = (), model_dir: str | None = None) -> str | None:
    """Log one finished run; returns the W&B run folder, or None when tracking is off or failed."""
    if logger_cfg.get("name", "none") == "none":
        return None
    mode = os.environ.get("WANDB_MODE") or logger_cfg.get("mode") or "offline"
    if mode == "disabled":
        return None
    try:
        return _log_to_wandb(logger_cfg, mode, run_dir, config, results, mask_path, name, group, plot_paths,
                             model_dir)
    except Exception as err:  # tracking must never lose a result
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if mode != "offline":
        log.warning("W&B %s logging failed (%s); falling back to offline mode (upload later with `wandb sync`)",
                    mode, reason)
        try:
            return _log_to_wandb(logger_cfg, "offline", run_dir, config, results, mask_path, name, group, plot_paths,
                                 model_dir)
        except Exception as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    log.warning("W&B logging failed (%s); results.json and mask.safetensors are complete in %s", reason, run_dir)
    return None


def _log_to_wandb(logger_cfg, mode, run_dir, config, results, mask_path, name, group, plot_paths, model_dir) -> str:
    import wandb  # seconds to import: only when a run logs to W&B

    os.environ.setdefault("WANDB_INIT_TIMEOUT", "20")  # the default 90 s blocks a run with no network
    # The environment outranks init(mode=...): keep the two the same for this run only, so a sweep's next job (in
    # this process) reads its own logger.mode again, not this one's, nor an offline fallback's.
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        return _log_run(wandb, logger_cfg, mode, run_dir, config, results, mask_path, name, group, plot_paths,
                        model_dir)
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = previous


def _log_run(wandb, logger_cfg, mode, run_dir, config, results, mask_path, name, group, plot_paths, model_dir) -> str:
    run = wandb.init(
        project=logger_cfg.get("project", "diet"), entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group") or group, tags=list(logger_cfg.get("tags") or []), name=name,
        mode=mode, dir=run_dir, config=flatten_config(config), reinit="finish_previous",
    )
    try:
        run.summary.update(summary_values(results))
        dense = results.dense_metrics or {}
        table = wandb.Table(columns=["task", "metric", "dense", "pruned", "drop"])
        for task, values in results.metrics.items():
            metric = results.paper_metric.get(task, "acc")
            pruned, before = values.get(metric), dense.get(task, {}).get(metric)
            table.add_data(task, metric, before, pruned, None if before is None or pruned is None else before - pruned)
        images = {f"plots/{os.path.splitext(os.path.basename(p))[0]}": wandb.Image(p) for p in plot_paths}
        run.log({"per_task": table, **images})
        artifact = wandb.Artifact(f"mask-{results.mask_sha256[:16]}", type="mask",
                                  metadata={k: getattr(results, k) for k in ("model", "target", "scope", "method",
                                                                             "scoring")})
        artifact.add_file(mask_path, name="mask.safetensors")
        run.log_artifact(artifact, aliases=["latest", f"config-{config_hash(config)}"])
        if logger_cfg.get("log_model"):
            if model_dir is None:
                log.warning("logger.log_model=true needs prune.save=true; no model artifact logged")
            else:
                model_artifact = wandb.Artifact(f"pruned-{results.model}-{config_hash(config)}", type="model")
                model_artifact.add_dir(model_dir)
                run.log_artifact(model_artifact)
        return os.path.dirname(run.dir)
    finally:
        run.finish()


def summary_values(results: RunResult) -> dict:
    """Flat W&B summary: per-task metrics, averages, sparsity, parameters, stage times, profile cache hits.
    `results` is a RunResult, or a results.json dict (read back through RunResult.from_json)."""
    if isinstance(results, dict):
        results = RunResult.from_json(results)
    values = {f"{task}/{metric}": v for task, row in results.metrics.items() for metric, v in row.items()
              if v is not None}
    values.update({f"average/{metric}": v for metric, v in results.average.items() if v is not None})
    for task, row in (results.drop or {}).items():
        values.update({f"{task}/drop_{metric}": v for metric, v in row.items()})
    values.update({
        "sparsity/requested": results.sparsity["requested"], "sparsity/achieved": results.sparsity["achieved"],
        "params/dense": results.params["dense"], "params/pruned": results.params["pruned"],
        "params/ratio": results.params["pruned"] / results.params["dense"],
        "profile_cache/hits": sum(v == "hit" for v in results.profile_cache.values()),
        "profile_cache/misses": sum(v == "miss" for v in results.profile_cache.values()),
    })
    values.update({f"sparsity/{target}": v for target, v in results.sparsity.get("per_target", {}).items()})
    values.update({f"time/{stage}": seconds for stage, seconds in results.timings_s.items()})
    return values


def config_hash(config: dict) -> str:
    """Short hash of the resolved config minus what does not change the mask (logger, eval, device)."""
    relevant = {k: v for k, v in config.items() if k not in ("logger", "eval", "device", "cache_dir", "hydra")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]
