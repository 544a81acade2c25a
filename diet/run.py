"""python -m diet.run: profile -> vote -> prune -> eval, composed from the stage functions; nothing else lives here."""
from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from diet import DietError, config, evaluate, mask_plots, models, prune, record, speed, stages, sweeps, tracking
from diet import tasks as task_lib

log = logging.getLogger("diet")


def run(cfg: DictConfig, run_dir: Path, *, name: str | None = None, group: str | None = None
        ) -> record.RunResult | dict:
    """One run of a composed config into `run_dir` (in-process callable: nothing here needs Hydra's runtime).
    `name` and `group` name the W&B run (default: the model's name, no group). A DietError is recorded in
    status.json ("failed" and its line) and raised."""
    recorder = record.Recorder(Path(run_dir))
    try:
        return _run(cfg, recorder, name, group)
    except DietError as err:
        recorder.status("failed", error=str(err))
        raise


def _run(cfg: DictConfig, recorder: record.Recorder, name: str | None, group: str | None):
    plan = config.plan(cfg)
    recorder.status("running", stage="setup")
    started, timings = time.perf_counter(), {}
    cache_dir, device = Path(to_absolute_path(cfg.cache_dir)), models.resolve_device(cfg.device)
    local_dir = to_absolute_path(cfg.data.local_dir) if cfg.data.local_dir else None
    task_objects = stages.tasks(plan, data_dir=cache_dir / "data", local_dir=local_dir)
    calib_sets = stages.calibrate(plan, task_objects)
    loaded = models.load(cfg.model, device=device, cache_dir=str(cache_dir), seed=cfg.seed)
    # the model as loaded: what results.json compares with, what eval.speed times (a transform may add parameters)
    dense_params = prune.count_params(loaded.model)
    dense_decoder = prune.decoder_params(loaded.model, loaded.adapter)
    # a transform changes the weights in place: eval.dense and eval.speed need the model as loaded (a copy, its own
    # fingerprint, so the dense-eval cache is the one every other method's run of this model shares)
    as_loaded = (dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
                 if (cfg.eval.speed or cfg.eval.dense) and plan.transform.apply is not None else loaded)
    loaded = plan.transform(loaded, calib_sets, {
        "calib": plan.calib, "seed": plan.seed, "options": plan.method_options, "budget": plan.budget,
        "sparsity": plan.targets[0].sparsity, "multiple_of": plan.rules.multiple_of})
    stages.resolve_budgets(plan, loaded, dense_decoder)  # prune.budget=params: parameter -> dimension fractions
    stages.check_budgets(plan, loaded)  # before any work: rounding that misses the budget, or prunes nothing

    recorder.status("running", stage="profile")
    t = time.perf_counter()
    stats, cache_status = stages.profile(plan, loaded, calib_sets, cache_dir=cache_dir, dtype=cfg.model.dtype,
                                         offload_device=stages.offload_device(cfg.model, device))
    timings["profile"] = time.perf_counter() - t

    held_out = stages.held_out_docs(calib_sets)
    stages.exclude_calibration(task_objects, calib_sets)
    eval_tasks = task_lib.evaluation_tasks({n: task_objects[n] for n in plan.eval_tasks})
    eval_kwargs = dict(device=device, batch_size=cfg.eval.batch_size, limit=cfg.eval.limit,
                       num_fewshot=cfg.eval.num_fewshot, bootstrap_iters=cfg.eval.bootstrap_iters, seed=cfg.seed,
                       max_gen_toks=cfg.eval.get("max_gen_toks"))
    dense_metrics = None
    if cfg.eval.dense:
        recorder.status("running", stage="dense_eval")
        t = time.perf_counter()
        dense_metrics = evaluate.dense_eval(as_loaded, eval_tasks, eval_kwargs, cache_dir,
                                            task_names=plan.eval_tasks, held_out=held_out, local_dir=cfg.data.local_dir)
        timings["dense_eval"] = time.perf_counter() - t
    original = as_loaded.model if as_loaded is not loaded and cfg.eval.speed else None
    del as_loaded
    if plan.stage == "profile":  # a sweep's first pass: the caches its jobs share are filled, nothing else runs
        recorder.status("done", stage="profile", profile_cache=cache_status, seconds=timings["profile"])
        log.info("stage=profile: the profile cache%s filled; nothing else runs",
                 " and the dense-eval cache are" if cfg.eval.dense else " is")
        return {"profile_cache": cache_status}

    recorder.status("running", stage="vote")
    t = time.perf_counter()
    voted = stages.vote(plan, loaded, stats, calib_sets)
    timings["vote"] = time.perf_counter() - t
    sparsity = record.sparsity(cfg.sparsity, voted.masks, plan.targets)
    log.info("vote: %s, sparsity %s", plan.method.name, sparsity)
    mask_path = recorder.masks({**voted.masks, **record.task_mask_tensors(voted.per_task)}, {
        "target": plan.target_label, "scope": cfg.prune.scope, "sparsity": str(cfg.sparsity),
        "method": plan.method.name})

    measured = None
    if plan.method.per_task_eval:
        metrics, pruned_params = stages.per_task_eval(plan, loaded, voted.per_task, stats, task_objects,
                                                      eval_kwargs, timings)
    else:
        metrics, pruned_params, measured = prune_and_evaluate(cfg, plan, loaded, voted.masks, stats, eval_tasks,
                                                              eval_kwargs, recorder, timings, device, original,
                                                              dense_params)
    timings["total"] = time.perf_counter() - started
    params = {"dense": dense_params, "pruned": pruned_params, "decoder_dense": dense_decoder}
    if not plan.method.per_task_eval:  # one pruned model (per_task evaluates one per task: its largest is above)
        params["decoder_pruned"] = prune.decoder_params(loaded.model, loaded.adapter)
    sparsity["params"] = record.param_sparsity(params, plan)

    result = record.build(cfg, plan, sparsity=sparsity, calib_sets=calib_sets, params=params, metrics=metrics,
                          dense_metrics=dense_metrics, timings=timings, cache_status=cache_status, votes=voted,
                          speed=measured)
    recorder.result(result)
    plot_paths = mask_plots.write_all(recorder.dir, voted.masks, voted.per_task, voted.votes,
                                      voted.mean_scores)
    save_error = save_model(loaded, recorder.dir / "pruned_model") if cfg.prune.save else None
    if save_error is None:  # else the DietError below is recorded as the run's failure
        recorder.status("done")
    print(record.summary(result))
    tracking.log_run(
        OmegaConf.to_container(cfg.logger, resolve=True), run_dir=str(recorder.dir),
        config=OmegaConf.to_container(cfg, resolve=True), results=result, mask_path=str(mask_path),
        plot_paths=[str(p) for p in plot_paths],
        model_dir=str(recorder.dir / "pruned_model") if cfg.prune.save and save_error is None else None,
        name=name or cfg.model.name, group=group)
    if save_error is not None:
        raise DietError(save_error)
    return result


def save_model(loaded, path: Path) -> str | None:
    """Write the pruned model after its evaluation is recorded, so a saving problem never costs the evaluation;
    returns the one-line error, or None."""
    try:
        prune.save_pruned(loaded.model, loaded.tokenizer, path)
    except Exception as err:  # transformers refusing a config, a full disk: the run's results stand
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
        return (f"prune.save: pruned_model/ could not be written ({type(err).__name__}: {reason}); the evaluation "
                f"is in {path.parent / 'results.json'}")
    return None


def prune_and_evaluate(cfg, plan, loaded, masks, stats, eval_tasks, eval_kwargs, recorder, timings, device,
                       original, dense_params):
    """Prune the loaded model in place and evaluate it (timing it against the dense one with eval.speed: `original`,
    the model as loaded when a transform changed it, else a copy taken here); `dense_params`: the parameter count
    of the model as loaded. Returns (metrics, pruned parameter count, speed or None)."""
    dense = (original if original is not None else copy.deepcopy(loaded.model)) if cfg.eval.speed else None
    recorder.status("running", stage="prune")
    t = time.perf_counter()
    pruned_params = stages.prune(plan, loaded, masks, stats)
    timings["prune"] = time.perf_counter() - t
    measured = None
    if dense is not None:
        recorder.status("running", stage="speed")
        t = time.perf_counter()
        measured = speed.measure(dense, loaded.model, loaded.adapter, device=device, seed=cfg.seed)
        del dense
        timings["speed"] = time.perf_counter() - t
        log.info("speed: prefill %.2fx, decode %.2fx faster; FLOPs %.3f, parameters %.3f of dense",
                 measured["prefill"]["speedup"], measured["decode"]["speedup"], measured["flop_ratio"],
                 measured["param_ratio"])
    log.info("prune: %d -> %d parameters (%.3f) in %.2f s", dense_params, pruned_params,
             pruned_params / dense_params, timings["prune"])
    recorder.status("running", stage="eval")
    t = time.perf_counter()
    evaluated = evaluate.evaluate(loaded.model, loaded.tokenizer, eval_tasks, log_samples=cfg.eval.log_samples,
                                  **eval_kwargs)
    if cfg.eval.log_samples:
        recorder.json("eval_samples.json", evaluated["samples"])
    timings["eval"] = time.perf_counter() - t
    return evaluated["metrics"], pruned_params, measured


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig):
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        run(cfg, Path(hydra_cfg.runtime.output_dir), name=hydra_cfg.job.override_dirname or None,
            group=Path(hydra_cfg.sweep.dir).name if multirun else None)
    except DietError as err:  # run() recorded it in status.json
        if not multirun:
            config.exit_on_error(err)
        # One job's bad value (say, a vote threshold no dimension meets) must not cancel the rest of the sweep.
        print(f"diet: error: job {hydra_cfg.job.num} ({hydra_cfg.job.override_dirname}): {err}", file=sys.stderr)


def main() -> None:
    try:
        config.check_group_choices(sys.argv[1:])
        config.check_override_keys(sys.argv[1:])
        config.check_option_keys(sys.argv[1:])
        config.check_launcher(sys.argv[1:])
    except DietError as err:
        config.exit_on_error(err)
    try:
        _hydra_main()
    finally:  # a multirun (any launcher): per-job summary, then exit 2 if a job failed, after all of them ran
        if sweeps.exit_status():
            sys.exit(2)


if __name__ == "__main__":
    main()
