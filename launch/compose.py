"""Compose every job of a sweep without running anything: what the launchers do with DRY_RUN=1.

    python launch/compose.py <the overrides a `python -m diet.run -m` would get>

Expands the sweep exactly as Hydra's basic sweeper does, composes each job's config (launcher included, with its
interpolations resolved) and runs diet's own validation on it, and checks calib.n_samples against the calibration
split of every task that can be read without the network (demo tasks, and any task with data.local_dir); hub tasks
are only read by the run itself. Prints one summary line; a job that fails a check is one `diet: error:` line and
exit 2.
"""
from __future__ import annotations

import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from diet import DietError, config
from diet.report.collect import expand_sweep


def expand(overrides: list[str]) -> list[list[str]]:
    """The override list of each job, in Hydra's job order (the expansion the report uses to list unstarted jobs)."""
    return expand_sweep(overrides)[0]


def covering(jobs: list[list[str]]) -> list[int]:
    """Indices of a few jobs that between them use every value of every swept key."""
    seen, keep = set(), []
    for num, job in enumerate(jobs):
        if not seen.issuperset(job):
            keep.append(num)
            seen.update(job)
    return keep


@lru_cache(maxsize=None)
def calibration_capacity(names: tuple[str, ...], local_dir: str | None, n_samples: int, seed: int, pooled: bool,
                         include_target: bool) -> bool:
    """Draw the job's calibration sets as the run would (raises DietError when a split is too small); False when
    some task is a hub dataset, which only the run reads."""
    from diet.tasks import calibration, load_tasks
    from diet.tasks.demo import DEMO_TASKS

    if local_dir is None and any(name not in DEMO_TASKS for name in names):
        return False
    with tempfile.TemporaryDirectory(prefix="diet-dry-run-") as data_dir:
        tasks = load_tasks(list(names), local_dir=local_dir, data_dir=data_dir)
        if pooled:
            calibration.generic_calibration_set(tasks, n_samples, seed, include_target)
        else:
            for task in tasks.values():
                calibration.calibration_set(task, n_samples, seed, include_target)
    return True


def check_calibration(cfg) -> bool:
    """True when the job's calibration draw fits its tasks (or it draws none); False when it reads hub datasets."""
    if cfg.method.name in ("random", "magnitude"):  # no calibration text
        return True
    local_dir = str(Path(cfg.data.local_dir).resolve()) if cfg.data.local_dir else None
    pooled = cfg.method.name == "generic" or cfg.calib.source == "generic"
    return calibration_capacity(tuple(cfg.tasks.names), local_dir, cfg.calib.n_samples, cfg.seed, pooled,
                                cfg.calib.include_target)


def check(overrides: list[str], cover_only: bool = False, sizes_checked: list | None = None
          ) -> tuple[int, dict[str, int], str]:
    """(number of jobs, {swept key: number of values}, launcher target); raises DietError on the first bad job.
    sizes_checked, if given, gets one bool per composed job: False when its tasks are hub datasets (not read here).

    cover_only: compose only jobs that between them use every swept value once (fast; for tests), not all of them.
    """
    jobs = expand(overrides)
    chosen = covering(jobs) if cover_only else range(len(jobs))
    swept = {o.get_key_element(): len(list(o.sweep_string_iterator()))
             for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()}
    launcher = ""
    sizes_checked = [] if sizes_checked is None else sizes_checked
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3", job_name="diet"):
        for num in chosen:
            job = jobs[num]
            try:
                config.check_group_choices(job)
                config.check_override_keys(job)
                cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
                OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # gpus/mem from the model config resolve
                task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
                config.validate(task_cfg)
                sizes_checked.append(check_calibration(task_cfg))
                launcher = cfg.hydra.launcher._target_.rsplit(".", 1)[-1]
            except DietError as err:
                raise DietError(f"job {num} ({' '.join(job)}): {err}") from None
            except Exception as err:  # Hydra's composition errors span many lines; keep the first
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DietError(f"job {num} ({' '.join(job)}) does not compose: {first}") from None
    return len(jobs), swept, launcher


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        checked: list[bool] = []
        n, swept, launcher = check(overrides, sizes_checked=checked)
    except DietError as err:
        config.exit_on_error(err)
    counts = " x ".join(f"{k} ({v})" for k, v in swept.items()) or "nothing swept"
    unchecked = checked.count(False)
    sizes = ("calibration split sizes checked" if not unchecked else f"calibration split sizes not checked for "
             f"{unchecked} job{'s' * (unchecked != 1)} on hub datasets (only the run reads them)")
    print(f"dry run: {n} job{'s' * (n != 1)} compose and validate; launcher {launcher}; swept: {counts}; {sizes}")


if __name__ == "__main__":
    main()
