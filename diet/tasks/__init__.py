"""The task mix: lm-eval task objects for demo tasks and builtin lm-eval tasks, optionally on local JSONL data.

The returned objects are lm-eval's own ConfigurableTask instances, so calibration formatting (diet.tasks.calibration)
and evaluation (lm-eval's simple_evaluate) both go through the builtin prompt templates, process_docs and metrics.
"""

import difflib
import functools
import logging
import time
from pathlib import Path
from typing import Any

from diet import DietError
from diet.tasks.demo import DEMO_TASKS, demo_task_config

log = logging.getLogger(__name__)

# lm-eval config keys that name a split of the dataset
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@functools.cache
def _builtin_task_manager():
    """lm-eval's full TaskManager; indexing its ~14,700 builtin tasks takes 6-12 s, so it is built at most once."""
    from lm_eval.tasks import TaskManager  # over a second to import: only building tasks needs it

    start = time.perf_counter()
    manager = TaskManager()
    log.info("indexed %d lm-eval tasks in %.1f s", len(manager.all_tasks), time.perf_counter() - start)
    return manager


@functools.cache
def evaluation_task_manager():
    """A TaskManager that indexes nothing, for simple_evaluate(task_manager=...) with ready-made task objects.

    Without one, simple_evaluate builds (and indexes) a full TaskManager on every call.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def evaluation_tasks(task_dict: dict[str, Any]) -> list:
    """The task objects in the form simple_evaluate(tasks=...) takes: a list of Task objects, evaluated as they are."""
    return list(task_dict.values())


def eval_split(task) -> str:
    """The split lm-eval evaluates: test when the task defines one, else validation."""
    return task.config.test_split if task.has_test_docs() else task.config.validation_split


def load_tasks(names: list[str], *, local_dir: str | None = None, data_dir: str,
               keys: dict[str, str] | None = None) -> dict[str, Any]:
    """lm-eval task objects keyed by name, in the order given. `keys`: the config key an error about a name should
    name (default `tasks.names`; run.py passes `eval.tasks` for tasks that are only evaluated).

    Demo task names (diet.tasks.demo.DEMO_TASKS) write their JSONL under data_dir; any other name is a builtin lm-eval
    task. With local_dir, every builtin task reads its splits from local_dir/<task>/<split>.jsonl (in the HF dataset's
    own schema) through the builtin task definition.
    """
    import datasets

    datasets.disable_progress_bars()  # one bar per split of every local JSONL file buries the run's own log
    if not names:
        raise DietError(f"tasks.names: empty; allowed: demo tasks ({', '.join(DEMO_TASKS)}) or lm-eval task names")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DietError(f"tasks.names: {duplicates[0]!r} is listed more than once; list each task once")
    builtin = [name for name in names if name not in DEMO_TASKS]
    manager = _builtin_task_manager() if builtin else None
    keys = keys or {}
    for name in builtin:
        _check_builtin_name(name, manager, keys.get(name, "tasks.names"))
    if local_dir is not None and builtin and not Path(local_dir).is_dir():
        raise DietError(f"data.local_dir: {local_dir} is not a folder; expected <task>/<split>.jsonl files in it")

    tasks = {}
    for name in names:
        if name in DEMO_TASKS:
            tasks[name] = _build(demo_task_config(name, data_dir))
        elif local_dir is not None:
            tasks[name] = _build_local(name, manager, Path(local_dir))
        else:
            tasks[name] = _build_from_hub(name, manager, keys.get(name, "tasks.names"))
    return tasks


def _check_builtin_name(name: str, manager, key: str = "tasks.names") -> None:
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None:
        matches = difflib.get_close_matches(name, list(DEMO_TASKS) + manager.all_tasks, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
        raise DietError(
            f"{key}: unknown lm-eval task {name!r}{hint} "
            f"(lm-eval knows {len(manager.all_tasks)} tasks; demo tasks: {', '.join(DEMO_TASKS)})"
        )
    if entry.kind in (Kind.GROUP, Kind.TAG):
        what = "group" if entry.kind is Kind.GROUP else "tag"
        members = sorted(entry.tags) if entry.kind is Kind.TAG else _group_members(entry)
        shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
        raise DietError(
            f"{key}: {name!r} is an lm-eval {what} ({len(members)} tasks: {shown}); "
            f"allowed: single tasks, so list the ones you want by name"
        )


def _group_members(entry) -> list[str]:
    members = (entry.cfg or {}).get("task") or []
    return [m if isinstance(m, str) else str(m.get("task") or m.get("group")) for m in members]


def _build(config: dict):
    """A ConfigurableTask from a full config dict, through lm-eval's own factory (metadata handling included)."""
    return evaluation_task_manager().load([config])["tasks"][config["task"]]


def _build_from_hub(name: str, manager, key: str = "tasks.names"):
    try:
        return manager.load([name])["tasks"][name]
    except Exception as err:
        if not _is_offline_error(err):
            raise
        entry = manager.task_index[name]
        dataset = (entry.cfg or {}).get("dataset_path", "?")
        raise DietError(
            f"{key}: lm-eval task {name!r} needs dataset {dataset!r}, which is not in the local HF cache and the "
            f"Hugging Face hub is unreachable ({type(err).__name__}); set data.local_dir to a folder with "
            f"{name}/<split>.jsonl files"
        ) from None


def _is_offline_error(err: BaseException) -> bool:
    """Errors datasets/huggingface_hub raise when a hub dataset cannot be fetched (offline mode or no network)."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline_types = (ConnectionError, TimeoutError, DatasetNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled)
    while err is not None:
        if isinstance(err, offline_types):
            return True
        err = err.__cause__ or err.__context__
    return False


def _build_local(name: str, manager, local_dir: Path):
    """The builtin task `name` with its dataset swapped for local JSONL files; everything else stays lm-eval's."""
    from datasets.exceptions import DatasetGenerationError
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[name]
    if entry.kind is not Kind.TASK or entry.yaml_path is None:
        raise DietError(
            f"data.local_dir: lm-eval task {name!r} is defined by a Python class, not a YAML config, so its data "
            f"cannot be replaced; allowed: YAML-defined tasks, or leave data.local_dir unset"
        )
    config = load_yaml(entry.yaml_path, resolve_func=True)  # resolves the task's !function helpers
    for key in ("tag", "group", "task_list"):
        config.pop(key, None)
    if config.get("custom_dataset") is not None:
        raise DietError(
            f"data.local_dir: lm-eval task {name!r} builds its dataset with custom code; allowed: tasks that read "
            f"a HF dataset, or leave data.local_dir unset"
        )

    task_dir = local_dir / name
    needed = config.get("test_split") or config.get("validation_split")
    if not task_dir.is_dir():
        raise DietError(
            f"data.local_dir: {task_dir} does not exist; lm-eval task {name!r} needs at least {task_dir}/{needed}.jsonl"
        )
    fewshot_config = dict(config.get("fewshot_config") or {})
    wanted = {config.get(key) for key in _SPLIT_KEYS} | {fewshot_config.get("split")}
    files = {split: task_dir / f"{split}.jsonl" for split in sorted(s for s in wanted if s)}
    files = {split: path.resolve() for split, path in files.items() if path.is_file()}
    if needed not in files:
        raise DietError(
            f"data.local_dir: {task_dir / f'{needed}.jsonl'} does not exist; lm-eval task {name!r} evaluates its "
            f"{needed!r} split"
        )
    for key in _SPLIT_KEYS:
        if config.get(key) is not None and config[key] not in files:
            config[key] = None  # a split with no file must be unset, or lm-eval looks it up and fails
    if fewshot_config.get("split") is not None and fewshot_config["split"] not in files:
        fewshot_config["split"] = None
        config["fewshot_config"] = fewshot_config

    config.update(
        task=name,
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {split: str(path) for split, path in files.items()}},
    )
    config["metadata"] = {**(config.get("metadata") or {}), "local_dir": str(task_dir.resolve())}
    log.info("task %s: reading splits %s from %s", name, ", ".join(files), task_dir)
    try:
        return _build(config)
    except DatasetGenerationError as err:
        raise DietError(f"data.local_dir: cannot read the JSONL files in {task_dir}: {err}") from None
    except KeyError as err:
        raise DietError(
            f"data.local_dir: documents in {task_dir} lack field {err} that lm-eval task {name!r} needs; allowed: "
            f"documents in the task's HF dataset schema"
        ) from None


__all__ = ["DEMO_TASKS", "eval_split", "evaluation_task_manager", "evaluation_tasks", "load_tasks"]
