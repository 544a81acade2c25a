"""Generative lm-eval tasks and metric names: every metric lm-eval reports is kept under its own name, and the one a
task contributes to average.paper comes from evaluate.paper_metric; gsm8k runs end to end on local fixture data."""
import json
from pathlib import Path

import pytest

from diet import evaluate

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "paper7"


def test_every_metric_is_kept_under_lm_evals_name():
    row = {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
           "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"}
    assert evaluate.task_metrics(row) == {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                                          "exact_match,flexible-extract": 0.5,
                                          "exact_match_stderr,flexible-extract": None}
    assert evaluate.task_metrics({"acc,none": 1, "acc_stderr,none": 0.5, "acc_norm,none": 0.0}) == {
        "acc": 1.0, "acc_stderr": 0.5, "acc_norm": 0.0}


@pytest.mark.parametrize("task,row,metric", [
    ("hellaswag", {"acc": 0.3, "acc_norm": 0.4}, "acc_norm"), ("boolq", {"acc": 0.6}, "acc"),
    ("gsm8k", {"exact_match,flexible-extract": 0.9, "exact_match,strict-match": 0.1}, "exact_match,strict-match"),
    ("ifeval", {"prompt_level_strict_acc": 0.2, "inst_level_strict_acc": 0.3}, "prompt_level_strict_acc"),
    ("demo_sums", {"acc": 0.5, "acc_norm": 0.6}, "acc"),  # not listed: acc when reported
    ("my_gen", {"bleu_stderr": 0.1, "bleu": 12.0, "rouge1": 0.3}, "bleu"),  # else lm-eval's first metric
])
def test_paper_metric_is_the_metric_a_task_contributes(task, row, metric):
    assert evaluate.paper_metric(task, row) == metric
    assert evaluate.paper_value(task, row) == row[metric]


def test_averages_use_each_tasks_paper_metric():
    metrics = {"boolq": {"acc": 0.6, "acc_stderr": 0.1}, "hellaswag": {"acc": 0.3, "acc_norm": 0.4},
               "gsm8k": {"exact_match,flexible-extract": 0.9, "exact_match,strict-match": 0.1}}
    assert evaluate.averages(metrics) == pytest.approx({"acc": 0.45, "acc_norm": 0.4, "paper": (0.6 + 0.4 + 0.1) / 3})


def test_generative_calibration_is_prompt_plus_gold_answer_or_prompt_alone(tmp_path):
    from diet.tasks import load_tasks
    from diet.tasks.calibration import calibration_set

    task = load_tasks(["gsm8k"], local_dir=str(FIXTURES), data_dir=str(tmp_path))["gsm8k"]
    train = [json.loads(line) for line in (FIXTURES / "gsm8k" / "train.jsonl").read_text().splitlines()]
    calib = calibration_set(task, 2, 0)
    assert calib.split == "train"
    for text, doc_id in zip(calib.texts, calib.doc_ids):
        assert text == f"Question: {train[doc_id]['question']}\nAnswer: {train[doc_id]['answer']}"
    assert calibration_set(task, 2, 0, include_target=False).texts == [
        f"Question: {train[i]['question']}\nAnswer:" for i in calib.doc_ids]
    task.config.doc_to_target = 0  # IFEval's placeholder target: no answer text, so the prompt alone
    assert calibration_set(task, 2, 0).texts == calibration_set(task, 2, 0, include_target=False).texts


def test_boolq_and_gsm8k_run_end_to_end_on_local_data(tmp_path, diet_in_process, capsys):
    diet_in_process("model=tiny_gemma2", "tasks.names=[boolq,gsm8k]", f"data.local_dir={FIXTURES}",
                    "calib.n_samples=2", "calib.max_length=32", "eval.max_gen_toks=4", "eval.bootstrap_iters=0",
                    "logger=none", "sparsity=0.25")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    gsm8k = results["metrics"]["gsm8k"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(gsm8k)
    assert results["paper_metric"] == {"boolq": "acc", "gsm8k": "exact_match,strict-match"}
    want = (results["metrics"]["boolq"]["acc"] + gsm8k["exact_match,strict-match"]) / 2
    assert results["average"]["paper"] == pytest.approx(want)
    assert "gsm8k                exact_match,strict-match" in capsys.readouterr().out
