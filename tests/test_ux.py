"""What a new user meets outside a run: lm-eval's own CLI on the demo tasks, and what the docs promise."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_readme_warns_of_the_folder_where_a_clone_shadows_the_editable_install(tmp_path):
    """Started from the folder that holds a clone named diet/, Python imports that folder as a namespace package
    `diet` before the editable install's finder is asked; the README must say so, quoting the error it gives."""
    (tmp_path / "diet").mkdir()  # the clone, as far as the import system sees it: a folder without __init__.py
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "from diet import DietError"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    readme = (REPO / "README.md").read_text()
    start = readme.index("Start diet")
    said = " ".join(readme[start:readme.index("\n\n", start)].split())
    assert "any folder but the one holding it" in said and "shadows the editable install" in said
    if proc.returncode == 0:
        pytest.skip("diet is not an editable install here: a folder named diet/ does not shadow it")
    message = proc.stderr.strip().splitlines()[-1]
    assert message == "ImportError: cannot import name 'DietError' from 'diet' (unknown location)"
    assert f"`{message}`" in said


def test_results_heads_prose_quotes_its_table():
    """The sentence on demo_sums under head masks states the table's numbers: the range of the row means and
    DIET's seed spread, not a blanket 'falls to chance' that single seeds contradict."""
    text = (REPO / "docs" / "results.md").read_text()
    section = text[text.index("### Attention heads on the demo"):]
    section = section[:section.find("\n## ")] if "\n## " in section else section  # up to the next section
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| gemma3_270m")]
    header = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("| model")).strip(
        "|").split("|")]
    sums = [row[header.index("demo_sums (acc)")].strip("*") for row in rows]
    means = [float(cell.split(" ± ")[0]) for cell in sums]
    prose = " ".join(section[section.index("Dense is 94.0"):].split())
    assert f"the means are {min(means):.1f} to {max(means):.1f}" in prose
    diet_heads = next(s for row, s in zip(rows, sums) if row[1] == "diet" and row[2] == "heads")
    assert f"({diet_heads})" in prose and "falls to chance under every head mask" not in prose


def test_docs_say_the_default_cache_is_relative_to_where_a_run_starts():
    """cache_dir's default is a relative path, so a run from a new folder converts the demo model again: the
    quickstart and the usage guide say so where the demo and the install are introduced."""
    from omegaconf import OmegaConf

    assert not Path(OmegaConf.load(REPO / "conf" / "config.yaml").cache_dir).is_absolute()
    readme = " ".join((REPO / "README.md").read_text().split("## Quickstart")[1].split("## Documentation")[0].split())
    assert "relative to the folder a run starts from" in readme and "converts it again" in readme
    assert "`cache_dir=/absolute/path`" in readme
    usage = " ".join((REPO / "docs" / "usage.md").read_text().split("## Installing")[1].split("## Running")[0].split())
    assert "converts the demo model and profiles again" in usage and "`cache_dir=/absolute/path`" in usage
