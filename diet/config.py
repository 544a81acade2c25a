"""Validation of the composed Hydra config: every user mistake becomes one DietError line (key, value, allowed)."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diet import DietError, methods, scoring, targets
from diet.profile import FUSED_CHOICES
from diet.targets.heads import GQA_MODES
from diet.vote import SCOPES, VOTE_METHODS


def _conf_dir() -> Path:
    """diet/conf/ in an installed package (the wheel maps the repository's conf/ there), else conf/ of the checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()
METHODS = tuple(methods.METHODS)
TARGETS = tuple(targets.TARGETS)
SCORINGS = tuple(scoring.SCORINGS)
CALIB_SOURCES = ("task", "generic")
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")


def _checkpoint_name(name_or_path) -> str:
    """`model=hf`'s name in tables: the checkpoint's own (/data/ckpt/llama-3-8b/ and meta-llama/llama-3-8b give
    llama-3-8b)."""
    return Path(str(name_or_path).rstrip("/")).name


OmegaConf.register_new_resolver("diet.checkpoint_name", _checkpoint_name, replace=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise DietError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


STAGES = ("all", "profile")


def validate_model(model: DictConfig) -> None:
    if OmegaConf.is_missing(model, "name_or_path"):
        raise DietError("model.name_or_path: missing; allowed: a hub id (org/name) or a local checkpoint folder, "
                        "e.g. model=hf model.name_or_path=/data/ckpt/llama-3-8b")


def validate(cfg: DictConfig) -> None:
    validate_model(cfg.model)
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
    chosen = cfg.prune.target if isinstance(cfg.prune.target, str) else list(cfg.prune.target)
    names = [chosen] if isinstance(chosen, str) else chosen
    _require(len(names) >= 1 and all(n in TARGETS for n in names) and len(set(names)) == len(names), "prune.target",
             chosen, f"{', '.join(TARGETS)}, or a list of them, each once (e.g. [mlp,heads])")
    per_target = cfg.prune.get("sparsity_per_target") or {}
    for name, value in per_target.items():
        if value is None:
            continue
        _require(name in names, f"prune.sparsity_per_target.{name}", value,
                 f"a key among prune.target ({', '.join(names)})")
        _require(_is_number(value) and 0 <= value < 1, f"prune.sparsity_per_target.{name}", value,
                 "a number in [0, 1)")
    _require(cfg.prune.get("heads_gqa", "per_group") in GQA_MODES, "prune.heads_gqa", cfg.prune.get("heads_gqa"),
             ", ".join(GQA_MODES))
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


def config_dirs(argv: list[str], conf_dir: Path = CONF_DIR) -> list[Path]:
    """The folders Hydra composes from: the user's (`--config-dir DIR`, `hydra.searchpath=[file://DIR,pkg://mod]`)
    first, as Hydra searches them, then diet's own."""
    dirs: list[Path] = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]).expanduser())
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(Path(arg.split("=", 1)[1]).expanduser())
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            for entry in arg.split("=", 1)[1].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("pkg://"):
                    spec = importlib.util.find_spec(entry[len("pkg://"):].replace("/", "."))
                    dirs += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
                elif entry:
                    dirs.append(Path(entry.removeprefix("file://")).expanduser())
    return dirs + [conf_dir]


def target_sparsity(cfg: DictConfig, name: str) -> float:
    """The fraction of `name`'s dimensions to remove: prune.sparsity_per_target.<name>, else sparsity."""
    per_target = cfg.prune.get("sparsity_per_target") or {}
    value = per_target.get(name)
    return float(cfg.sparsity if value is None else value)


def target_options(cfg: DictConfig, name: str) -> dict:
    """Settings of one target's class (only heads has any)."""
    return {"gqa": cfg.prune.get("heads_gqa", "per_group")} if name == "heads" else {}


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Hydra reports an unknown config choice (`model=gemma2_99b`) over many lines; catch it first as one line.

    Choices come from diet's conf/ and the user's config folders (`--config-dir`, `hydra.searchpath`)."""
    dirs = config_dirs(argv, conf_dir)
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        group, _, values = arg.partition("=")
        group_dirs = [d / group for d in dirs if (d / group).is_dir()]
        if "." in group or not group_dirs or values in ("null", ""):
            continue
        choices = sorted({p.stem for d in group_dirs for p in d.glob("*.yaml")})
        for value in values.split(","):
            if value not in choices:
                where = "" if len(dirs) == 1 else f" (in {', '.join(str(d) for d in dirs)})"
                raise DietError(f"{group}: unknown choice '{value}'; allowed: {', '.join(choices)}{where}")


def check_launcher(argv: list[str]) -> None:
    """submitit_slurm composes anywhere but fails at launch off a cluster with a stack trace; say it in one line."""
    multirun = "-m" in argv or "--multirun" in argv
    if multirun and "hydra/launcher=slurm" in argv and shutil.which("srun") is None:
        raise DietError("hydra/launcher: 'slurm' needs SLURM's srun, which is not on PATH (this is not a cluster "
                        "node); allowed here: hydra/launcher=local (submitit subprocesses) or the default basic launcher")


def exit_on_error(err: DietError) -> None:
    print(f"diet: error: {err}", file=sys.stderr)
    sys.exit(2)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config `python -m diet.run OVERRIDES` would run, composed in-process (for `run.run`, tests, notebooks).
    Hydra's own keys (`hydra.*`) are not part of it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    check_group_choices(list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
