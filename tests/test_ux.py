"""What a new user meets outside a run: lm-eval's own CLI on the demo tasks, and what the docs promise."""
import os
import subprocess
import sys
from pathlib import Path

from diet.tasks import demo

REPO = Path(__file__).resolve().parents[1]


def test_write_configs_gives_lm_eval_the_demo_tasks(tmp_path, monkeypatch):
    """`python -m diet.tasks --write-configs DIR` writes task configs that lm-eval's TaskManager(include_path=DIR)
    builds into the very tasks diet evaluates (same documents, prompts, targets, metrics), from any folder."""
    from lm_eval.tasks import TaskManager

    out = tmp_path / "demo tasks"  # a space: the printed command must still be one argument
    proc = subprocess.run([sys.executable, "-m", "diet.tasks", "--write-configs", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr  # runpy's double-import warning of `-m diet.tasks.demo`
    assert f"--include_path '{out}' --tasks diet_demo" in proc.stdout
    assert sorted(p.name for p in out.glob("*.yaml")) == sorted(f"{t}.yaml" for t in demo.DEMO_TASKS)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # lm_eval starts wherever the user is: the data paths must not be relative
    manager = TaskManager(include_path=str(out), include_defaults=False)
    loaded = manager.load(["diet_demo"])["tasks"]  # the tag: all four
    assert sorted(loaded) == sorted(demo.DEMO_TASKS)
    for name in demo.DEMO_TASKS:
        task, expected = loaded[name], demo.demo_documents(name)["validation"]
        docs = list(task.validation_docs())
        assert [task.doc_to_text(d) for d in docs] == [d["prompt"] for d in expected]
        assert [task.doc_to_choice(d) for d in docs] == [d["choices"] for d in expected]
        assert [task.doc_to_target(d) for d in docs] == [d["label"] for d in expected]
        assert task.config.target_delimiter == " " and task.OUTPUT_TYPE == "multiple_choice"
        assert [m["metric"] for m in task.config.metric_list] == ["acc", "acc_norm"]
        assert len(list(task.training_docs())) == len(demo.demo_documents(name)["train"])
