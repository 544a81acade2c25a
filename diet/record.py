"""The run record: the typed result of a run, and the only writer into the run directory (status.json while
running; results.json, mask.safetensors and extra JSON files atomically at the end). results.json is written from
`RunResult`; its schema is the output contract in docs/architecture.md."""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import lm_eval
import torch
import transformers
from omegaconf import OmegaConf

import diet
from diet import cache, evaluate, targets
from diet.vote import achieved_sparsity


def mask_sha256(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(masks):
        h.update(key.encode())
        h.update(masks[key].to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class RunResult:
    model: str
    model_id: str
    tasks: list[str]
    eval_tasks: list[str]
    method: str
    scoring: str
    target: str               # a target name, or names joined by "+" (mlp+heads)
    scope: str
    seed: int
    sparsity: dict            # {"requested": float, "achieved": float} (+ "per_target" with several targets)
    vote: dict
    prune: dict
    calib: dict
    params: dict              # {"dense": int, "pruned": int}
    metrics: dict
    average: dict
    paper_metric: dict
    dense_metrics: dict | None
    dense_average: dict | None
    timings_s: dict
    profile_cache: dict
    calibration: dict
    mask_sha256: str          # of the masks the evaluated model(s) used (per_task: all per-task masks together)
    versions: dict
    task_mask_sha256: dict | None = None   # method=per_task: the hash of each task's own mask
    drop: dict | None = None
    speed: dict | None = None  # eval.speed=true: measured prefill/decode speed-ups beside the FLOP and param ratios
    method_options: dict | None = None     # the method's own settings (method.* beside name: FLAP's structure)

    @classmethod
    def from_json(cls, data: dict) -> "RunResult":
        """A results.json read back (keys this version does not know are ignored; missing optional ones are None)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names},
                   **{k: None for k in ("dense_metrics", "dense_average") if k not in data})

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for optional in ("task_mask_sha256", "drop", "speed", "method_options"):
            if out[optional] is None:
                del out[optional]
        return out


def build(cfg, plan, *, sparsity, calib_sets, params, metrics, dense_metrics, timings, cache_status,
          votes, speed=None) -> RunResult:
    """The run's result from its config, its plan and what the stages returned (`votes`: stages.Votes)."""
    per_task_eval = plan.method.per_task_eval
    used = task_mask_tensors(votes.per_task) if per_task_eval else votes.masks  # what the evaluation used
    return RunResult(
        model=cfg.model.name, model_id=cfg.model.name_or_path, tasks=plan.profile_tasks, eval_tasks=plan.eval_tasks,
        method=plan.method.name, scoring=plan.scoring.name, target=plan.target_label, scope=plan.rules.scope,
        seed=plan.seed, sparsity=sparsity, vote=OmegaConf.to_container(cfg.vote, resolve=True),
        prune={**OmegaConf.to_container(cfg.prune, resolve=True), "compensation": plan.compensation},
        calib=plan.calib, params=params, metrics=metrics, method_options=plan.method_options or None,
        average=evaluate.averages(metrics),
        paper_metric={t: evaluate.paper_metric(t, metrics.get(t)) for t in plan.eval_tasks},
        dense_metrics=dense_metrics, dense_average=evaluate.averages(dense_metrics) if dense_metrics else None,
        timings_s=timings, profile_cache=cache_status, calibration=describe_calibration(calib_sets),
        mask_sha256=mask_sha256(used), versions=versions(),
        task_mask_sha256={t: mask_sha256(m) for t, m in votes.per_task.items()} if per_task_eval else None,
        drop=drops(dense_metrics, metrics) if dense_metrics else None, speed=speed)


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

    def result(self, result: RunResult) -> Path:
        return self.json("results.json", result.to_json())


def task_mask_tensors(per_task_masks: dict) -> dict[str, torch.Tensor]:
    """Each task's own masks under `task.<task>.<key>`, as mask.safetensors stores them."""
    return {f"task.{task}.{key}": m for task, masks in per_task_masks.items() for key, m in masks.items()}


def sparsity(requested: float, masks: dict[str, torch.Tensor], chosen_targets) -> dict:
    """{"requested", "achieved"} over every mask, plus "per_target" when several targets were pruned."""
    out = {"requested": float(requested), "achieved": achieved_sparsity(masks)}
    if len(chosen_targets) > 1:
        out["per_target"] = {t.name: achieved_sparsity({k: m for k, m in masks.items() if targets.owner(k) == t.name})
                             for t in chosen_targets}
    return out


def param_sparsity(params: dict, plan) -> dict:
    """The achieved fraction of parameters removed, of the decoder layers and of the whole model, and (with
    prune.budget=params) the requested one, so methods that remove different structures compare."""
    out = {"model": (params["dense"] - params["pruned"]) / params["dense"]}
    if "decoder_pruned" in params:
        out["decoder"] = (params["decoder_dense"] - params["decoder_pruned"]) / params["decoder_dense"]
    if plan.budget == "params":
        out["requested"] = requested_param_sparsity(plan.targets)
    return out


def requested_param_sparsity(chosen_targets) -> float:
    """prune.budget=params: the fraction of the decoder's parameters asked for. The targets that share `sparsity`
    ask for it once between them (resolve_budgets splits it; FLAP allocates it itself); a target with its own
    prune.sparsity_per_target asks for its value on top."""
    shared = [t for t in chosen_targets if getattr(t, "shares_sparsity", True)]
    asked = [getattr(t, "param_sparsity", t.sparsity) for t in chosen_targets if t not in shared]
    if shared:
        asked.append(getattr(shared[0], "param_sparsity", shared[0].sparsity))
    return sum(asked)


def versions() -> dict:
    return {"diet": diet.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": lm_eval.__version__}


def describe_calibration(calib_sets: dict) -> dict:
    """Per calibration set: where it came from, how many documents were drawn, whether evaluation skips them; a text
    set cut into token windows (`windows`: consecutive, random, random_doc) draws no documents (n_docs 0): its
    calib.n_samples windows of calib.max_length tokens are cut at profiling time."""
    return {n: {"split": c.split, "n_docs": len(c.doc_ids), "held_out_of_eval": c.held_out_of_eval,
                **({"windows": c.windows} if c.windows else {})}
            for n, c in calib_sets.items()}


def drops(dense_metrics: dict, metrics: dict) -> dict:
    """Dense minus pruned value per task and metric (every metric both runs have, stderrs excluded)."""
    return {t: {m: (dense_metrics[t][m] - metrics[t][m]) for m in metrics[t]
                if not evaluate.is_stderr(m) and dense_metrics[t].get(m) is not None and metrics[t].get(m) is not None}
            for t in metrics if t in dense_metrics}


def _fmt(value) -> str:
    return f"{value:.3f}" if value is not None else "-"


def summary(result: RunResult) -> str:
    dense = result.dense_metrics or {}
    lines = [f"{result.method} {result.target} sparsity {result.sparsity['achieved']:.3f} on "
             f"{result.model}: params {result.params['pruned'] / result.params['dense']:.3f} of dense"]
    lines.append(f"{'task':<20} {'metric':<9} {'dense':>7} {'pruned':>7}")
    for task, values in result.metrics.items():
        metric = result.paper_metric.get(task) or evaluate.paper_metric(task, values)
        value, d = values.get(metric), dense.get(task, {}).get(metric)
        lines.append(f"{task:<20} {metric:<9} {_fmt(d):>7} {_fmt(value):>7}")
    avg, davg = result.average["paper"], (result.dense_average or {}).get("paper")
    lines.append(f"{'average':<20} {'':<9} {_fmt(davg):>7} {_fmt(avg):>7}")
    return "\n".join(lines)
