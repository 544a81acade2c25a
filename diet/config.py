"""Validation of the composed Hydra config: every user mistake becomes one DietError line (key, value, allowed)."""
from __future__ import annotations

import difflib
import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from diet import DietError, methods, options, scoring, stats, targets, transforms, vote
from diet.profile import FUSED_CHOICES
from diet.tasks import text as text_calibration
from diet.prune import COMPENSATIONS
from diet.vote import SCOPES, VOTE_METHODS


def _conf_dir() -> Path:
    """diet/conf/ in an installed package (the wheel maps the repository's conf/ there), else conf/ of the checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()
TARGETS = tuple(targets.TARGETS)
CALIB_SOURCES = ("task", "generic", "text")
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


def _fraction(value) -> bool:
    return _is_number(value) and 0 <= value < 1


def _int_at_least(n: int):
    return lambda value: _is_int(value) and value >= n


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise DietError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


STAGES = ("all", "profile")
ROTATIONS = ("none", "pca")   # prune.rotate: the transform a method without its own gets (diet/transforms/)
BUDGETS = ("dims", "params")

# The run's own keys (those of registered pieces are checked by the piece: diet/options.py): key, check, allowed.
SETTINGS = (
    ("stage", lambda v: v in STAGES, ", ".join(STAGES)),
    ("sparsity", _fraction, "a number in [0, 1)"),
    ("seed", _is_int, "an integer"),
    ("calib.n_samples", _int_at_least(1), "an integer >= 1 (and no more than each task's calibration split holds)"),
    ("calib.max_length", _int_at_least(2), "an integer >= 2 (tokens)"),
    ("calib.batch_size", _int_at_least(1), "an integer >= 1"),
    ("calib.source", lambda v: v in CALIB_SOURCES, ", ".join(CALIB_SOURCES)),
    ("calib.fused_stats", lambda v: v in FUSED_CHOICES, "auto (torch.compile on CUDA, eager elsewhere), true or false"),
    ("calib.sequential", lambda v: isinstance(v, bool),
     "true (layer i profiled on the pruned layers before it) or false"),
    ("vote.method", lambda v: v in VOTE_METHODS, ", ".join(VOTE_METHODS)),
    ("vote.threshold", lambda v: v is None or (_is_number(v) and 0 < v <= 1),
     "a fraction in (0, 1], or null for a strict majority"),
    ("prune.scope", lambda v: v in SCOPES, ", ".join(SCOPES)),
    ("prune.budget", lambda v: v in BUDGETS, ", ".join(BUDGETS)),
    ("prune.min_keep", lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1] of each layer's width"),
    ("prune.multiple_of", _int_at_least(1), "an integer >= 1"),
    ("prune.compensation", lambda v: v in COMPENSATIONS, ", ".join(COMPENSATIONS)),
    ("prune.rotate", lambda v: v in ROTATIONS, f"{', '.join(ROTATIONS)} (pca: one pooled principal basis of the "
     "residual stream, prune.target=hidden)"),
    ("eval.batch_size", lambda v: v == "auto" or _int_at_least(1)(v), "an integer >= 1 or auto"),
    ("eval.limit", lambda v: v is None or _int_at_least(1)(v), "null (all documents) or an integer >= 1"),
    ("eval.num_fewshot", _int_at_least(0), "an integer >= 0"),
    ("eval.max_gen_toks", lambda v: v is None or _int_at_least(1)(v),
     "null (each task's own setting) or an integer >= 1"),
    ("eval.speed", lambda v: isinstance(v, bool), "true or false"),
    ("logger.name", lambda v: v in LOGGERS, ", ".join(LOGGERS)),
)


def validate_model(model: DictConfig) -> None:
    if OmegaConf.is_missing(model, "name_or_path"):
        raise DietError("model.name_or_path: missing; allowed: a hub id (org/name) or a local checkpoint folder, "
                        "e.g. model=hf model.name_or_path=/data/ckpt/llama-3-8b")


@dataclass(frozen=True)
class Plan:
    """The composed config resolved once into the objects the stages take (nothing downstream looks a name up)."""
    method: methods.Method
    method_options: dict
    scoring: scoring.Scoring
    scoring_options: dict
    targets: tuple                      # Target instances, each with its sparsity and options
    rules: vote.Rules
    statistics: tuple[str, ...]         # what profiling records: declared by scoring, method and compensation
    transform: transforms.Transform
    compensation: str
    profile_tasks: list[str]
    eval_tasks: list[str]
    calib: dict
    seed: int
    stage: str
    budget: str = "dims"                # params: each target's sparsity is a fraction of the decoder's parameters

    @property
    def target_label(self) -> str:
        return "+".join(t.name for t in self.targets)


def _target_names(cfg: DictConfig) -> list[str]:
    chosen = cfg.prune.target if isinstance(cfg.prune.target, str) else list(cfg.prune.target)
    names = [chosen] if isinstance(chosen, str) else [str(n) for n in chosen]
    _require(len(names) >= 1 and all(n in TARGETS for n in names) and len(set(names)) == len(names), "prune.target",
             chosen, f"{', '.join(TARGETS)}, or a list of them, each once (e.g. [mlp,heads])")
    alone = [n for n in names if targets.TARGETS[n].exclusive]
    _require(len(names) == 1 or not alone, "prune.target", chosen,
             f"{alone[0] if alone else ''} alone (a run has one scoring and one method, and none ranks both whole "
             "layers and channels: prune them in two runs, the second on the first's pruned_model)")
    return names


def _targets(cfg: DictConfig) -> tuple:
    names = _target_names(cfg)
    for cls in targets.TARGETS.values():  # every target's options, chosen or not: a typo is never silent
        for key, spec in cls.options.values():
            value = cfg.prune.get(key, spec.default)
            _require(spec.check(value), f"prune.{key}", value, spec.allowed)
    per_target = cfg.prune.get("sparsity_per_target") or {}
    for name, value in per_target.items():
        if value is None:
            continue
        key = f"prune.sparsity_per_target.{name}"
        _require(name in names, key, value, f"a key among prune.target ({', '.join(names)})")
        _require(_fraction(value), key, value, "a number in [0, 1)")
    built = []
    for name in names:
        cls = targets.TARGETS[name]
        value = per_target.get(name)
        target = cls(sparsity=cfg.sparsity if value is None else value,
                     **{option: cfg.prune.get(key, spec.default) for option, (key, spec) in cls.options.items()})
        target.shares_sparsity = value is None  # prune.budget=params: the targets sharing `sparsity` split it
        built.append(target)
    return tuple(built)


def _piece_options(group: DictConfig, group_name: str, piece) -> dict:
    given = {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k != "name"}
    return options.resolve(group_name, piece.name, piece.options, given)


def _has_weight_norms(target) -> bool:
    return type(target).weight_norms is not targets.Target.weight_norms


def _check_ranks(method, chosen_scoring, target) -> None:
    """The method (and its scoring, when it reads one) can rank the target's dimensions."""
    which = f"prune.target={target.name}"
    ranking = [m.name for m in methods.METHODS.values() if (not m.targets or target.name in m.targets)
               and (_has_weight_norms(target) or not m.uses_weight_norms)]
    ranks = f" (method={method.name} ranks prune.target={', '.join(method.targets)})" if method.targets else ""
    _require(method.name in ranking, "method", method.name, f"a method that ranks {which}: {', '.join(ranking)}{ranks}")
    if not method.uses_scoring:
        return
    recorded = lambda s: all(stats.get(n).hook in ("any", target.hook_kind) for n in s.stats) and (  # noqa: E731
        _has_weight_norms(target) or not s.uses_weights)
    _require(recorded(chosen_scoring), "scoring", chosen_scoring.name,
             f"a scoring of what {which} records at its {target.hook_kind} hooks: "
             f"{', '.join(s.name for s in scoring.SCORINGS.values() if recorded(s))}")


def plan(cfg: DictConfig) -> Plan:
    """Validate the composed config (one DietError line per mistake: key, value, allowed) and resolve it."""
    validate_model(cfg.model)
    for key, check, allowed in SETTINGS:
        value = OmegaConf.select(cfg, key)
        _require(check(value), key, value, allowed)
    if cfg.logger.name == "wandb":
        _require(cfg.logger.mode in LOGGER_MODES, "logger.mode", cfg.logger.mode, ", ".join(LOGGER_MODES))
    _require(cfg.method.name in methods.METHODS, "method", cfg.method.name, ", ".join(methods.METHODS))
    _require(cfg.scoring.name in scoring.SCORINGS, "scoring", cfg.scoring.name, ", ".join(scoring.SCORINGS))
    method, chosen_scoring = methods.METHODS[cfg.method.name], scoring.SCORINGS[cfg.scoring.name]
    _require(not (cfg.prune.save and method.per_task_eval), "prune.save", cfg.prune.save,
             f"false with method={method.name} (it builds one model per task)")
    _require(not (cfg.eval.speed and method.per_task_eval), "eval.speed", cfg.eval.speed,
             f"false with method={method.name} (it builds one model per task)")
    profile_tasks = list(cfg.tasks.names or [])
    _require(len(profile_tasks) >= 1 and all(isinstance(n, str) and n for n in profile_tasks), "tasks.names",
             profile_tasks, "a non-empty list of lm-eval task names")
    _require(len(set(profile_tasks)) == len(profile_tasks), "tasks.names", profile_tasks, "each task once")
    if cfg.eval.tasks is not None:
        _require(len(cfg.eval.tasks) >= 1 and all(isinstance(n, str) for n in cfg.eval.tasks), "eval.tasks",
                 list(cfg.eval.tasks), "null (= tasks.names) or a non-empty list of lm-eval task names")
    if cfg.data.local_dir is not None and not Path(cfg.data.local_dir).is_dir():
        raise DietError(f"data.local_dir: '{cfg.data.local_dir}' is not a folder; allowed: a folder holding "
                        "<task>/<split>.jsonl files, or null")
    if cfg.calib.source == "text":
        text_calibration.check_source(cfg.calib.get("text"))
    chosen_targets = _targets(cfg)
    method_options = _piece_options(cfg.method, "method", method)
    compensation = (method.compensation and method.compensation(method_options)) or cfg.prune.compensation
    built = Plan(
        method=method, method_options=method_options,
        scoring=chosen_scoring, scoring_options=_piece_options(cfg.scoring, "scoring", chosen_scoring),
        targets=chosen_targets,
        rules=vote.Rules(scope=cfg.prune.scope, min_keep=cfg.prune.min_keep, multiple_of=cfg.prune.multiple_of,
                         vote_method=cfg.vote.method, threshold=cfg.vote.threshold,
                         exact_budget=cfg.vote.exact_budget),
        statistics=stats.resolve((chosen_scoring.stats if method.uses_scoring else ()) + method.stats
                                 + COMPENSATIONS.get(compensation, ())),
        transform=_transform(cfg, method, chosen_targets), compensation=compensation,
        profile_tasks=profile_tasks,
        eval_tasks=list(cfg.eval.tasks) if cfg.eval.tasks is not None else profile_tasks,
        calib=OmegaConf.to_container(cfg.calib, resolve=True), seed=cfg.seed, stage=cfg.stage,
        budget=cfg.prune.budget)
    if method.check is not None:  # the method's own rules first: they say why better than the generic ones
        method.check(built)
    _check_combination(cfg, built)
    return built


def _transform(cfg: DictConfig, method, chosen_targets) -> transforms.Transform:
    """The method's own transform, or the one prune.rotate names (one DietError line where they do not go)."""
    rotate = cfg.prune.get("rotate", "none")
    if rotate == "none":
        chosen = transforms.get(method.transform)
        if chosen.apply is not None and (cfg.model.get("offload") or cfg.model.get("device_map")):
            raise DietError(f"model.offload: method={method.name} is not allowed with model.offload or model."
                            f"device_map (its {chosen.name} transform runs on the whole model in one place); allowed: "
                            "model.offload=false model.device_map=null")
        return chosen
    why = None
    if method.transform != "none":
        why = f"method={method.name} (it applies its own transform, {method.transform})"
    elif [t.name for t in chosen_targets] != ["hidden"]:
        why = (f"prune.target={'+'.join(t.name for t in chosen_targets)} (the rotation is of the residual stream: "
               "prune.target=hidden)")
    elif method.calibration == "none":
        why = f"method={method.name} (it reads no calibration data to compute the rotation from)"
    elif cfg.model.get("offload") or cfg.model.get("device_map"):
        why = "model.offload / model.device_map (the rotation runs on the whole model in one place)"
    if why:
        raise DietError(f"prune.rotate: {rotate!r} is not allowed with {why}; allowed: none")
    return transforms.get(rotate)


def _check_combination(cfg: DictConfig, plan: Plan) -> None:
    """Settings each valid alone that do not go together (one DietError line)."""
    method, chosen_scoring, chosen_targets, compensation = plan.method, plan.scoring, plan.targets, plan.compensation
    for t in chosen_targets:
        _require(compensation == "none" or t.compensable, "prune.compensation", compensation,
                 f"none with prune.target={t.name} (mean compensates targets that feed an output projection: "
                 f"{', '.join(n for n, c in targets.TARGETS.items() if c.compensable) or 'none yet'})")
    for t in chosen_targets:
        _check_ranks(method, chosen_scoring, t)
    declared = (chosen_scoring.stats if method.uses_scoring else ()) + method.stats + COMPENSATIONS[compensation]
    for name in declared:  # stats.BASE is recorded wherever its hook kind is hooked, and nowhere else
        kind = stats.get(name).hook
        _require(kind == "any" or any(t.hook_kind == kind for t in chosen_targets), "prune.target",
                 "+".join(t.name for t in chosen_targets),
                 f"a target recorded at a {kind} hook (statistic {name!r}, needed by scoring={chosen_scoring.name}, "
                 f"method={method.name} or prune.compensation={compensation})")
    if method.uses_scoring:
        for t in chosen_targets:
            _require(not chosen_scoring.uses_weights or chosen_scoring.weights in t.weight_kinds, "scoring",
                     chosen_scoring.name, f"a scoring that prune.target={t.name} gives weights for (scoring="
                     f"{chosen_scoring.name} reads each channel's mean |w| over its output column)")
    if cfg.calib.sequential:
        _check_sequential(cfg, method, chosen_targets)


def _check_sequential(cfg: DictConfig, method, chosen_targets) -> None:
    """calib.sequential=true: every mask is chosen per layer, from one trajectory of pruned layers (stages.profile)."""
    why = None
    if method.calibration == "none":
        why = f"method={method.name} (it reads no calibration data)"
    elif not method.sequential:
        why = f"method={method.name} (its masks are not chosen layer by layer on the pruned model)"
    elif cfg.prune.scope != "layer":
        why = f"prune.scope={cfg.prune.scope} (a layer's mask would depend on later layers)"
    elif cfg.stage != "all":
        why = f"stage={cfg.stage} (sequential statistics depend on the masks, so nothing is cached)"
    else:
        for t in chosen_targets:
            if not t.sequential:
                why = f"prune.target={t.name} (its masks are not per layer)"
    if why:
        raise DietError(f"calib.sequential: true is not allowed with {why}; allowed: false")


def validate(cfg: DictConfig) -> None:
    """Raise the DietError `plan` would (for dry runs, which compose but do not run)."""
    plan(cfg)


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


FREE_FORM = ("model.config",)  # handed on as they are (a tiny model's transformers config)


def _leaf_keys(node, prefix: str = "") -> set[str]:
    if not isinstance(node, dict) or not node:
        return {prefix} if prefix else set()
    keys = set()
    for key, value in node.items():
        if prefix == "" and key in ("defaults", "hydra"):
            continue
        keys |= _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def known_keys(dirs: list[Path]) -> set[str]:
    """Every config key diet reads: the leaves of config.yaml and of every file of every config group (under its
    package: `model.*` for conf/model/, the root for `# @package _global_` files), in diet's and the user's folders."""
    keys: set[str] = set()
    for folder in dirs:
        main = folder / "config.yaml"
        packages = {}
        if main.is_file():
            content = OmegaConf.to_container(OmegaConf.load(main), resolve=False)
            keys |= _leaf_keys(content)
            for entry in content.get("defaults", []):
                name = entry if isinstance(entry, str) else ""
                if "@" in name and "/" not in name:  # model_defaults@model: a root file under a package
                    packages[name.split("@")[0]] = name.split("@")[1]
        for path in sorted(folder.rglob("*.yaml")):
            if path.relative_to(folder).parts[0] == "hydra" or path == main:
                continue
            keys |= file_keys(path, folder, packages)
    return keys


def file_keys(path: Path, folder: Path, packages: dict | None = None) -> set[str]:
    """The full keys one config file sets, under its package: its group's (`method.*` for conf/method/), the root
    for `# @package _global_` files, or for a root file the package config.yaml's defaults give it."""
    relative = path.relative_to(folder)
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    if path.read_text().lstrip().startswith("# @package _global_"):
        package = ""
    elif len(relative.parts) == 1:
        package = (packages or {}).get(path.stem, "")
    else:
        package = ".".join(relative.parts[:-1])
    return _leaf_keys(content, package) if package else _leaf_keys(content)


def _is_known(key: str, keys: set[str]) -> bool:
    return (key in keys or any(k.startswith(key + ".") for k in keys)
            or any(key == f or key.startswith(f + ".") for f in FREE_FORM))


def unknown_key_error(key: str, keys: set[str]) -> DietError:
    nearest = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.5)
    hint = f"the nearest known key is {nearest[0]}" if nearest else "see conf/config.yaml for the keys"
    return DietError(f"{key}: unknown key (no part of diet reads it); allowed: a known key ({hint})")


def check_override_keys(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """A typo'd key (`sparsityy=0.3`, `calib.n_sample=32`, or `+sparsityy=0.3`, which Hydra would accept and ignore)
    is one line naming it and the nearest known key, before Hydra composes anything."""
    dirs = config_dirs(argv, conf_dir)
    groups = {str(p.relative_to(d)) for d in dirs for p in d.rglob("*") if p.is_dir()}
    keys = known_keys(dirs)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or key in groups or key.split("@")[0] in groups:
            continue
        if not _is_known(key, keys):
            raise unknown_key_error(key, keys)


OPTION_GROUPS = ("method", "scoring")  # groups whose pieces declare options in their own file


def _yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _group_file(dirs: list[Path], group: str, name: str) -> tuple[Path, Path] | None:
    """(folder, file) of `<group>/<name>.yaml` as Hydra finds it (the user's folders first), or None."""
    return next(((d, d / group / f"{name}.yaml") for d in dirs if (d / group / f"{name}.yaml").is_file()), None)


def _option_keys(group: str, name: str, dirs: list[Path]) -> set[str] | None:
    """The keys the file `<group>/<name>.yaml` sets under its group (its options and `name`); None if not found."""
    found = _group_file(dirs, group, name)
    if found is None:
        return None
    folder, path = found
    return {k.split(".")[1] for k in file_keys(path, folder) if k.startswith(f"{group}.")}


def _chosen(group: str, argv: list[str], dirs: list[Path]) -> list[str] | None:
    """The `group` choices a command line runs (a sweep's every value), or None where they are not plain to see
    (an experiment file that sets the group: Hydra decides then)."""
    for arg in argv:
        if arg.lstrip("+").startswith(f"{group}=") and not arg.startswith("~"):
            return [v for v in arg.split("=", 1)[1].split(",") if v]
    for arg in argv:
        if arg.startswith("experiment="):
            for name in arg.split("=", 1)[1].split(","):
                found = _group_file(dirs, "experiment", name)
                if found is None or group in str(_yaml(found[1]).get("defaults", "")):
                    return None
    defaults = _yaml(dirs[-1] / "config.yaml").get("defaults", [])
    found = [entry[group] for entry in defaults if isinstance(entry, dict) and group in entry]
    return found or None


def check_option_keys(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """`method.interleave=false` with a method that has no such option: one line naming the method's options
    (Hydra would say 'Key is not in struct' over several lines, or, with `+`, accept it)."""
    dirs = config_dirs(argv, conf_dir)
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "~")):
            continue
        key = arg.split("=", 1)[0].lstrip("+")
        group, _, option = key.partition(".")
        if group not in OPTION_GROUPS or not option or option == "name":
            continue
        for name in _chosen(group, argv, dirs) or []:
            declared = _option_keys(group, name, dirs)
            if declared is not None and option.split(".")[0] not in declared:
                allowed = ", ".join(f"{group}.{k}" for k in sorted(declared - {"name"})) or "none (it has no options)"
                raise DietError(f"{key}: unknown key for {group}={name}; allowed: {allowed}")


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
    check_group_choices(list(overrides))
    check_override_keys(list(overrides))
    check_option_keys(list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))
