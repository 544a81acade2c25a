"""Eval stage: lm-eval's simple_evaluate on the in-memory model, wrapped by lm-eval's own HFLM."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

# The metric each paper7 task is conventionally reported with (lm-eval leaderboard / pruning papers).
PAPER_METRIC = {"boolq": "acc", "rte": "acc", "winogrande": "acc", "hellaswag": "acc_norm", "arc_easy": "acc_norm",
                "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def paper_metric(task: str) -> str:
    return PAPER_METRIC.get(task, "acc")


def evaluate(model, tokenizer, tasks: list, *, device, batch_size=8, limit=None, num_fewshot=0, bootstrap_iters=1000,
             log_samples: bool = False, seed: int = 0) -> dict:
    """Returns {"metrics": {task: {acc, acc_stderr, acc_norm, acc_norm_stderr}}, "samples": ... or None}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from diet.tasks import evaluation_task_manager

    started = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
        task_manager=evaluation_task_manager(),  # the tasks are built already; skip re-indexing 14k tasks
        bootstrap_iters=bootstrap_iters, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    metrics = {}
    for task, values in output["results"].items():
        row = {name: values.get(f"{name},none") for name in METRICS}
        metrics[task] = {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in row.items()}
    log.info("eval: %d tasks in %.1f s", len(metrics), time.perf_counter() - started)
    return {"metrics": metrics, "samples": output.get("samples") if log_samples else None}


def averages(metrics: dict[str, dict]) -> dict[str, float | None]:
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        "acc": mean(m.get("acc") for m in metrics.values()),
        "acc_norm": mean(m.get("acc_norm") for m in metrics.values()),
        "paper": mean(m.get(paper_metric(t)) if m.get(paper_metric(t)) is not None else m.get("acc")
                      for t, m in metrics.items()),
    }


def dense_eval(loaded, eval_tasks: list, eval_kwargs: dict, cache_dir, *, task_names: list[str],
               held_out: dict[str, list[int]], local_dir: str | None) -> dict:
    """The unpruned model's metrics, cached so that a sweep evaluates each dense model once."""
    import lm_eval

    from diet import cache

    key = {"model": loaded.fingerprint, "tasks": sorted(task_names), "limit": eval_kwargs["limit"],
           "num_fewshot": eval_kwargs["num_fewshot"], "lm_eval": lm_eval.__version__, "held_out_of_eval": held_out,
           "local_dir": local_dir, "seed": eval_kwargs["seed"], "bootstrap_iters": eval_kwargs["bootstrap_iters"]}
    store = cache.Cache(cache_dir, "dense_eval")
    cached = store.load_json(key)
    log.info("dense eval cache: %s", "hit" if cached is not None else "miss")
    if cached is not None:
        return cached
    metrics = evaluate(loaded.model, loaded.tokenizer, eval_tasks, **eval_kwargs)["metrics"]
    store.store_json(key, metrics)
    return metrics


def per_task_eval(loaded, target, per_task_masks: dict, task_objects: dict, eval_names: list[str],
                  eval_kwargs: dict, timings: dict) -> tuple[dict, int]:
    """The task-aware upper reference: each task evaluated on a copy of the model pruned with its own mask.
    Returns (metrics, the largest pruned parameter count); adds prune and eval seconds to `timings`."""
    import copy

    from diet import DietError, prune

    missing = [t for t in eval_names if t not in per_task_masks]
    if missing:
        raise DietError(f"eval.tasks: {missing} have no mask of their own with method=per_task; allowed: tasks that "
                        f"are also in tasks.names ({', '.join(per_task_masks)})")
    metrics, params = {}, {}
    timings["prune"] = timings["eval"] = 0.0
    for task in eval_names:
        t = time.perf_counter()
        model = copy.deepcopy(loaded.model)
        prune.prune_model(model, loaded.adapter, per_task_masks[task], target)
        params[task] = prune.count_params(model)
        timings["prune"] += time.perf_counter() - t
        t = time.perf_counter()
        metrics.update(evaluate(model, loaded.tokenizer, [task_objects[task]], **eval_kwargs)["metrics"])
        timings["eval"] += time.perf_counter() - t
        del model
    log.info("per_task: pruned parameters per task %s", params)
    return metrics, max(params.values())
