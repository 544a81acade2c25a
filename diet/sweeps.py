"""Where each run went and how it ended, on the console: a Hydra callback (configured in conf/config.yaml).

- Every job ends by printing its folder and its headline number (or its error); a job that raised anything is
  recorded as failed in its status.json, so no job stays `running` on disk after it ended.
- A multirun ends, under every launcher (the jobs of submitit ones run elsewhere and print into their logs), with one
  line per job read from its status.json / results.json, then one `diet: error:` line per failed job, and
  `python -m diet.run` exits 2 when any job failed (`exit_status`), after all of them ran.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from diet import cache


@dataclass
class JobOutcome:
    num: int
    folder: Path
    overrides: str
    state: str  # done | failed | running | missing
    headline: str  # "average 0.861" / "profile cache filled" / the error line


def read_outcome(num: int, folder: Path, overrides: str = "") -> JobOutcome:
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return JobOutcome(num, folder, overrides, "missing", "no status.json: the job never started or was killed")
    state = status.get("state", "unknown")
    if state == "failed":
        return JobOutcome(num, folder, overrides, state, str(status.get("error", "no error recorded")))
    if state != "done":
        return JobOutcome(num, folder, overrides, state, f"still {state} (stage {status.get('stage', '?')}): "
                          "killed, or still running elsewhere")
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return JobOutcome(num, folder, overrides, state, "profile cache filled (stage=profile)")
    average = (results.get("average") or {}).get("paper")
    sparsity = (results.get("sparsity") or {}).get("achieved")
    text = f"average {average:.4f}" if isinstance(average, (int, float)) else "no average"
    if isinstance(sparsity, (int, float)):
        text += f", sparsity {sparsity:.3f}"
    return JobOutcome(num, folder, overrides, state, text)


def sweep_jobs(config: DictConfig) -> list[tuple[int, Path, str]]:
    """(num, folder, overrides) of every job the basic sweeper expands this multirun into."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    overrides = list(config.hydra.overrides.task)
    try:
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    except Exception:  # another sweeper: list the job folders that exist
        return [(i, p.parent, "") for i, p in enumerate(sorted(sweep_dir.glob("*/status.json")))]
    subdir = config.hydra.sweep._get_node("subdir")._value()  # unresolved: is it the default, the job's number?
    if subdir != "${hydra.job.num}":
        found = sorted(sweep_dir.glob("*/status.json"))
        return [(i, p.parent, " ".join(jobs[i]) if len(found) == len(jobs) else "") for i, p in enumerate(found)]
    varying = [o for o in dict.fromkeys(o for job in jobs for o in job) if not all(o in job for job in jobs)]
    return [(i, sweep_dir / str(i), " ".join(o for o in job if o in varying) or " ".join(job))
            for i, job in enumerate(jobs)]


_sweep_failures: list[JobOutcome] = []
_pending_sweep: list[DictConfig] = []


def summarize(config: DictConfig, out=None) -> list[JobOutcome]:
    """Print one line per job of the sweep, then the failed ones as `diet: error:` lines; returns the failures."""
    out = out or sys.stderr
    outcomes = [read_outcome(*job) for job in sweep_jobs(config)]
    failed = [o for o in outcomes if o.state != "done"]
    print(f"sweep {config.hydra.sweep.dir}: {len(outcomes)} job(s), {len(outcomes) - len(failed)} done, "
          f"{len(failed)} failed or unfinished", file=out)
    for o in outcomes:
        print(f"  job {o.num} {o.state:<7} {o.folder}  {o.headline}", file=out)
    for o in failed:
        print(f"diet: error: job {o.num} {o.state} ({o.overrides}): {o.headline}", file=out)
    if failed:
        print(f"diet: error: {len(failed)} job(s) of the sweep failed; see status.json in their folders", file=out)
    return failed


class RunSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        folder = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            first = (str(err).strip().splitlines() or [""])[0]
            try:
                status = json.loads((folder / "status.json").read_text())
            except (OSError, ValueError):
                status = {}
            if status.get("state") != "failed":
                cache.atomic_write_json(folder / "status.json", {**status, "state": "failed",
                                                                 "error": f"{type(err).__name__}: {first}"})
        outcome = read_outcome(0, folder)
        print(f"diet: run folder {folder}: {outcome.headline}", flush=True)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _pending_sweep.append(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        _pending_sweep.clear()
        _sweep_failures.extend(summarize(config))


def exit_status() -> int:
    """After `python -m diet.run -m ...`: 2 when a job of the sweep failed, else 0. A sweep that Hydra aborted (a job
    raised) is summarised here, since Hydra skips on_multirun_end then."""
    for config in _pending_sweep:
        _sweep_failures.extend(summarize(config))
    _pending_sweep.clear()
    return 2 if _sweep_failures else 0
