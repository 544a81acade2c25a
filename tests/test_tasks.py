import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import pytest

from diet import DietError
from diet.tasks import demo, evaluation_task_manager, evaluation_tasks, load_tasks
from diet.tasks.calibration import (
    calibration_set,
    exclude_calibration_docs,
    format_document,
    generic_calibration_set,
)

PAPER7_FIXTURES = Path(__file__).parent / "fixtures" / "paper7"
PAPER7 = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_lm():
    """lm-eval's HFLM around a random 2-layer Llama and a BPE tokenizer trained here in milliseconds."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(["The capital of France is Paris. 3 + 4 = 7. Question: yes or no? Answer: no"] * 5,
                            trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def demo_tasks(tmp_path_factory):
    return load_tasks(list(demo.DEMO_TASKS), data_dir=str(tmp_path_factory.mktemp("demo-data")))


@pytest.fixture(scope="module")
def paper7_tasks(tmp_path_factory):
    return load_tasks(PAPER7, local_dir=str(PAPER7_FIXTURES), data_dir=str(tmp_path_factory.mktemp("data")))


def evaluate(lm, task_dict, **kwargs):
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=evaluation_tasks(task_dict), task_manager=evaluation_task_manager(),
                           bootstrap_iters=0, **kwargs)


# ---------------------------------------------------------------- demo tasks


def test_demo_data_is_deterministic_disjoint_and_correct(tmp_path):
    hashes = []
    for folder in ("a", "b"):
        for name in demo.DEMO_TASKS:
            demo.write_demo_data(name, tmp_path / folder)
        files = sorted((tmp_path / folder).rglob("*.jsonl"))
        assert len(files) == 2 * len(demo.DEMO_TASKS)
        hashes.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    assert hashes[0] == hashes[1]
    assert not list(tmp_path.rglob("*.tmp"))

    capitals, plurals = dict(demo.CAPITALS), dict(demo.PLURALS)
    antonyms = {**dict(demo.ANTONYMS), **{b: a for a, b in demo.ANTONYMS}}
    fact = {"demo_sums": lambda d: (d["a"], d["b"]), "demo_capitals": lambda d: d["country"],
            "demo_antonyms": lambda d: frozenset((d["word"], antonyms[d["word"]])), "demo_plurals": lambda d: d["word"]}
    for name in demo.DEMO_TASKS:
        splits = {s: read_jsonl(tmp_path / "a" / name / f"{s}.jsonl") for s in ("train", "validation")}
        assert 40 <= len(splits["train"]) <= 80 and 250 <= len(splits["validation"]) <= 400, name
        prompts = {s: [d["prompt"] for d in docs] for s, docs in splits.items()}
        assert len(set(prompts["train"])) == len(prompts["train"])
        assert len(set(prompts["validation"])) == len(prompts["validation"])
        # a fact (country, word pair, sum) lands in one split with all its phrasings
        assert not {fact[name](d) for d in splits["train"]} & {fact[name](d) for d in splits["validation"]}
        for doc in splits["train"] + splits["validation"]:
            assert len(set(doc["choices"])) == demo.NUM_CHOICES
            gold = doc["choices"][doc["label"]]
            expected = {"demo_sums": lambda d: str(d.get("a", 0) + d.get("b", 0)),
                        "demo_capitals": lambda d: capitals.get(d.get("country")),
                        "demo_antonyms": lambda d: antonyms.get(d.get("word")),
                        "demo_plurals": lambda d: plurals.get(d.get("word"))}[name](doc)
            assert gold == expected, (name, doc)
            key = {"demo_sums": "a", "demo_capitals": "country"}.get(name, "word")
            assert str(doc[key]) in doc["prompt"]
            if name == "demo_sums":  # one forward pass per item: the choices share the tens digit
                assert doc["prompt"] == f"{doc['a']} + {doc['b']} ="
                assert len({c[:-1] for c in doc["choices"]}) == 1


def test_demo_tasks_run_through_simple_evaluate(demo_tasks, tiny_lm):
    output = evaluate(tiny_lm, demo_tasks, limit=6)
    assert set(output["results"]) == set(demo.DEMO_TASKS)
    for name, row in output["results"].items():
        assert 0.0 <= row["acc,none"] <= 1.0 and 0.0 <= row["acc_norm,none"] <= 1.0
        assert len(output["samples"][name]) == 6
    first = output["samples"]["demo_sums"][0]
    assert re.fullmatch(r"\d\d \+ \d =", first["arguments"][0][0])  # the plain prompt, zero-shot


# ---------------------------------------------------------------- calibration


def test_calibration_is_seeded_and_disjoint_from_eval(demo_tasks):
    task = demo_tasks["demo_capitals"]
    first, again, other = (calibration_set(task, 20, seed) for seed in (0, 0, 1))
    assert (first.texts, first.doc_ids) == (again.texts, again.doc_ids)
    assert first.doc_ids != other.doc_ids
    assert first.split == "train" and not first.held_out_of_eval
    assert len(set(first.texts)) == 20
    eval_texts = {format_document(task, doc, i) for i, doc in enumerate(task.eval_docs)}
    assert not set(first.texts) & eval_texts
    train_countries = {doc["country"] for doc in task.training_docs()}
    assert not train_countries & {doc["country"] for doc in task.eval_docs}
    assert {re.sub(r"^(The capital of|The capital city of|In) (.*?),? (is|the capital is) .*$", r"\2", t)
            for t in first.texts} <= train_countries


def test_include_target_adds_exactly_the_gold_continuation(demo_tasks):
    task = demo_tasks["demo_sums"]
    with_target, without = calibration_set(task, 10, 3), calibration_set(task, 10, 3, include_target=False)
    assert with_target.doc_ids == without.doc_ids
    for full, context, doc_id in zip(with_target.texts, without.texts, with_target.doc_ids):
        doc = task.training_docs()[doc_id]
        assert context == f"{doc['a']} + {doc['b']} ="
        assert full == context + " " + str(doc["a"] + doc["b"])


def test_generic_calibration_pools_tasks_evenly(demo_tasks):
    pooled = generic_calibration_set(demo_tasks, 10, 0)
    assert len(pooled.texts) == 10 and pooled.task == "generic" and pooled.split == "train"
    assert sorted(len(part.texts) for part in pooled.parts.values()) == [2, 2, 3, 3]
    assert sorted(pooled.texts) == sorted(t for part in pooled.parts.values() for t in part.texts)
    assert pooled.texts != [t for part in pooled.parts.values() for t in part.texts]  # shuffled
    assert generic_calibration_set(demo_tasks, 10, 0).texts == pooled.texts


def test_n_samples_beyond_the_split_is_refused(demo_tasks):
    n_train = len(demo_tasks["demo_sums"].training_docs())
    message = (f"calib.n_samples: 100 is more than task 'demo_sums' can supply from its 'train' split "
               f"({n_train} documents); allowed: 1..{n_train}")
    with pytest.raises(DietError, match=re.escape(message)):
        calibration_set(demo_tasks["demo_sums"], 100, 0)
    with pytest.raises(DietError, match=r"^calib\.n_samples: 1000 .*allowed: 1\.\.\d+$"):
        generic_calibration_set(demo_tasks, 1000, 0)


# ---------------------------------------------------------------- paper7 through the builtin definitions

EXPECTED_GOLD_TEXT = {  # each builtin YAML's prompt, written out by hand, plus the gold continuation
    "boolq": lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer: {['no', 'yes'][d['label']]}",
    "rte": lambda d: f"{d['sentence1']}\nQuestion: {d['sentence2']} True or False?\nAnswer: "
                     f"{['True', 'False'][d['label']]}",
    "hellaswag": lambda d: f"{d['activity_label']}: {d['ctx_a']} {d['ctx_b'].capitalize()} "
                           f"{d['endings'][int(d['label'])]}",
    "winogrande": lambda d: d["sentence"].replace("_", d["option" + d["answer"]]),
    "arc_easy": lambda d: f"Question: {d['question']}\nAnswer: "
                          f"{d['choices']['text'][d['choices']['label'].index(d['answerKey'])]}",
    "openbookqa": lambda d: f"{d['question_stem']} "
                            f"{d['choices']['text'][d['choices']['label'].index(d['answerKey'])]}",
}
EXPECTED_GOLD_TEXT["arc_challenge"] = EXPECTED_GOLD_TEXT["arc_easy"]


@pytest.mark.parametrize("name", PAPER7)
def test_paper7_fixtures_format_through_the_builtin_template(paper7_tasks, name):
    task = paper7_tasks[name]
    evaluated = "test" if name in ("arc_easy", "arc_challenge", "openbookqa") else "validation"
    assert len(task.eval_docs) == len(read_jsonl(PAPER7_FIXTURES / name / f"{evaluated}.jsonl"))
    calib = calibration_set(task, 3, 0)
    assert calib.split == "train" and not calib.held_out_of_eval
    train_docs = read_jsonl(PAPER7_FIXTURES / name / "train.jsonl")
    assert calib.texts == [EXPECTED_GOLD_TEXT[name](train_docs[i]) for i in calib.doc_ids]

    # the same formatting agrees with the requests lm-eval itself builds for evaluation
    task.build_all_requests(limit=None)
    by_doc = {}
    for instance in task.instances:
        by_doc.setdefault(instance.doc_id, []).append(instance)
    for doc_id, doc in enumerate(task.eval_docs):
        requests = sorted(by_doc[doc_id], key=lambda r: r.idx)
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        context, continuation = requests[int(gold)].args
        assert format_document(task, doc, doc_id) == context + continuation
        assert format_document(task, doc, doc_id, include_target=False) == context
        assert context + continuation == EXPECTED_GOLD_TEXT[name](read_jsonl(
            PAPER7_FIXTURES / name / f"{evaluated}.jsonl")[doc_id])


def test_paper7_tasks_evaluate_end_to_end_on_fixtures(paper7_tasks, tiny_lm):
    chosen = {name: paper7_tasks[name] for name in ("boolq", "winogrande", "arc_challenge")}
    output = evaluate(tiny_lm, chosen)
    for name in chosen:
        assert 0.0 <= output["results"][name]["acc,none"] <= 1.0
        assert len(output["samples"][name]) == len(chosen[name].eval_docs)
    assert 0.0 <= output["results"]["arc_challenge"]["acc_norm,none"] <= 1.0


def _copy_splits(local_dir: Path, task: str, splits: list[str]) -> None:
    (local_dir / task).mkdir(parents=True)
    for split in splits:
        shutil.copy(PAPER7_FIXTURES / task / f"{split}.jsonl", local_dir / task / f"{split}.jsonl")


def test_calibration_without_train_split_uses_a_non_evaluated_split(tmp_path):
    _copy_splits(tmp_path / "local", "arc_easy", ["validation", "test"])
    task = load_tasks(["arc_easy"], local_dir=str(tmp_path / "local"), data_dir=str(tmp_path / "data"))["arc_easy"]
    calib = calibration_set(task, 2, 0)
    assert calib.split == "validation" and not calib.held_out_of_eval


def test_held_out_calibration_docs_are_not_evaluated(tmp_path, tiny_lm, caplog):
    _copy_splits(tmp_path / "local", "boolq", ["validation"])
    tasks = load_tasks(["boolq"], local_dir=str(tmp_path / "local"), data_dir=str(tmp_path / "data"))
    all_questions = [doc["question"] for doc in tasks["boolq"].eval_docs]
    n_docs = len(all_questions)
    with pytest.raises(DietError, match=rf"allowed: 1\.\.{n_docs - 1}$"):
        calibration_set(tasks["boolq"], n_docs, 0)
    with caplog.at_level(logging.WARNING, logger="diet.tasks.calibration"):
        calib = calibration_set(tasks["boolq"], 2, 0)
    assert calib.held_out_of_eval and calib.split == "validation"
    assert "excluded from evaluation" in caplog.text
    calibrated = {all_questions[i] for i in calib.doc_ids}
    assert all(any(q in text for q in calibrated) for text in calib.texts)

    # the task object itself drops the documents (works with `limit` too); calibration ids stay stable
    assert exclude_calibration_docs(tasks, calib) == {"boolq": n_docs - 2}
    output = evaluate(tiny_lm, tasks)
    evaluated = [s["doc"]["question"] for s in output["samples"]["boolq"]]
    assert sorted(evaluated) == sorted(set(all_questions) - calibrated)
    assert calibration_set(tasks["boolq"], 2, 0).texts == calib.texts


# ---------------------------------------------------------------- user errors


def test_unknown_task_names_get_suggestions(tmp_path):
    with pytest.raises(DietError, match=r"^tasks\.names: unknown lm-eval task 'boolqq'; did you mean 'boolq'.*"
                                        r"demo tasks: demo_capitals"):
        load_tasks(["demo_sums", "boolqq"], data_dir=str(tmp_path))
    with pytest.raises(DietError, match=r"did you mean 'demo_capitals'"):
        load_tasks(["demo_capital"], data_dir=str(tmp_path))
    with pytest.raises(DietError, match=r"^tasks\.names: 'mmlu' is an lm-eval group"):
        load_tasks(["mmlu"], data_dir=str(tmp_path))
    # a task that is only evaluated (eval.tasks) is named as such
    with pytest.raises(DietError, match=r"^eval\.tasks: unknown lm-eval task 'boolqq'; did you mean 'boolq'"):
        load_tasks(["demo_sums", "boolqq"], data_dir=str(tmp_path), keys={"boolqq": "eval.tasks"})


def test_missing_local_data_names_the_path(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    with pytest.raises(DietError, match=re.escape(f"data.local_dir: {local / 'boolq'} does not exist")):
        load_tasks(["boolq"], local_dir=str(local), data_dir=str(tmp_path / "data"))
    _copy_splits(local, "arc_easy", ["train", "validation"])
    with pytest.raises(DietError, match=re.escape(f"data.local_dir: {local / 'arc_easy' / 'test.jsonl'} does not")):
        load_tasks(["arc_easy"], local_dir=str(local), data_dir=str(tmp_path / "data"))


def test_builtin_task_without_cached_data_fails_fast_offline(tmp_path):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("needs HF_DATASETS_OFFLINE=1 set before datasets is imported")
    with pytest.raises(DietError):  # builds lm-eval's task index, so the timing below is the dataset load alone
        load_tasks(["piqaa"], data_dir=str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(DietError, match=r"^tasks\.names: lm-eval task 'piqa' needs dataset .*unreachable.*"
                                        r"data\.local_dir"):
        load_tasks(["piqa"], data_dir=str(tmp_path))
    assert time.perf_counter() - started < 5
