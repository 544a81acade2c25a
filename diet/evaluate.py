"""Eval stage: lm-eval's simple_evaluate on the in-memory model, wrapped by lm-eval's own HFLM.

Metrics keep lm-eval's names: `metric` for lm-eval's default filter (`acc,none` -> `acc`, `acc_norm_stderr,none` ->
`acc_norm_stderr`), `metric,filter` otherwise (gsm8k's `exact_match,strict-match` and `exact_match,flexible-extract`).
Every numeric metric lm-eval reports is kept. `paper_metric` is the one place that says which of them a task
contributes to `average.paper`, the run summary, W&B's summary table and the report.
"""
from __future__ import annotations

import logging
import time

import lm_eval

from diet import cache
from diet.tasks import evaluation_task_manager
from diet.tasks.demo import DEMO_SEED

log = logging.getLogger(__name__)

# The metric each task is conventionally reported with (lm-eval leaderboard / pruning papers; IFEval: the
# prompt-level strict accuracy; gsm8k: exact match after lm-eval's strict answer extraction).
PAPER_METRIC = {"boolq": "acc", "rte": "acc", "winogrande": "acc", "hellaswag": "acc_norm", "arc_easy": "acc_norm",
                "arc_challenge": "acc_norm", "openbookqa": "acc_norm", "gsm8k": "exact_match,strict-match",
                "ifeval": "prompt_level_strict_acc"}


def metric_name(key: str) -> str:
    """lm-eval's result key `metric,filter` as we store it: the filter is dropped when it is lm-eval's `none`."""
    name, _, filter_name = key.partition(",")
    return name if filter_name in ("", "none") else key


def is_stderr(name: str) -> bool:
    return name.partition(",")[0].endswith("_stderr")


def paper_metric(task: str, metrics: dict | None = None) -> str:
    """The metric `task` contributes to `average.paper`: its conventional one (PAPER_METRIC); for other tasks `acc`
    when reported, else the first non-stderr metric lm-eval reported (`metrics`: that task's row), else `acc`."""
    if task in PAPER_METRIC:
        return PAPER_METRIC[task]
    if metrics and metrics.get("acc") is None:
        reported = [name for name, value in metrics.items() if value is not None and not is_stderr(name)]
        if reported:
            return reported[0]
    return "acc"


def task_metrics(results_row: dict) -> dict[str, float | None]:
    """One task's row of lm-eval's `results`: every numeric metric under its stored name (`metric_name`).
    lm-eval writes "N/A" for a stderr it did not compute (bootstrap_iters=0); that is None here."""
    row = {}
    for key, value in results_row.items():
        if "," not in key or key == "alias":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = None
        row[metric_name(key)] = None if value is None else float(value)
    return row


def evaluate(model, tokenizer, tasks: list, *, device, batch_size=8, limit=None, num_fewshot=0, bootstrap_iters=1000,
             log_samples: bool = False, seed: int = 0, max_gen_toks: int | None = None) -> dict:
    """Returns {"metrics": {task: {metric: value}} (see `task_metrics`), "samples": ... or None}. Log-softmax runs in
    float32 whatever the model's dtype (lm-eval's softmax_dtype). `max_gen_toks` caps generation for generative
    tasks (None: each task's own setting)."""
    # HFLM imports torch and transformers (seconds); the report reads this module's metric names without them
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device),
              softmax_dtype="float32")
    if max_gen_toks is not None:
        for task in tasks:
            if getattr(task, "OUTPUT_TYPE", None) == "generate_until":
                task.config.generation_kwargs = {**(task.config.generation_kwargs or {}), "max_gen_toks": max_gen_toks}
    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
        task_manager=evaluation_task_manager(),  # the tasks are built already; skip re-indexing 14k tasks
        bootstrap_iters=bootstrap_iters, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    metrics = {task: task_metrics(values) for task, values in output["results"].items()}
    log.info("eval: %d tasks in %.1f s", len(metrics), time.perf_counter() - started)
    return {"metrics": metrics, "samples": output.get("samples") if log_samples else None}


def paper_value(task: str, row: dict) -> float | None:
    """The value `task` contributes to `average.paper` (None when lm-eval did not report it)."""
    return row.get(paper_metric(task, row))


def averages(metrics: dict[str, dict]) -> dict[str, float | None]:
    """Means over tasks: `acc`, `acc_norm` (over the tasks that report them) and `paper` (each task's `paper_metric`)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {
        "acc": mean(m.get("acc") for m in metrics.values()),
        "acc_norm": mean(m.get("acc_norm") for m in metrics.values()),
        "paper": mean(paper_value(t, m) for t, m in metrics.items()),
    }


def dense_eval(loaded, eval_tasks: list, eval_kwargs: dict, cache_dir, *, task_names: list[str],
               held_out: dict[str, list[int]], local_dir: str | None) -> dict:
    """The unpruned model's metrics, cached so that a sweep evaluates each dense model once."""
    key = {"model": loaded.fingerprint, "tasks": sorted(task_names), "limit": eval_kwargs["limit"],
           "num_fewshot": eval_kwargs["num_fewshot"], "lm_eval": lm_eval.__version__, "held_out_of_eval": held_out,
           "local_dir": local_dir, "seed": eval_kwargs["seed"], "bootstrap_iters": eval_kwargs["bootstrap_iters"],
           "max_gen_toks": eval_kwargs.get("max_gen_toks"),
           "demo_seed": DEMO_SEED, "metric_names": 2}  # the demo data's version; every lm-eval metric kept
    store = cache.Cache(cache_dir, "dense_eval")
    cached = store.load_json(key)
    log.info("dense eval cache: %s", "hit" if cached is not None else "miss")
    if cached is not None:
        return cached
    metrics = evaluate(loaded.model, loaded.tokenizer, eval_tasks, **eval_kwargs)["metrics"]
    store.store_json(key, metrics)
    return metrics
