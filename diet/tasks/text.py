"""Calibration on plain text (`calib.source=text`, `calib.text=...`): one calibration set named `text`, no vote.

What `calib.text` names, and how its `calib.n_samples` samples of at most `calib.max_length` tokens are drawn:
  FILE.jsonl  one sample per line, its `text` field (blank lines skipped); n_samples lines drawn with
              random.Random(f"{seed}:text"), each tokenised as tokenizer(text) (special tokens as the tokenizer adds
              them) and truncated at max_length: the way task documents are
  FILE.txt    the whole file is one token stream (tokenizer(text), once), cut into consecutive windows of exactly
              max_length tokens (a last shorter one is dropped); n_samples windows drawn as lines are
  pydoc       ours, the offline general-English text: Python's reference-manual topics (`pydoc_data.topics`, the
              text `help()` shows, shipped with every CPython; about 465k characters in 3.12), sorted by topic
              name and joined by blank lines, read as a .txt is. It changes with the Python version; the profile
              cache key hashes the text, so it never mixes versions.
  wikitext2   wikitext-2-raw-v1 train (hub: Salesforce/wikitext) through `datasets`: its lines joined by " " into
              one stream, then windows at offsets drawn as FLAP's (SparseGPT's) get_wikitext2 draws them:
              random.seed(seed), i = randint(0, tokens - max_length - 1), tokens [i, i + max_length)
  c4          allenai/c4 en/c4-validation.00000-of-00008.json.gz (the shard the peers evaluate on): documents drawn
              with randint until one has more than max_length tokens, then a window at a random offset in it, as
              FLAP's get_c4 draws from c4-train.00000-of-01024 (ours: the validation shard, about 40 MB instead of
              300 MB)
  pg19        PG-19's validation books (emozilla/pg19, the copy ShortGPT's run_shortgpt.py reads), drawn as c4
              (ours: the reference reads every consecutive 256-token window of every book)
The hub corpora need the hub (or the local `datasets` cache); offline they fail in one line. Windows carry no
special tokens of their own (the stream's first BOS, if the tokenizer adds one, sits in the first window only),
as in the references. The set's texts (the drawn lines, the stream, or the documents) and its `windows` mode are
part of the profile cache key.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from diet import DietError
from diet.tasks.calibration import CalibrationSet

# name -> (hub dataset, config, load_dataset keyword arguments, windows mode)
NAMED = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", {"split": "train"}, "random"),
    "c4": ("allenai/c4", None, {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
                                "split": "validation"}, "random_doc"),
    # ShortGPT's run_shortgpt.py reads this copy; deepmind/pg19 is a loading script, which datasets >= 4 refuses
    "pg19": ("emozilla/pg19", None, {"split": "validation"}, "random_doc"),
}
BUILTIN = ("pydoc",)
SUFFIXES = (".jsonl", ".txt")
ALLOWED = (f"a .jsonl file (a 'text' field per line), a .txt file, {', '.join(BUILTIN)} (Python's own documentation "
           f"text, offline) or a corpus read through datasets ({', '.join(NAMED)})")


def check_source(value) -> None:
    """`calib.text` as a user gave it: one DietError line when it names nothing readable."""
    if not isinstance(value, str) or not value:
        raise DietError(f"calib.text: {value!r} is not allowed with calib.source=text; allowed: {ALLOWED}")
    if value in NAMED or value in BUILTIN:
        return
    if Path(value).suffix in SUFFIXES:
        if not Path(value).expanduser().is_file():
            raise DietError(f"calib.text: '{value}' does not exist (no such file); allowed: {ALLOWED}")
        return
    raise DietError(f"calib.text: {value!r} is not a known corpus or a .jsonl / .txt file; allowed: {ALLOWED}")


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def _jsonl_texts(path: Path, value: str) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line).get("text")
        except (json.JSONDecodeError, AttributeError):
            text = None
        if not isinstance(text, str):
            raise DietError(f"calib.text: line {number} of '{value}' is not a JSON object with a 'text' string; "
                            f"allowed: {ALLOWED}")
        texts.append(text)
    return texts


def _hub_texts(name: str) -> list[str]:
    dataset, config, kwargs, _ = NAMED[name]
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset, config, **kwargs)
    except Exception as err:  # offline, unreachable, gated: one line, whatever datasets raised
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DietError(f"calib.text: {name!r} could not be read through datasets ({dataset}: {reason}); allowed "
                        f"offline: a local .jsonl or .txt file, or pydoc (Python's own documentation text)") from None
    return list(rows["text"])


def calibration_set(value: str, n_samples: int, seed: int) -> CalibrationSet:
    """The text calibration set `calib.text=value` names (token windows are cut later: `token_rows`)."""
    check_source(value)
    if value in NAMED:
        texts = _hub_texts(value)
        mode = NAMED[value][3]
        return CalibrationSet(task="text", texts=[" ".join(texts)] if mode == "random" else texts, split=value,
                              doc_ids=[], held_out_of_eval=False, windows=mode)
    if value == "pydoc":
        return CalibrationSet(task="text", texts=[pydoc_text()], split="pydoc", doc_ids=[], held_out_of_eval=False,
                              windows="consecutive")
    path = Path(value).expanduser()
    if path.suffix == ".txt":
        return CalibrationSet(task="text", texts=[path.read_text(encoding="utf-8")], split=value, doc_ids=[],
                              held_out_of_eval=False, windows="consecutive")
    lines = _jsonl_texts(path, value)
    doc_ids = _draw(len(lines), n_samples, seed, f"the {len(lines)} lines of calib.text={value}")
    return CalibrationSet(task="text", texts=[lines[i] for i in doc_ids], split=value, doc_ids=doc_ids,
                          held_out_of_eval=False)


def _draw(available: int, n_samples: int, seed: int, what: str) -> list[int]:
    if n_samples > available:
        raise DietError(f"calib.n_samples: {n_samples} is more than {what} hold; allowed: 1..{available}")
    return sorted(random.Random(f"{seed}:text").sample(range(available), n_samples))


def token_rows(calib_set: CalibrationSet, tokenizer, *, max_length: int, n_samples: int, seed: int
               ) -> list[list[int]]:
    """The token ids of every calibration sample: each text truncated at max_length, or the windows its
    `windows` mode cuts (see the module docstring)."""
    if calib_set.windows is None:
        return tokenizer(calib_set.texts, truncation=True, max_length=max_length)["input_ids"]
    where = f"calib.text={calib_set.split}"
    if calib_set.windows == "consecutive":
        ids = tokenizer(calib_set.texts[0])["input_ids"]
        count = len(ids) // max_length
        picked = _draw(count, n_samples, seed, f"the {count} windows of {max_length} tokens of {where} ({len(ids)} "
                       "tokens)")
        return [ids[w * max_length:(w + 1) * max_length] for w in picked]
    rng = random.Random(seed)  # random.seed(seed) then random.randint, as the references draw
    if calib_set.windows == "random":
        ids = tokenizer(calib_set.texts[0])["input_ids"]
        if len(ids) <= max_length + 1:
            raise DietError(f"calib.max_length: {max_length} leaves no window in the {len(ids)} tokens of {where}; "
                            f"allowed: an integer below {len(ids) - 1}")
        starts = [rng.randint(0, len(ids) - max_length - 1) for _ in range(n_samples)]
        return [ids[i:i + max_length] for i in starts]
    if calib_set.windows == "random_doc":
        docs, encoded, rows = calib_set.texts, {}, []
        for _ in range(n_samples):
            while True:
                d = rng.randint(0, len(docs) - 1)
                if d not in encoded:
                    encoded[d] = tokenizer(docs[d])["input_ids"]
                    if len(encoded) == len(docs) and all(len(e) <= max_length for e in encoded.values()):
                        raise DietError(f"calib.max_length: {max_length} is not below any document's length in "
                                        f"{where}; allowed: a smaller calib.max_length")
                if len(encoded[d]) > max_length:
                    break
            i = rng.randint(0, len(encoded[d]) - max_length - 1)
            rows.append(encoded[d][i:i + max_length])
        return rows
    raise ValueError(f"calibration set {calib_set.task!r}: unknown windows mode {calib_set.windows!r}")
