"""Calibration samples: documents drawn with a seeded RNG and formatted exactly as lm-eval presents them zero-shot.

Documents come from the task's training split; failing that, from a split lm-eval does not evaluate; failing that,
from the evaluated split itself, in which case the set is marked `held_out_of_eval` and the caller removes those
documents from evaluation with `exclude_calibration_docs` (the task object drops them; works with `limit`).
"""

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from diet import DietError
from diet.tasks import eval_split

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    task: str  # task name, or "generic" for a pooled set
    texts: list[str]
    split: str  # split the documents come from ("mixed" for a pooled set over different splits)
    doc_ids: list[int]  # index of each text's document in its split (as lm-eval enumerates it)
    held_out_of_eval: bool  # the documents come from the evaluated split and must be excluded from evaluation
    parts: dict[str, "CalibrationSet"] = field(default_factory=dict)  # per-task draws of a pooled set
    windows: str | None = None  # None: each text one sample; else how diet.tasks.text.token_rows cuts token windows


def calibration_set(task, n_samples: int, seed: int, include_target: bool = True) -> CalibrationSet:
    """n_samples documents of `task`, drawn with random.Random seeded by (seed, task name), formatted as lm-eval's
    zero-shot request: the context, followed by the gold continuation when include_target is true."""
    name = task.task_name
    split, docs, held_out = _calibration_source(task)
    _check_n_samples(n_samples, _capacity(len(docs), held_out), f"task {name!r} can supply from its {split!r} split "
                     f"({len(docs)} documents{', one of which must stay for evaluation' if held_out else ''})")
    if held_out:
        log.warning(
            "task %s has no split besides the evaluated %r one: calibrating on %d of its documents, which must be "
            "excluded from evaluation (exclude_from_eval)", name, split, n_samples,
        )
    rng = random.Random(f"{seed}:{name}")
    doc_ids = sorted(rng.sample(range(len(docs)), n_samples))
    texts = [format_document(task, docs[i], i, include_target) for i in doc_ids]
    return CalibrationSet(task=name, texts=texts, split=split, doc_ids=doc_ids, held_out_of_eval=held_out)


def generic_calibration_set(
    tasks: dict[str, Any], n_samples: int, seed: int, include_target: bool = True
) -> CalibrationSet:
    """One pooled, shuffled sample of n_samples documents over all tasks, spread as evenly as the tasks allow."""
    rng = random.Random(f"{seed}:generic")
    capacity = {}
    for name, task in tasks.items():
        _, docs, held_out = _calibration_source(task)
        capacity[name] = _capacity(len(docs), held_out)
    _check_n_samples(n_samples, sum(capacity.values()),
                     f"tasks {', '.join(tasks)} can supply together ({sum(capacity.values())} documents)")

    quota = dict.fromkeys(tasks, 0)
    order = list(tasks)
    rng.shuffle(order)  # which tasks get the remainder when n_samples does not divide evenly
    remaining = n_samples
    while remaining:
        for name in order:
            if remaining and quota[name] < capacity[name]:
                quota[name] += 1
                remaining -= 1

    parts = {name: calibration_set(tasks[name], quota[name], seed, include_target) for name in tasks if quota[name]}
    pooled = [pair for part in parts.values() for pair in zip(part.texts, part.doc_ids)]
    rng.shuffle(pooled)
    splits = {part.split for part in parts.values()}
    return CalibrationSet(
        task="generic",
        texts=[text for text, _ in pooled],
        split=splits.pop() if len(splits) == 1 else "mixed",
        doc_ids=[doc_id for _, doc_id in pooled],
        held_out_of_eval=any(part.held_out_of_eval for part in parts.values()),
        parts=parts,
    )


def format_document(task, doc: dict, doc_id: int, include_target: bool = True) -> str:
    """One document as lm-eval's zero-shot request for it: the requests come from the task's own fewshot_context and
    construct_requests; the gold one is chosen the way the task's process_results scores it."""
    context = task.fewshot_context(doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
    output_type = task.OUTPUT_TYPE
    if output_type == "multiple_choice":
        requests = task.construct_requests(doc=doc, ctx=context, metadata=(task.task_name, doc_id, 1))
        gold_context, continuation = requests[_gold_index(task, doc)].args[:2]
    elif output_type == "loglikelihood":
        gold_context, continuation = context, task.doc_to_target(doc)
    elif output_type == "generate_until":
        # the prompt plus the gold answer as lm-eval would show the answered document in a few-shot prompt; the
        # prompt alone when the task has no answer text (IFEval's target is a placeholder 0, its metric checks rules)
        target = _generation_target(task, doc)
        gold_context, continuation = context, ("" if target is None else task.config.target_delimiter + target)
    elif output_type == "loglikelihood_rolling":
        gold_context, continuation = "", task.doc_to_target(doc)  # the document is its own target
    else:
        raise ValueError(f"task {task.task_name}: unsupported output_type {output_type!r}")
    return gold_context + continuation if include_target else gold_context


def _generation_target(task, doc: dict) -> str | None:
    """The gold answer text of a generative task's document, or None when it has none."""
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0] if target else None
    if isinstance(target, int) and not isinstance(target, bool) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    if not isinstance(target, str) or not target.strip():
        return None
    return target


def exclude_from_eval(task, doc_ids: list[int]) -> int:
    """Removes documents (indices into the evaluated split, as calibration_set reports them) from what lm-eval evaluates
    for this task object; returns how many documents remain.

    The task's process_docs is wrapped so that the evaluated split loses those documents after lm-eval's own
    processing; lm-eval's doc_iterator then never sees them. Repeated calls accumulate.
    """
    from lm_eval.api.task import ConfigurableTask

    if not isinstance(task, ConfigurableTask):
        raise TypeError(f"exclude_from_eval needs a ConfigurableTask, got {type(task).__name__}")
    split = eval_split(task)
    current = task.config.process_docs
    if isinstance(current, _WithoutDocs):
        current.excluded.update(doc_ids)
    else:
        task.config.process_docs = _WithoutDocs(current, task.dataset[split], set(doc_ids))
    task.task_docs = task.eval_docs  # lm-eval caches the eval docs once at construction
    remaining = len(task.eval_docs)
    if remaining == 0:
        raise DietError(
            f"calib.n_samples: calibrating on every document of task {task.task_name!r} leaves none to evaluate"
        )
    log.info("task %s: %d calibration documents excluded from evaluation, %d remain",
             task.task_name, len(task.config.process_docs.excluded), remaining)
    return remaining


def exclude_calibration_docs(tasks: dict[str, Any], calibration: CalibrationSet) -> dict[str, int]:
    """Applies exclude_from_eval for every held-out part of a calibration set (single-task or pooled); returns the
    remaining evaluation document count of each task it touched."""
    parts = calibration.parts.values() if calibration.parts else [calibration]
    return {part.task: exclude_from_eval(tasks[part.task], part.doc_ids) for part in parts if part.held_out_of_eval}


class _WithoutDocs:
    """process_docs replacement: the original processing, then the evaluated split without the excluded documents.

    The evaluated split is recognised by identity (lm-eval passes `task.dataset[split]` itself), so other splits pass
    through unchanged. `original_docs` gives the unfiltered documents, so later calibration draws keep stable ids.
    """

    def __init__(self, original, eval_data, excluded: set[int]):
        self.original = original
        self.eval_data = eval_data
        self.excluded = excluded

    def original_docs(self, data):
        return self.original(data) if self.original is not None else data

    def __call__(self, data):
        docs = self.original_docs(data)
        if data is not self.eval_data:
            return docs
        keep = [i for i in range(len(docs)) if i not in self.excluded]
        return docs.select(keep) if hasattr(docs, "select") else [docs[i] for i in keep]


def _calibration_source(task) -> tuple[str, Any, bool]:
    """(split, its documents after the task's process_docs, whether that split is the evaluated one)."""
    evaluated = eval_split(task)
    config = task.config
    if task.has_training_docs():
        return config.training_split, _split_docs(task, config.training_split), False
    if task.has_validation_docs() and config.validation_split != evaluated:
        return config.validation_split, _split_docs(task, config.validation_split), False
    return evaluated, _split_docs(task, evaluated), True


def _split_docs(task, split: str):
    process_docs = task.config.process_docs
    if isinstance(process_docs, _WithoutDocs):  # calibration ids always refer to the unfiltered split
        return process_docs.original_docs(task.dataset[split])
    return process_docs(task.dataset[split]) if process_docs is not None else task.dataset[split]


def _gold_index(task, doc) -> int:
    """The gold choice, resolved as lm-eval's process_results does for multiple_choice (first of several golds)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, list):
        gold = gold[0]
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    return gold


def _capacity(n_docs: int, held_out: bool) -> int:
    return n_docs - 1 if held_out else n_docs


def _check_n_samples(n_samples: int, capacity: int, source: str) -> None:
    if n_samples < 1:
        raise DietError(f"calib.n_samples: {n_samples} is not a positive number of documents; allowed: 1..{capacity}")
    if n_samples > capacity:
        raise DietError(f"calib.n_samples: {n_samples} is more than {source}; allowed: 1..{capacity}")
