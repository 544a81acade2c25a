"""Compose every job of a sweep without running anything: what the launchers do with DRY_RUN=1.

    python launch/compose.py <the overrides a `python -m diet.run -m` would get>

Expands the sweep exactly as Hydra's basic sweeper does, composes each job's config (launcher included, with its
interpolations resolved) and runs diet's own validation on it. Prints one summary line; a job that does not compose
or validate is one `diet: error:` line and exit 2.
"""
from __future__ import annotations

import sys

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


def check(overrides: list[str], cover_only: bool = False) -> tuple[int, dict[str, int], str]:
    """(number of jobs, {swept key: number of values}, launcher target); raises DietError on the first bad job.

    cover_only: compose only jobs that between them use every swept value once (fast; for tests), not all of them.
    """
    jobs = expand(overrides)
    chosen = covering(jobs) if cover_only else range(len(jobs))
    swept = {o.get_key_element(): len(list(o.sweep_string_iterator()))
             for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()}
    launcher = ""
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3", job_name="diet"):
        for num in chosen:
            job = jobs[num]
            try:
                config.check_group_choices(job)
                cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
                OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # gpus/mem from the model config resolve
                task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
                config.validate(task_cfg)
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
        n, swept, launcher = check(overrides)
    except DietError as err:
        config.exit_on_error(err)
    counts = " x ".join(f"{k} ({v})" for k, v in swept.items()) or "nothing swept"
    print(f"dry run: {n} job{'s' * (n != 1)} compose and validate; launcher {launcher}; swept: {counts}")


if __name__ == "__main__":
    main()
