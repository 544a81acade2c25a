"""What the benchmark scripts share: the offline environment, interleaved timing, analytic FLOPs of a decoder
forward, the exact command line, one markdown section per benchmark in docs/benchmarks.md, and the one place that
names the diet entry points the benchmarks time (so they follow the run when its code moves).

Importing this module changes nothing: each script's main() calls `setup_env()` before it imports diet or
transformers.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def setup_env() -> None:
    """Offline hub, datasets and W&B (values already set by the user win); diet importable from this checkout.
    Call before importing transformers: huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------------- the diet entry points
# The benchmarks time what `python -m diet.run` runs. When the run's code moves, repoint these (one line each).

def run_config(overrides: list[str]):
    """The run's composed Hydra config (demo experiment) with `overrides`, e.g. ["method=random", "sparsity=0.3"]."""
    from hydra import compose, initialize_config_dir

    from diet.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # float32: the demo experiment runs bf16 for speed, but the benchmarks' recorded figures are float32
        return compose(config_name="config", overrides=["experiment=demo", "logger=none", "model.dtype=float32",
                                                        *overrides])


def target_unavailable(target) -> str | None:
    """None when diet accepts `prune.target=<target>` (a name or a list), else diet's own one-line refusal."""
    from diet import DietError
    from diet.config import validate

    value = target if isinstance(target, str) else "[" + ",".join(target) + "]"
    try:
        validate(run_config([f"prune.target={value}"]))
    except DietError as err:
        return str(err)
    return None


def load_model(cfg, cache_dir: str):
    """The run's loader: a LoadedModel (model, tokenizer, adapter, fingerprint) on the CPU."""
    import torch

    from diet import models

    return models.load(cfg.model, device=torch.device("cpu"), cache_dir=cache_dir, seed=cfg.seed)


def wrap_model(model, adapter, tokenizer=None):
    """A model built outside the run's loader (random published shapes) in the form the run's stages take."""
    from diet.models import LoadedModel

    return LoadedModel(model, tokenizer, adapter, fingerprint="benchmark")


def run_profile(loaded, texts: list[str], cfg) -> dict:
    """The profiling pass the run makes for one calibration set on a cache miss (statistics per hook point of
    every target, in one pass, as profile.profile_sets makes it)."""
    from diet import config, profile

    plan = config.plan(cfg)
    return profile.profile_texts(loaded.model, loaded.adapter, loaded.tokenizer, texts, list(plan.targets),
                                 max_length=cfg.calib.max_length, batch_size=cfg.calib.batch_size,
                                 statistics=plan.statistics, fused_stats=cfg.calib.fused_stats)


def run_vote(cfg, loaded, stats: dict) -> dict:
    """The run's vote stage (method, scoring, merge and budget rules from `cfg`); returns the final masks."""
    from diet import config, stages

    return stages.vote(config.plan(cfg), loaded, stats).masks


def run_prune(model, adapter, masks: dict, target) -> None:
    """The run's physical pruning, in place."""
    from diet import prune

    prune.prune_model(model, adapter, masks, target)


# --------------------------------------------------------------------------------------------------- demo data

DEMO_TASKS = ["demo_capitals", "demo_antonyms", "demo_sums", "demo_plurals"]


def load_demo_tasks(cache_dir: str, names=DEMO_TASKS) -> dict:
    from diet import tasks

    return tasks.load_tasks(list(names), data_dir=str(Path(cache_dir) / "data"))


def calibration_texts(task_objects: dict, n_docs: int) -> dict[str, list[str]]:
    """Each task's calibration documents, as the run samples them (seed 0)."""
    from diet.tasks import calibration

    return {name: calibration.calibration_set(task, n_docs, seed=0).texts for name, task in task_objects.items()}


# ------------------------------------------------------------------------------------------- timing and FLOPs
# One implementation, in diet itself (eval.speed uses it in the run): the benchmarks import it from there.
from diet.speed import (DecoderShape, LayerShape, decode_step, decoder_shape, device_timer,  # noqa: E402,F401
                        forward_flops, interleaved, median_ratio, prefill_call)


# ----------------------------------------------------------------------------------------------------- recording

def command_line(argv: list[str] | None = None) -> str:
    """The command that reruns this benchmark from the repository root, however the script was launched."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0], REPO) if os.path.isabs(argv[0]) else argv[0]
    return shlex.join(["python", script, *argv[1:]])


def machine_info() -> dict[str, str]:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run_metadata(command: str | None = None) -> list[str]:
    """The bullet lines under a section heading: date, this machine, versions, the exact command."""
    info = machine_info()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"- date: {now}",
            f"- machine: {info['cpu']}, {info['cores']} cores; torch threads: {info['threads']}",
            f"- versions: torch {info['torch']}, transformers {info['transformers']}, python {info['python']}",
            f"- command: `{command or command_line()}`"]


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _level2_headings(lines: list[str]) -> list[int]:
    """Indices of `## ` lines outside fenced code blocks."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            found.append(i)
    return found


def replace_section(text: str, title: str, section: str) -> str:
    """`text` with the section headed `## <title>` (up to the next `## ` heading) replaced by `section`, which
    starts with that heading. Later sections with the same title are dropped (one current section per benchmark);
    with none, `section` is appended at the end."""
    heading = f"## {title}"
    if not section.startswith(heading + "\n"):
        raise ValueError(f"section must start with {heading!r}")
    lines = text.splitlines()
    starts = _level2_headings(lines)
    spans = [(s, next((t for t in starts if t > s), len(lines))) for s in starts if lines[s].rstrip() == heading]
    block = section.rstrip("\n").splitlines() + [""]
    if not spans:
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines + [""] + block)
    out, position = [], 0
    for index, (start, end) in enumerate(spans):
        out += lines[position:start]
        if index == 0:
            out += block
        position = end
    out += lines[position:]
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


def write_section(path: str, title: str, body: str, metadata: list[str] | None = None) -> Path:
    """Put `## <title>`, the metadata bullets (default: this run's) and `body` into the markdown file at `path`
    (relative to the repository root unless absolute), replacing the section of that title; atomic."""
    from diet.cache import atomic_write_bytes

    target = Path(path) if Path(path).is_absolute() else REPO / path
    meta = run_metadata() if metadata is None else metadata
    section = f"## {title}\n\n" + "".join(line + "\n" for line in meta) + "\n" + body.strip("\n") + "\n"
    existing = target.read_text() if target.exists() else "# Benchmarks\n"
    atomic_write_bytes(target, replace_section(existing, title, section).encode())
    return target


def target_label(target) -> str:
    return target if isinstance(target, str) else "+".join(target)


def parse_target(label: str):
    """'mlp' -> 'mlp'; 'mlp+heads' -> ['mlp', 'heads'] (the run's list form, prune.target=[mlp,heads])."""
    parts = [p for p in label.split("+") if p]
    return parts[0] if len(parts) == 1 else parts
