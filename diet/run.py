"""python -m diet.run: profile -> vote -> prune -> eval, composed from the stage functions; nothing else lives here."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from diet import (DietError, cache, config, evaluate, methods, models, plots, profile, prune, record, targets,
                  tracking, vote)
from diet import tasks as task_lib
from diet.tasks import calibration

log = logging.getLogger("diet")


def gpu_alignment_warning(device: torch.device, multiple_of: int) -> str | None:
    """Unaligned kept widths (11469 of 14336, say) ran 2-3.4x slower than the dense model on an H100 in bf16."""
    if device.type != "cuda" or multiple_of % 64 == 0:
        return None
    return (f"prune.multiple_of={multiple_of} on a GPU: kept widths that are not multiples of 64 made pruned "
            "gemma2_9b / llama3_8b 2-3.4x slower than dense on an H100 (docs/benchmarks.md); "
            "prune.multiple_of=128 is recommended here")


def vote_stage(cfg, loaded, stats: dict, method: methods.Method):
    """Each target's masks from the method's scores: (masks, per-task masks, votes, mean normalised scores)."""
    model, adapter = loaded.model, loaded.adapter
    masks, per_task, votes, means = {}, {}, {}, {}
    for name in targets.names(cfg.prune.target):
        target = targets.get(name, **config.target_options(cfg, name))
        own = {task: {p: s for p, s in task_stats.items() if targets.owner(p) == name}
               for task, task_stats in stats.items()}
        scores = method.scores(target, model, adapter, own, cfg.scoring.name, cfg.seed)
        widths = target.widths(model, adapter)
        for task_scores in scores.values():
            for group, score in task_scores.items():
                if score.numel() != widths[group]:
                    raise DietError(f"profile: statistics for {group} have {score.numel()} dimensions but the model "
                                    f"has {widths[group]}; delete the stale cache under cache_dir")
        target_masks, target_per_task, target_votes = target.vote(
            model, adapter, scores, sparsity=config.target_sparsity(cfg, name), scope=cfg.prune.scope,
            min_keep=cfg.prune.min_keep, multiple_of=target.multiple_of(model, adapter, cfg.prune.multiple_of),
            vote_method=cfg.vote.method, threshold=cfg.vote.threshold, exact_budget=cfg.vote.exact_budget)
        masks.update(target_masks)
        if len(scores) > 1:  # generic / magnitude / random: one ranking, nothing voted
            for task, task_masks in target_per_task.items():
                per_task.setdefault(task, {}).update(task_masks)
            votes.update(target_votes)
        if method.uses_scores_for_plots:
            means.update(vote.mean_normalised_scores(scores))
    return masks, per_task, votes, (means or None)


def run(cfg: DictConfig) -> record.RunResult | dict:
    config.validate(cfg)
    hydra_cfg = HydraConfig.get()
    recorder = record.Recorder(Path(hydra_cfg.runtime.output_dir))
    recorder.status("running", stage="setup")
    started, timings = time.perf_counter(), {}
    cache_dir = Path(to_absolute_path(cfg.cache_dir))
    device = models.resolve_device(cfg.device)
    method = methods.get(cfg.method.name)
    target_names = targets.names(cfg.prune.target)
    calib = OmegaConf.to_container(cfg.calib, resolve=True)
    profile_names = list(cfg.tasks.names)
    eval_names = list(cfg.eval.tasks) if cfg.eval.tasks is not None else profile_names
    task_objects = task_lib.load_tasks(sorted(set(profile_names) | set(eval_names)), data_dir=str(cache_dir / "data"),
                                       local_dir=to_absolute_path(cfg.data.local_dir) if cfg.data.local_dir else None)
    kind = "pooled" if method.calibration == "task" and cfg.calib.source == "generic" else method.calibration
    calib_sets = methods.calibration_sets(kind, {n: task_objects[n] for n in profile_names}, cfg.calib.n_samples,
                                          cfg.seed, cfg.calib.include_target)
    loaded = models.load(cfg.model, device=device, cache_dir=str(cache_dir), seed=cfg.seed)

    recorder.status("running", stage="profile")
    t = time.perf_counter()
    stats, cache_status = profile.profile_sets(
        loaded, calib_sets, target_names, cache_dir, calib, seed=cfg.seed, dtype=cfg.model.dtype,
        offload_device=device if cfg.model.get("offload") else None)
    timings["profile"] = time.perf_counter() - t
    held_out = methods.held_out_docs(calib_sets)
    for calib_set in calib_sets.values():
        calibration.exclude_calibration_docs(task_objects, calib_set)
    eval_tasks = task_lib.evaluation_tasks({n: task_objects[n] for n in eval_names})
    eval_kwargs = dict(device=device, batch_size=cfg.eval.batch_size, limit=cfg.eval.limit,
                       num_fewshot=cfg.eval.num_fewshot, bootstrap_iters=cfg.eval.bootstrap_iters, seed=cfg.seed)
    dense_metrics = None
    if cfg.eval.dense:
        recorder.status("running", stage="dense_eval")
        t = time.perf_counter()
        dense_metrics = evaluate.dense_eval(loaded, eval_tasks, eval_kwargs, cache.Cache(cache_dir, "dense_eval"), {
            "model": loaded.fingerprint, "tasks": sorted(eval_names), "limit": cfg.eval.limit,
            "num_fewshot": cfg.eval.num_fewshot, "held_out_of_eval": held_out, "local_dir": cfg.data.local_dir,
            "seed": cfg.seed, "bootstrap_iters": cfg.eval.bootstrap_iters})
        timings["dense_eval"] = time.perf_counter() - t
    if cfg.stage == "profile":
        recorder.status("done", stage="profile", profile_cache=cache_status, seconds=timings["profile"])
        log.info("stage=profile: the profile cache is filled%s; nothing else runs",
                 " and the dense model evaluated" if cfg.eval.dense else "")
        return {"profile_cache": cache_status}

    recorder.status("running", stage="vote")
    t = time.perf_counter()
    warning = gpu_alignment_warning(profile.input_device(loaded.model, loaded.adapter), cfg.prune.multiple_of)
    if warning:
        log.warning(warning)
    masks, per_task_masks, votes, mean_scores = vote_stage(cfg, loaded, stats, method)
    timings["vote"] = time.perf_counter() - t
    achieved = {"requested": float(cfg.sparsity), "achieved": vote.achieved_sparsity(masks)}
    if len(target_names) > 1:
        achieved["per_target"] = {n: vote.achieved_sparsity({k: m for k, m in masks.items()
                                                             if targets.owner(k) == n}) for n in target_names}
    log.info("vote: %s, achieved sparsity %s (requested %.4f)", method.name, achieved, cfg.sparsity)
    mask_path = recorder.masks({**masks, **{f"task.{task}.{g}": m for task, task_masks in per_task_masks.items()
                                            for g, m in task_masks.items()}},
                               {"target": "+".join(target_names), "scope": cfg.prune.scope,
                                "sparsity": str(cfg.sparsity), "method": method.name})

    dense_params = prune.count_params(loaded.model)
    if method.per_task_eval:
        metrics, pruned_params = evaluate.per_task_eval(loaded, target_names, per_task_masks, task_objects,
                                                        eval_names, eval_kwargs, timings)
    else:
        recorder.status("running", stage="prune")
        t = time.perf_counter()
        prune.prune_model(loaded.model, loaded.adapter, masks, target_names)
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

    result = record.RunResult(
        model=cfg.model.name, model_id=cfg.model.name_or_path, tasks=profile_names, eval_tasks=eval_names,
        method=method.name, scoring=cfg.scoring.name, target="+".join(target_names), scope=cfg.prune.scope,
        seed=cfg.seed, sparsity=achieved, vote=OmegaConf.to_container(cfg.vote),
        prune=OmegaConf.to_container(cfg.prune), calib=calib, params={"dense": dense_params, "pruned": pruned_params},
        metrics=metrics, average=evaluate.averages(metrics), paper_metric={t: evaluate.paper_metric(t) for t in eval_names},
        dense_metrics=dense_metrics, dense_average=evaluate.averages(dense_metrics) if dense_metrics else None,
        timings_s=timings, profile_cache=cache_status, calibration=record.describe_calibration(calib_sets),
        mask_sha256=record.mask_sha256(masks), versions=record.versions(),
        task_mask_sha256={t: record.mask_sha256(m) for t, m in per_task_masks.items()} if method.per_task_eval
        else None, drop=record.drops(dense_metrics, metrics) if dense_metrics else None)
    if method.per_task_eval:  # the masks the evaluated models used
        result.mask_sha256 = record.mask_sha256({f"{t}.{g}": m for t, tm in per_task_masks.items() for g, m in tm.items()})
    recorder.result(result)
    plot_paths = plots.write_all(recorder.dir, masks, per_task_masks, votes, mean_scores, result.target)
    recorder.status("done")
    print(record.summary(result))
    tracking.log_run(
        OmegaConf.to_container(cfg.logger, resolve=True), run_dir=str(recorder.dir),
        config=OmegaConf.to_container(cfg, resolve=True), results=result, mask_path=str(mask_path),
        plot_paths=[str(p) for p in plot_paths],
        model_dir=str(recorder.dir / "pruned_model") if cfg.prune.save else None,
        name=hydra_cfg.job.override_dirname or cfg.model.name,
        group=Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None)
    return result


_failed_jobs: list[str] = []


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig):
    try:
        run(cfg)
    except DietError as err:
        hydra_cfg = HydraConfig.get()
        record.Recorder(Path(hydra_cfg.runtime.output_dir)).status("failed", error=str(err))
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
