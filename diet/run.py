"""python -m diet.run: profile -> vote -> prune -> eval, composed from the stage functions; nothing else lives here."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

import diet
from diet import DietError, cache, config, evaluate, models, plots, profile, prune, tracking, vote
from diet.tasks import calibration
from diet.tasks.demo import DEMO_SEED

log = logging.getLogger("diet")


class Recorder:
    """The only writer into the run directory: status.json while running, atomic files at the end."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)

    def status(self, state: str, **extra) -> None:
        cache.atomic_write_json(self.dir / "status.json", {"state": state, "time": time.time(), **extra})

    def json(self, name: str, obj) -> Path:
        cache.atomic_write_json(self.dir / name, obj)
        return self.dir / name

    def masks(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
        cache.atomic_save_tensors(self.dir / "mask.safetensors", tensors, metadata)
        return self.dir / "mask.safetensors"


def mask_sha256(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(masks):
        h.update(key.encode())
        h.update(masks[key].to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def widths(loaded: models.LoadedModel, target: str) -> dict[str, int]:
    if target == "hidden":
        return {"hidden": loaded.adapter.hidden_size(loaded.model)}
    return {f"mlp.{i}": w for i, w in enumerate(loaded.adapter.intermediate_sizes(loaded.model))}


def profile_stage(cfg, loaded, calib_sets: dict[str, calibration.CalibrationSet], cache_dir: Path):
    """Statistics per calibration set, from the cache when an identical profile was computed before."""
    store = cache.Cache(cache_dir, "profile")
    stats, status = {}, {}
    offload = bool(cfg.model.get("offload"))
    device = models.resolve_device(cfg.device) if offload else profile.input_device(loaded.model, loaded.adapter)
    fused = profile.use_fused(cfg.calib.fused_stats, device)
    for name, calib_set in calib_sets.items():
        key = {
            "model": loaded.fingerprint, "task": name, "n_samples": cfg.calib.n_samples, "seed": cfg.seed,
            "max_length": cfg.calib.max_length, "include_target": cfg.calib.include_target,
            "batch_size": cfg.calib.batch_size, "dtype": cfg.model.dtype, "target": cfg.prune.target,
            "texts_sha256": hashlib.sha256(json.dumps(calib_set.texts).encode()).hexdigest(),
            "stats_kernel": "fused" if fused else "eager",  # the two round differently (~1e-6 relative)
            "diet": diet.__version__,
        }
        flat = store.load_tensors(key)
        status[name] = "hit" if flat is not None else "miss"
        if flat is None:
            task_stats = profile.profile_texts(
                loaded.model, loaded.adapter, loaded.tokenizer, calib_set.texts, cfg.prune.target,
                max_length=cfg.calib.max_length, batch_size=cfg.calib.batch_size, desc=f"profile {name}",
                layerwise_device=device if offload else None, fused_stats=fused)
            flat = profile.flatten(task_stats)
            store.store_tensors(key, flat)
        log.info("profile cache: %s (%s)", status[name], name)
        stats[name] = profile.unflatten({k: v.cpu() for k, v in flat.items()})
    return stats, status


def gpu_alignment_warning(device: torch.device, multiple_of: int) -> str | None:
    """Unaligned kept widths (11469 of 14336, say) ran 2-3.4x slower than the dense model on an H100 in bf16."""
    if device.type != "cuda" or multiple_of % 64 == 0:
        return None
    return (f"prune.multiple_of={multiple_of} on a GPU: kept widths that are not multiples of 64 made pruned "
            "gemma2_9b / llama3_8b 2-3.4x slower than dense on an H100 (docs/benchmarks.md); "
            "prune.multiple_of=128 is recommended here")


def vote_stage(cfg, loaded, stats: dict, group_widths: dict[str, int]):
    """(final masks, per-task masks, vote counts per group, mean normalised score per group or None)."""
    target = cfg.prune.target
    multiple_of = cfg.prune.multiple_of
    warning = gpu_alignment_warning(profile.input_device(loaded.model, loaded.adapter), multiple_of)
    if warning:
        log.warning(warning)
    if target == "hidden":
        # transformers refuses to save or load a config whose hidden_size is not a multiple of num_attention_heads
        # (head_dim is explicit after pruning, so only that check needs it)
        multiple_of = math.lcm(multiple_of, loaded.model.config.num_attention_heads)
    rules = dict(scope=cfg.prune.scope, min_keep=cfg.prune.min_keep, multiple_of=multiple_of)
    if cfg.method.name == "random":
        return vote.random_masks(group_widths, cfg.sparsity, cfg.seed, **rules), {}, {}, None
    if cfg.method.name == "magnitude":
        scores = {"magnitude": vote.magnitude_scores(vote.weight_norms(loaded.model, loaded.adapter, target), target)}
    else:
        norms = vote.weight_norms(loaded.model, loaded.adapter, target) if cfg.scoring.name == "wanda" else None
        scores = {name: vote.group_scores(s, cfg.scoring.name, target, norms) for name, s in stats.items()}
    for name, task_scores in scores.items():
        for group, score in task_scores.items():
            if score.numel() != group_widths[group]:
                raise DietError(f"profile: statistics for {group} have {score.numel()} dimensions but the model "
                                f"has {group_widths[group]}; delete the stale cache under cache_dir")
    masks, per_task, votes = vote.build_masks(
        scores, sparsity=cfg.sparsity, target=target, vote_method=cfg.vote.method, threshold=cfg.vote.threshold,
        exact_budget=cfg.vote.exact_budget, **rules)
    if len(scores) == 1:  # generic / magnitude: one ranking, nothing voted
        per_task, votes = {}, {}
    return masks, per_task, votes, vote.mean_normalised_scores(scores)


def run(cfg: DictConfig) -> dict:
    config.validate(cfg)
    hydra_cfg = HydraConfig.get()
    recorder = Recorder(Path(hydra_cfg.runtime.output_dir))
    recorder.status("running", stage="setup")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    cache_dir = Path(to_absolute_path(cfg.cache_dir))
    device = models.resolve_device(cfg.device)
    local_dir = to_absolute_path(cfg.data.local_dir) if cfg.data.local_dir else None

    from diet import tasks as task_lib

    profile_names = list(cfg.tasks.names)
    eval_names = list(cfg.eval.tasks) if cfg.eval.tasks is not None else profile_names
    task_objects = task_lib.load_tasks(sorted(set(profile_names) | set(eval_names)), local_dir=local_dir,
                                       data_dir=str(cache_dir / "data"),
                                       keys={n: "eval.tasks" for n in eval_names if n not in profile_names})
    pooled = cfg.method.name == "generic" or cfg.calib.source == "generic"
    calib_sets: dict[str, calibration.CalibrationSet] = {}
    if cfg.method.name not in ("random", "magnitude"):
        if pooled:
            calib_sets["generic"] = calibration.generic_calibration_set(
                {n: task_objects[n] for n in profile_names}, cfg.calib.n_samples, cfg.seed, cfg.calib.include_target)
        else:
            for name in profile_names:
                calib_sets[name] = calibration.calibration_set(
                    task_objects[name], cfg.calib.n_samples, cfg.seed, cfg.calib.include_target)

    loaded = models.load(cfg.model, device=device, cache_dir=str(cache_dir), seed=cfg.seed)
    group_widths = widths(loaded, cfg.prune.target)

    recorder.status("running", stage="profile")
    t = time.perf_counter()
    stats, cache_status = profile_stage(cfg, loaded, calib_sets, cache_dir)
    timings["profile"] = time.perf_counter() - t
    held_out = {part.task: part.doc_ids for c in calib_sets.values() for part in (c.parts.values() or [c])
                if part.held_out_of_eval}
    for calib_set in calib_sets.values():
        calibration.exclude_calibration_docs(task_objects, calib_set)
    eval_tasks = task_lib.evaluation_tasks({n: task_objects[n] for n in eval_names})
    eval_kwargs = dict(device=device, batch_size=cfg.eval.batch_size, limit=cfg.eval.limit,
                       num_fewshot=cfg.eval.num_fewshot, bootstrap_iters=cfg.eval.bootstrap_iters, seed=cfg.seed,
                       max_gen_toks=cfg.eval.get("max_gen_toks"))
    dense_metrics = None
    if cfg.eval.dense:
        recorder.status("running", stage="dense_eval")
        t = time.perf_counter()
        dense_metrics = dense_eval(cfg, loaded, eval_tasks, eval_kwargs, cache_dir, held_out)
        timings["dense_eval"] = time.perf_counter() - t

    if cfg.stage == "profile":
        recorder.status("done", stage="profile", profile_cache=cache_status, seconds=timings["profile"])
        log.info("stage=profile: the profile cache is filled%s; nothing else runs",
                 " and the dense model evaluated" if cfg.eval.dense else "")
        return {"profile_cache": cache_status}

    recorder.status("running", stage="vote")
    t = time.perf_counter()
    masks, per_task_masks, votes, mean_scores = vote_stage(cfg, loaded, stats, group_widths)
    achieved = vote.achieved_sparsity(masks)
    timings["vote"] = time.perf_counter() - t
    log.info("vote: %s, achieved sparsity %.4f (requested %.4f)", cfg.method.name, achieved, cfg.sparsity)
    mask_tensors = dict(masks)
    for name, task_mask in per_task_masks.items():
        mask_tensors.update({f"task.{name}.{group}": m for group, m in task_mask.items()})
    mask_path = recorder.masks(mask_tensors, {"target": cfg.prune.target, "scope": cfg.prune.scope,
                                              "sparsity": str(cfg.sparsity), "method": cfg.method.name})

    dense_params = prune.count_params(loaded.model)
    if cfg.method.name == "per_task":
        metrics, pruned_params = per_task_eval(cfg, loaded, per_task_masks, task_objects, eval_names, eval_kwargs,
                                               timings)
    else:
        recorder.status("running", stage="prune")
        t = time.perf_counter()
        prune.prune_model(loaded.model, loaded.adapter, masks, cfg.prune.target)
        pruned_params = prune.count_params(loaded.model)
        if cfg.prune.save:
            prune.save_pruned(loaded.model, loaded.tokenizer, recorder.dir / "pruned_model")
        timings["prune"] = time.perf_counter() - t
        log.info("prune: %d -> %d parameters (%.3f) in %.2f s", dense_params, pruned_params,
                 pruned_params / dense_params, timings["prune"])

        recorder.status("running", stage="eval")
        t = time.perf_counter()
        evaluated = evaluate.evaluate(loaded.model, loaded.tokenizer, eval_tasks, log_samples=cfg.eval.log_samples,
                                      **eval_kwargs)
        metrics = evaluated["metrics"]
        if cfg.eval.log_samples:
            recorder.json("eval_samples.json", evaluated["samples"])
        timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    import lm_eval
    import transformers

    results = {
        "model": cfg.model.name, "model_id": cfg.model.name_or_path, "tasks": profile_names, "eval_tasks": eval_names,
        "method": cfg.method.name, "scoring": cfg.scoring.name, "target": cfg.prune.target, "scope": cfg.prune.scope,
        "seed": cfg.seed, "sparsity": {"requested": float(cfg.sparsity), "achieved": achieved},
        "vote": OmegaConf.to_container(cfg.vote), "prune": OmegaConf.to_container(cfg.prune),
        "calib": OmegaConf.to_container(cfg.calib),
        "params": {"dense": dense_params, "pruned": pruned_params},
        "metrics": metrics, "average": evaluate.averages(metrics),
        "paper_metric": {t: evaluate.paper_metric(t, metrics.get(t)) for t in eval_names},
        "dense_metrics": dense_metrics, "dense_average": evaluate.averages(dense_metrics) if dense_metrics else None,
        "timings_s": timings, "profile_cache": cache_status,
        "calibration": {n: {"split": c.split, "n_docs": len(c.doc_ids), "held_out_of_eval": c.held_out_of_eval}
                        for n, c in calib_sets.items()},
        "mask_sha256": mask_sha256(masks),
        "versions": {"diet": diet.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "lm_eval": lm_eval.__version__},
    }
    if dense_metrics:
        results["drop"] = {t: {m: (dense_metrics[t][m] - metrics[t][m]) for m in metrics[t]
                               if not evaluate.is_stderr(m) and dense_metrics[t].get(m) is not None
                               and metrics[t].get(m) is not None}
                           for t in metrics if t in dense_metrics}
    recorder.json("results.json", results)
    plot_paths = plots.write_all(recorder.dir, masks, per_task_masks, votes, mean_scores, cfg.prune.target)
    recorder.status("done")
    print_summary(results)

    is_multirun = hydra_cfg.mode == RunMode.MULTIRUN
    tracking.log_run(
        OmegaConf.to_container(cfg.logger, resolve=True), run_dir=str(recorder.dir),
        config=OmegaConf.to_container(cfg, resolve=True), results=results, mask_path=str(mask_path),
        plot_paths=[str(p) for p in plot_paths],
        model_dir=str(recorder.dir / "pruned_model") if cfg.prune.save else None,
        name=hydra_cfg.job.override_dirname or cfg.model.name,
        group=Path(hydra_cfg.sweep.dir).name if is_multirun else None)
    return results


def per_task_eval(cfg, loaded, per_task_masks, task_objects, eval_names, eval_kwargs, timings):
    """The task-aware upper reference: each task evaluated on a copy of the model pruned with its own mask."""
    missing = [t for t in eval_names if t not in per_task_masks]
    if missing:
        raise DietError(f"eval.tasks: {missing} have no mask of their own with method=per_task; allowed: tasks that "
                        f"are also in tasks.names ({', '.join(per_task_masks)})")
    metrics, params = {}, {}
    timings["prune"] = timings["eval"] = 0.0
    for task in eval_names:
        t = time.perf_counter()
        model = copy.deepcopy(loaded.model)
        prune.prune_model(model, loaded.adapter, per_task_masks[task], cfg.prune.target)
        params[task] = prune.count_params(model)
        timings["prune"] += time.perf_counter() - t
        t = time.perf_counter()
        metrics.update(evaluate.evaluate(model, loaded.tokenizer, [task_objects[task]], **eval_kwargs)["metrics"])
        timings["eval"] += time.perf_counter() - t
        del model
    log.info("per_task: pruned parameters per task %s", params)
    return metrics, max(params.values())


def dense_eval(cfg, loaded, eval_tasks, eval_kwargs, cache_dir: Path, held_out: dict[str, list[int]]) -> dict:
    """The unpruned model's metrics, cached so that a sweep evaluates each dense model once."""
    import lm_eval

    key = {"model": loaded.fingerprint, "tasks": sorted(cfg.eval.tasks or cfg.tasks.names),
           "limit": cfg.eval.limit, "num_fewshot": cfg.eval.num_fewshot, "lm_eval": lm_eval.__version__,
           "held_out_of_eval": held_out, "local_dir": cfg.data.local_dir, "seed": cfg.seed,
           "bootstrap_iters": cfg.eval.bootstrap_iters, "max_gen_toks": cfg.eval.get("max_gen_toks"),
           "demo_seed": DEMO_SEED, "metric_names": 2}  # the demo data's version; every lm-eval metric kept
    store = cache.Cache(cache_dir, "dense_eval")
    cached = store.load_json(key)
    log.info("dense eval cache: %s", "hit" if cached is not None else "miss")
    if cached is not None:
        return cached
    metrics = evaluate.evaluate(loaded.model, loaded.tokenizer, eval_tasks, **eval_kwargs)["metrics"]
    store.store_json(key, metrics)
    return metrics


def print_summary(results: dict) -> None:
    dense = results.get("dense_metrics") or {}
    lines = [f"{results['method']} {results['target']} sparsity {results['sparsity']['achieved']:.3f} on "
             f"{results['model']}: params {results['params']['pruned'] / results['params']['dense']:.3f} of dense"]
    lines.append(f"{'task':<20} {'metric':<9} {'dense':>7} {'pruned':>7}")
    for task, values in results["metrics"].items():
        metric = results["paper_metric"].get(task) or evaluate.paper_metric(task, values)
        value, d = values.get(metric), dense.get(task, {}).get(metric)
        lines.append(f"{task:<20} {metric:<9} {(f'{d:.3f}' if d is not None else '-'):>7} "
                     f"{(f'{value:.3f}' if value is not None else '-'):>7}")
    avg, davg = results["average"]["paper"], (results.get("dense_average") or {}).get("paper")
    lines.append(f"{'average':<20} {'':<9} {(f'{davg:.3f}' if davg is not None else '-'):>7} "
                 f"{(f'{avg:.3f}' if avg is not None else '-'):>7}")
    print("\n".join(lines))


_failed_jobs: list[str] = []


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig):
    try:
        run(cfg)
    except DietError as err:
        hydra_cfg = HydraConfig.get()
        Recorder(Path(hydra_cfg.runtime.output_dir)).status("failed", error=str(err))
        if hydra_cfg.mode != RunMode.MULTIRUN:
            config.exit_on_error(err)
        # One job's bad value (say, a vote threshold no dimension meets) must not cancel the rest of the sweep.
        print(f"diet: error: job {hydra_cfg.job.num} ({hydra_cfg.job.override_dirname}): {err}", file=sys.stderr)
        _failed_jobs.append(hydra_cfg.job.override_dirname)


def main() -> None:
    try:
        config.check_group_choices(sys.argv[1:])
        config.check_launcher(sys.argv[1:])
    except DietError as err:
        config.exit_on_error(err)
    _hydra_main()
    if _failed_jobs:  # jobs run in this process (the basic launcher): the sweep as a whole failed
        print(f"diet: error: {len(_failed_jobs)} job(s) of the sweep failed; see status.json in their folders",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
