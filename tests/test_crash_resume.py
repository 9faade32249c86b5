"""Training survives a crash: SIGKILL mid-epoch, resume, finish; truncated checkpoints; NaN losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fashionlens.training import StyleTask, resolve_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fashionlens.cli", "train", "style", "--data", str(MINI),
            "--format", "clothing-attributes", "--out", str(out), "--backbone", "tf_efficientnet_lite0",
            "--image-size", "64", "--epochs", "4", "--batch-size", "4", "--limit", "120", "--head", "linear",
            "--freeze-epochs", "0", "--workers", "0", "--lr", "0.01", *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_the_planned_epochs(tmp_path: Path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_command(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint written after the first epoch"
    time.sleep(0.5)  # inside the second epoch (24 steps of 4 images), whatever the machine's speed
    assert process.poll() is None, "training finished before it could be killed; make the epochs longer"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    epoch_saved = torch.load(resolve_resume_checkpoint(out), map_location="cpu", weights_only=False)["epoch"]
    assert epoch_saved in (0, 1, 2), "killed after the last epoch: nothing left to resume"

    resumed = subprocess.run(_command(out, "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    # Every planned epoch is there exactly once: the finished ones came back from the checkpoint.
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert (out / "model" / "model.safetensors").is_file()
    # 96 training photos in batches of 4: 24 steps an epoch, 4 epochs, no step lost or repeated.
    assert torch.load(resolve_resume_checkpoint(out), map_location="cpu", weights_only=False)["global_step"] == 96


def _write_checkpoints(folder: Path) -> None:
    from fashionlens.training.run import RunCheckpointIO

    io = RunCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 10}, folder / "best.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1, "global_step": 20},
                       folder / "recent-epoch=001.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "epoch": 2, "global_step": 30}, folder / "last.ckpt")


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path, capsys):
    folder = tmp_path / "checkpoints"
    _write_checkpoints(folder)
    assert resolve_resume_checkpoint(tmp_path) == folder / "last.ckpt"
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="last.ckpt: truncated or changed since it was written"):
        chosen = resolve_resume_checkpoint(tmp_path)
    assert chosen == folder / "recent-epoch=001.ckpt"
    assert "falling back" in capsys.readouterr().out


class _Payload:
    """Unpickling this runs code: it writes a file (the probe of issue 13)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def test_resume_never_unpickles_a_checkpoint_this_run_did_not_write(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    _write_checkpoints(folder)
    marker = tmp_path / "pwned.txt"
    # A stray file with a higher step than any real one, and a listed file replaced by a payload.
    torch.save({"state_dict": {}, "epoch": 9, "global_step": 999, "x": _Payload(marker)}, folder / "zz-evil.ckpt")
    torch.save({"state_dict": {}, "epoch": 9, "global_step": 998, "x": _Payload(marker)}, folder / "last.ckpt")
    with pytest.warns(UserWarning) as caught:
        chosen = resolve_resume_checkpoint(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "zz-evil.ckpt: not written by this run" in messages
    assert "last.ckpt: truncated or changed since it was written" in messages
    assert chosen == folder / "recent-epoch=001.ckpt"
    assert not marker.exists()


def test_checkpoint_write_on_a_full_disk_names_the_folder_and_keeps_the_old_file(tmp_path: Path, monkeypatch):
    import errno

    from fashionlens.training.run import CheckpointError, RunCheckpointIO

    folder = tmp_path / "checkpoints"
    _write_checkpoints(folder)
    before = (folder / "last.ckpt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"checkpoints: no space left on the device to write a \d+ MiB "
                                              r"checkpoint \(last.ckpt\); the previous checkpoints are intact"):
        RunCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 3, "global_step": 40},
                                          folder / "last.ckpt")
    monkeypatch.undo()
    assert (folder / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt", "manifest.json",
                                                         "recent-epoch=001.ckpt"]


def test_checkpoints_on_a_small_tmpfs_fill_it_without_losing_the_last_good_one(tmp_path: Path):
    """A real full disk: a 3 MiB tmpfs holds one 2 MiB checkpoint but not a second copy."""
    from fashionlens.training.run import CheckpointError, RunCheckpointIO

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:100]})")
    try:
        folder = mount / "checkpoints"
        io = RunCheckpointIO()
        io.save_checkpoint({"state_dict": {"w": torch.ones(512 * 1024)}, "epoch": 0, "global_step": 5},
                           folder / "last.ckpt")
        before = (folder / "last.ckpt").read_bytes()
        with pytest.raises(CheckpointError, match="no space left on the device"):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(512 * 1024)}, "epoch": 1, "global_step": 10},
                               folder / "last.ckpt")
        assert (folder / "last.ckpt").read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "manifest.json"]  # no orphan temp file
        assert resolve_resume_checkpoint(mount) == folder / "last.ckpt"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_no_checkpoint_means_no_resume(tmp_path: Path):
    assert resolve_resume_checkpoint(tmp_path) is None


def test_nan_loss_stops_with_a_message_naming_step_and_batch():
    from fashionlens.models.mlgcn import build_style_model

    model = build_style_model({"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "none",
                               "pool": "max", "head": "linear", "num_labels": 3})
    task = StyleTask(model, ["a", "b", "c"])
    images = torch.full((2, 3, 32, 32), float("nan"))
    batch = {"image": images, "labels": torch.zeros(2, 3), "label_mask": torch.ones(2, 3),
             "path": ["photo_a.jpg", "photo_b.jpg"], "index": torch.tensor([0, 1])}
    with pytest.raises(FloatingPointError, match=r"step 0, batch 7 \(first image: photo_a.jpg\)"):
        task.training_step(batch, 7)


def test_cli_reports_a_nan_loss_cleanly(monkeypatch, capsys):
    from fashionlens import cli, training

    def explode(config):
        raise FloatingPointError("non-finite loss nan at epoch 1, step 12, batch 3 (first image: x.jpg)")

    monkeypatch.setattr(training, "train_style", explode)
    code = cli.main(["train", "style", "--data", str(MINI), "--format", "clothing-attributes", "--out", "/tmp/x"])
    assert code == 3
    assert "step 12, batch 3" in capsys.readouterr().err
