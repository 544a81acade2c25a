"""calib.source=text: .jsonl lines, .txt and pydoc token windows, hub corpora sampled as FLAP's data.py samples them
(offline: one line), the cache key, bad input."""
import json
import random
import subprocess
import sys

import pytest

from diet import DietError, config, profile, stages, targets
from diet.tasks import text

LINES = ["The capital of France is Paris.", "3 + 4 = 7", "hot cold", "A man is sitting on a roof of a house.",
         "Question: is the sky blue? Answer: yes.", "Which of these is a mammal? A. shark B. dolphin"]
CALIB = {"n_samples": 3, "max_length": 8, "batch_size": 2, "include_target": True, "fused_stats": False}


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" + ("\n" if i == 1 else "")
                            for i, t in enumerate(lines)))
    return path


def plan_for(*overrides):
    return config.plan(config.compose(["model=tiny_llama", "tasks=demo", *overrides]))


def test_jsonl_lines_are_drawn_with_the_seed_and_truncated_like_documents(tiny_models, tmp_path):
    _, tokenizer = tiny_models["tiny_llama"]
    path = write_jsonl(tmp_path / "calib.jsonl", LINES)  # with a blank line, which is skipped
    plan = plan_for("calib.source=text", f"calib.text={path}", "calib.n_samples=4", "method=diet", "seed=3")
    sets = stages.calibrate(plan, {})
    assert list(sets) == ["text"]  # one set: nothing is voted
    drawn = sorted(random.Random("3:text").sample(range(len(LINES)), 4))
    assert sets["text"].texts == [LINES[i] for i in drawn] and sets["text"].doc_ids == drawn
    rows = text.token_rows(sets["text"], tokenizer, max_length=8, n_samples=4, seed=3)
    assert rows == [tokenizer(LINES[i])["input_ids"][:8] for i in drawn]
    assert max(map(len, rows)) == 8 and min(map(len, rows)) < 8


def test_txt_is_one_token_stream_cut_into_consecutive_windows(tiny_models, tmp_path):
    _, tokenizer = tiny_models["tiny_llama"]
    body = " ".join(LINES * 3)
    (tmp_path / "calib.txt").write_text(body)
    calib_set = text.calibration_set(str(tmp_path / "calib.txt"), 3, seed=0)
    ids = tokenizer(body)["input_ids"]
    windows = [ids[w * 8:(w + 1) * 8] for w in range(len(ids) // 8)]
    drawn = sorted(random.Random("0:text").sample(range(len(windows)), 3))
    assert text.token_rows(calib_set, tokenizer, max_length=8, n_samples=3, seed=0) == [windows[w] for w in drawn]
    with pytest.raises(DietError, match=rf"^calib.n_samples: 99 is more than the {len(windows)} windows of 8 tokens "
                                        rf"of calib.text=.*calib.txt \({len(ids)} tokens\) hold; "
                                        rf"allowed: 1..{len(windows)}$"):
        text.token_rows(calib_set, tokenizer, max_length=8, n_samples=99, seed=0)


def test_pydoc_is_pythons_own_documentation_text(tiny_models):
    from pydoc_data.topics import topics

    _, tokenizer = tiny_models["tiny_llama"]
    calib_set = text.calibration_set("pydoc", 4, seed=0)
    assert calib_set.texts == ["\n\n".join(topics[k] for k in sorted(topics))] and calib_set.windows == "consecutive"
    assert len(calib_set.texts[0]) > 100_000
    rows = text.token_rows(calib_set, tokenizer, max_length=16, n_samples=4, seed=0)
    assert len(rows) == 4 and all(len(r) == 16 for r in rows)


def test_hub_corpora_are_sampled_as_flaps_data_py(tiny_models, monkeypatch):
    """wikitext2: random.seed(seed), randint windows of the joined train text; c4: random documents longer than
    the window, then a random offset (lib/data.py get_wikitext2 / get_c4)."""
    import datasets

    _, tokenizer = tiny_models["tiny_llama"]
    docs = [" ".join(LINES[i:] + LINES[:i]) * (1 + i % 3) for i in range(6)] + ["short"]
    seen = []

    def fake_load(path, name=None, **kwargs):
        seen.append((path, name, kwargs))
        return {"text": docs}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    wiki = text.calibration_set("wikitext2", 5, seed=7)
    assert seen[-1] == ("Salesforce/wikitext", "wikitext-2-raw-v1", {"split": "train"})
    ids = tokenizer(" ".join(docs))["input_ids"]
    random.seed(7)
    want = []
    for _ in range(5):  # get_wikitext2
        i = random.randint(0, len(ids) - 8 - 1)
        want.append(ids[i:i + 8])
    assert text.token_rows(wiki, tokenizer, max_length=8, n_samples=5, seed=7) == want

    c4 = text.calibration_set("c4", 5, seed=7)
    assert seen[-1][2]["data_files"] == {"validation": "en/c4-validation.00000-of-00008.json.gz"}
    random.seed(7)
    want = []
    for _ in range(5):  # get_c4
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tokenizer(docs[i])["input_ids"]
            if len(enc) > 8:
                break
        i = random.randint(0, len(enc) - 8 - 1)
        want.append(enc[i:i + 8])
    assert text.token_rows(c4, tokenizer, max_length=8, n_samples=5, seed=7) == want
    with pytest.raises(DietError, match=r"^calib.max_length: 10000 is not below any document's length"):
        text.token_rows(c4, tokenizer, max_length=10000, n_samples=1, seed=7)
    pg19 = text.calibration_set("pg19", 5, seed=7)  # the copy ShortGPT reads: parquet, not a loading script
    assert seen[-1] == ("emozilla/pg19", None, {"split": "validation"})
    assert text.token_rows(pg19, tokenizer, max_length=8, n_samples=5, seed=7) == want


def test_a_hub_corpus_offline_is_one_line():
    with pytest.raises(DietError, match=r"^calib.text: 'wikitext2' could not be read through datasets "
                                        r"\(Salesforce/wikitext: .*\); allowed offline: a local .jsonl or .txt file, "
                                        r"or pydoc \(Python's own documentation text\)$"):
        text.calibration_set("wikitext2", 4, seed=0)


def test_the_cache_key_holds_the_texts_and_how_they_are_cut(tmp_path):
    mlp = targets.get("mlp")
    plain = profile.cache_key("fp", "text", ["abc"], mlp, CALIB, seed=0, dtype="float32", fused=False)
    assert "windows" not in plain  # the key of every earlier (task) set
    windowed = profile.cache_key("fp", "text", ["abc"], mlp, CALIB, seed=0, dtype="float32", fused=False,
                                 windows="consecutive")
    assert windowed == {**plain, "windows": "consecutive"}
    other = profile.cache_key("fp", "text", ["abd"], mlp, CALIB, seed=0, dtype="float32", fused=False,
                              windows="consecutive")
    assert other["texts_sha256"] != windowed["texts_sha256"]


@pytest.mark.parametrize("overrides,message", [
    (["calib.text=/nowhere/calib.jsonl"], r"^calib.text: '/nowhere/calib.jsonl' does not exist \(no such file\); "
                                          r"allowed: a .jsonl file \(a 'text' field per line\), a .txt file, pydoc"),
    (["calib.text=wikitext3"], r"^calib.text: 'wikitext3' is not a known corpus or a .jsonl / .txt file; allowed: "),
    ([], r"^calib.text: None is not allowed with calib.source=text; allowed: "),
    (["calib.text=pydoc", "calib.sequential=yes"], r"^calib.sequential: 'yes' is not allowed; allowed: true"),
])
def test_bad_text_calibration_is_one_line(overrides, message):
    with pytest.raises(DietError, match=message):
        plan_for("calib.source=text", *overrides)


def test_a_bad_jsonl_line_or_too_many_samples_is_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(DietError, match=r"^calib.text: line 2 of '.*bad.jsonl' is not a JSON object with a 'text' "):
        text.calibration_set(str(path), 1, seed=0)
    path.write_text('{"text": "one"}\n{"text": "two"}\n')
    with pytest.raises(DietError, match=r"^calib.n_samples: 3 is more than the 2 lines of calib.text=.*bad.jsonl "
                                        r"hold; allowed: 1..2$"):
        text.calibration_set(str(path), 3, seed=0)


def test_a_missing_calibration_file_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diet.run", "model=tiny_llama", "tasks=demo", "logger=none",
                           "calib.source=text", f"calib.text={tmp_path / 'missing.jsonl'}",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"diet: error: calib.text: '{tmp_path / 'missing.jsonl'}' does not exist (no such file); allowed: "
        f"{text.ALLOWED}"]
    assert not (tmp_path / "run" / "results.json").exists()
