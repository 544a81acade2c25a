"""Validation of the composed Hydra config: every user mistake becomes one DietError line (key, value, allowed)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig

from diet import DietError
from diet.profile import FUSED_CHOICES
from diet.vote import SCOPES, SCORINGS, VOTE_METHODS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
METHODS = ("diet", "random", "generic", "magnitude", "per_task")
TARGETS = ("mlp", "hidden")
CALIB_SOURCES = ("task", "generic")
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise DietError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


STAGES = ("all", "profile")


def validate(cfg: DictConfig) -> None:
    _require(cfg.stage in STAGES, "stage", cfg.stage, ", ".join(STAGES))
    _require(_is_number(cfg.sparsity) and 0 <= cfg.sparsity < 1, "sparsity", cfg.sparsity, "a number in [0, 1)")
    _require(_is_int(cfg.seed), "seed", cfg.seed, "an integer")
    _require(_is_int(cfg.calib.n_samples) and cfg.calib.n_samples >= 1, "calib.n_samples", cfg.calib.n_samples,
             "an integer >= 1 (and no more than each task's calibration split holds)")
    _require(_is_int(cfg.calib.max_length) and cfg.calib.max_length >= 2, "calib.max_length", cfg.calib.max_length,
             "an integer >= 2 (tokens)")
    _require(_is_int(cfg.calib.batch_size) and cfg.calib.batch_size >= 1, "calib.batch_size", cfg.calib.batch_size,
             "an integer >= 1")
    _require(cfg.calib.source in CALIB_SOURCES, "calib.source", cfg.calib.source, ", ".join(CALIB_SOURCES))
    _require(cfg.calib.fused_stats in FUSED_CHOICES, "calib.fused_stats", cfg.calib.fused_stats,
             "auto (torch.compile on CUDA, eager elsewhere), true or false")
    threshold = cfg.vote.threshold
    _require(threshold is None or (_is_number(threshold) and 0 < threshold <= 1), "vote.threshold", threshold,
             "a fraction in (0, 1], or null for a strict majority")
    _require(cfg.prune.target in TARGETS, "prune.target", cfg.prune.target, ", ".join(TARGETS))
    _require(cfg.prune.scope in SCOPES, "prune.scope", cfg.prune.scope, ", ".join(SCOPES))
    _require(cfg.vote.method in VOTE_METHODS, "vote.method", cfg.vote.method, ", ".join(VOTE_METHODS))
    _require(_is_number(cfg.prune.min_keep) and 0 <= cfg.prune.min_keep <= 1, "prune.min_keep", cfg.prune.min_keep,
             "a fraction in [0, 1] of each layer's width")
    _require(_is_int(cfg.prune.multiple_of) and cfg.prune.multiple_of >= 1, "prune.multiple_of",
             cfg.prune.multiple_of, "an integer >= 1")
    _require(not (cfg.prune.save and cfg.method.name == "per_task"), "prune.save", cfg.prune.save,
             "false with method=per_task (it builds one model per task)")
    _require(cfg.scoring.name in SCORINGS, "scoring", cfg.scoring.name, ", ".join(SCORINGS))
    _require(cfg.method.name in METHODS, "method", cfg.method.name, ", ".join(METHODS))
    names = list(cfg.tasks.names or [])
    _require(len(names) >= 1 and all(isinstance(n, str) and n for n in names), "tasks.names", names,
             "a non-empty list of lm-eval task names")
    _require(len(set(names)) == len(names), "tasks.names", names, "each task once")
    if cfg.eval.tasks is not None:
        _require(len(cfg.eval.tasks) >= 1 and all(isinstance(n, str) for n in cfg.eval.tasks), "eval.tasks",
                 list(cfg.eval.tasks), "null (= tasks.names) or a non-empty list of lm-eval task names")
    batch = cfg.eval.batch_size
    _require(batch == "auto" or (_is_int(batch) and batch >= 1), "eval.batch_size", batch, "an integer >= 1 or auto")
    _require(cfg.eval.limit is None or (_is_int(cfg.eval.limit) and cfg.eval.limit >= 1), "eval.limit",
             cfg.eval.limit, "null (all documents) or an integer >= 1")
    _require(_is_int(cfg.eval.num_fewshot) and cfg.eval.num_fewshot >= 0, "eval.num_fewshot", cfg.eval.num_fewshot,
             "an integer >= 0")
    max_gen_toks = cfg.eval.get("max_gen_toks")
    _require(max_gen_toks is None or (_is_int(max_gen_toks) and max_gen_toks >= 1), "eval.max_gen_toks", max_gen_toks,
             "null (each task's own setting) or an integer >= 1")
    _require(cfg.logger.name in LOGGERS, "logger", cfg.logger.name, ", ".join(LOGGERS))
    if cfg.logger.name == "wandb":
        _require(cfg.logger.mode in LOGGER_MODES, "logger.mode", cfg.logger.mode, ", ".join(LOGGER_MODES))
    if cfg.data.local_dir is not None and not Path(cfg.data.local_dir).is_dir():
        raise DietError(f"data.local_dir: '{cfg.data.local_dir}' is not a folder; allowed: a folder holding "
                        "<task>/<split>.jsonl files, or null")


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Hydra reports an unknown config choice (`model=gemma2_99b`) over many lines; catch it first as one line."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        group, _, values = arg.partition("=")
        group_dir = conf_dir / group
        if "." in group or not group_dir.is_dir() or values in ("null", ""):
            continue
        choices = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for value in values.split(","):
            if value not in choices:
                raise DietError(f"{group}: unknown choice '{value}'; allowed: {', '.join(choices)}")


def check_launcher(argv: list[str]) -> None:
    """submitit_slurm composes anywhere but fails at launch off a cluster with a stack trace; say it in one line."""
    multirun = "-m" in argv or "--multirun" in argv
    if multirun and "hydra/launcher=slurm" in argv and shutil.which("srun") is None:
        raise DietError("hydra/launcher: 'slurm' needs SLURM's srun, which is not on PATH (this is not a cluster "
                        "node); allowed here: hydra/launcher=local (submitit subprocesses) or the default basic launcher")


def exit_on_error(err: DietError) -> None:
    print(f"diet: error: {err}", file=sys.stderr)
    sys.exit(2)
