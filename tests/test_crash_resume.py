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


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 10}, folder / "best.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1, "global_step": 20}, folder / "recent-epoch=001.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 2, "global_step": 30}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="last.ckpt: truncated or corrupt checkpoint"):
        chosen = resolve_resume_checkpoint(tmp_path)
    assert chosen == folder / "recent-epoch=001.ckpt"
    assert "falling back" in capsys.readouterr().out


def test_no_checkpoint_means_no_resume(tmp_path: Path):
    assert resolve_resume_checkpoint(tmp_path) is None


def test_nan_loss_stops_with_a_message_naming_step_and_batch():
    from fashionlens.models.mlgcn import build_style_model

    model = build_style_model({"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "none",
                               "pool": "max", "head": "linear", "num_labels": 3})
    task = StyleTask(model, ["a", "b", "c"], optimizer="sgd", lr=0.1, lrp=0.1, weight_decay=0.0, freeze_epochs=0,
                     epochs=1)
    task.log = lambda *args, **kwargs: None
    images = torch.full((2, 3, 32, 32), float("nan"))
    batch = {"image": images, "labels": torch.zeros(2, 3), "label_mask": torch.ones(2, 3),
             "path": ["photo_a.jpg", "photo_b.jpg"], "index": torch.tensor([0, 1])}
    with pytest.raises(FloatingPointError, match=r"step 0, batch 7 \(first image: photo_a.jpg\)"):
        task.training_step(batch, 7)


def test_cli_reports_a_nan_loss_cleanly(monkeypatch, capsys):
    from fashionlens import cli, training

    def explode(options):
        raise FloatingPointError("non-finite loss nan at epoch 1, step 12, batch 3 (first image: x.jpg)")

    monkeypatch.setattr(training, "train_style", explode)
    code = cli.main(["train", "style", "--data", str(MINI), "--format", "clothing-attributes", "--out", "/tmp/x"])
    assert code == 3
    assert "step 12, batch 3" in capsys.readouterr().err
