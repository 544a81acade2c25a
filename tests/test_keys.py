"""A key no part of diet reads is one line naming it and the nearest known key, exit 2, before Hydra runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diet import DietError, config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,nearest", [("sparsityy=0.3", "sparsity"), ("calib.n_sample=32", "calib.n_samples"),
                                              ("+sparsityy=0.3", "sparsity"), ("prune.sparsity_per_target.mpl=0.1",
                                                                               "prune.sparsity_per_target.mlp")])
def test_an_unknown_key_names_the_nearest_known_one(override, nearest):
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(DietError) as err:
        config.check_override_keys(["model=tiny_llama", override])
    assert str(err.value) == (f"{key}: unknown key (no part of diet reads it); allowed: a known key (the nearest "
                              f"known key is {nearest})")
    with pytest.raises(DietError, match=f"^{key}: unknown key"):
        config.compose(["model=tiny_llama", override])  # in-process too


def test_known_keys_groups_and_free_form_model_config_pass():
    config.check_override_keys(["model=tiny_llama", "sparsity=0.2", "prune.sparsity_per_target.mlp=0.1",
                                "+model.config.rope_theta=1000", "hydra/launcher=local", "hydra.run.dir=x",
                                "experiment=demo", "prune.target=[mlp,heads]", "scoring=act_var", "-m"])


def test_a_user_config_folder_adds_its_keys(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\nname_or_path: /x\ndtype: float32\nnotes: kept\n")
    config.check_override_keys(["--config-dir", str(tmp_path), "model=mine", "model.notes=other"])
    with pytest.raises(DietError, match="^model.notse: unknown key"):
        config.check_override_keys(["--config-dir", str(tmp_path), "model=mine", "model.notse=other"])


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "diet.run", "model=tiny_llama", "+sparsityy=0.3",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "diet: error: sparsityy: unknown key (no part of diet reads it); allowed: a known key (the nearest known "
        "key is sparsity)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["method.interleave=false"], "method.interleave: unknown key for method=diet; allowed: none (it has no options)"),
    (["method=flap", "method.early_barrier=2"], "method.early_barrier: unknown key for method=flap; allowed: "
                                                "method.bias_compensation, method.metric, method.structure"),
    (["method=sleb,diet", "method.early_barrier=2"],  # a sweep: every method it runs must take the option
     "method.early_barrier: unknown key for method=diet; allowed: none (it has no options)"),
    (["experiment=demo", "method=slicegpt", "method.interleav=false"],
     "method.interleav: unknown key for method=slicegpt; allowed: method.interleave")])
def test_an_option_the_chosen_method_lacks_is_one_line(argv, message):
    """Every method file's options are known keys, so only the chosen method can say which it takes (Hydra would
    answer 'Key is not in struct' over six lines)."""
    with pytest.raises(DietError) as err:
        config.check_option_keys(["model=tiny_llama", *argv])
    assert str(err.value) == message
    with pytest.raises(DietError, match="^method.inter|^method.early"):
        config.compose(["model=tiny_llama", *argv])


def test_options_of_the_chosen_method_pass():
    for argv in (["method=slicegpt", "method.interleave=false"], ["method=sleb", "method.early_barrier=2"],
                 ["method=flap", "+method.metric=IFV"], ["method=flap", "scoring=wifv", "method.structure=UL-UM"],
                 ["experiment=demo", "sparsity=0.3"]):
        config.check_option_keys(["model=tiny_llama", *argv])
    config.compose(["model=tiny_llama", "method=slicegpt", "method.interleave=false"])
