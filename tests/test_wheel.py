"""The built wheel, installed into a fresh virtual environment outside the clone, knows the released
models by name: `fashionlens models` lists them and `fashionlens predict NAME photo.jpg` works, with
no clone on the path and no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fashionlens import hub, modeldir

REPO = Path(__file__).resolve().parents[1]
# Held out by garment-attributes-lite0 and garment-category-mnv2, whose answers the test checks.
PHOTO = REPO / "examples" / "clothing-attributes-mini" / "images" / "000016.jpg"
NAMES = ("garment-attributes-lite0", "garment-category-mnv2", "garment-tagger-lite0")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` of a copy of the working tree (the clone stays free of build/ and egg-info), offline:
    no build isolation, the setuptools of this environment."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "model.onnx", ".*")
    shutil.copytree(REPO / "src", source / "src", symlinks=True, ignore=junk)  # keeps released -> ../../models
    shutil.copytree(REPO / "models", source / "models", ignore=junk)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist")], cwd=source)
    (wheel,) = (tmp_path / "dist").glob("fashionlens-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed, seeing this environment's dependencies
    (torch, timm, ...) through a plain path in a .pth file, so nothing is downloaded: a plain path, not
    this environment's own .pth files, so the clone's editable install is not on its path."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=tmp_path)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path).strip())
    (site / "zz_fashionlens_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.mark.slow
def test_the_installed_wheel_lists_and_predicts_released_models_by_name(tmp_path: Path):
    wheel = _build_wheel(tmp_path)
    size = wheel.stat().st_size
    assert 35e6 < size < 60e6, f"the wheel is {size / 1e6:.1f} MB"  # README: about 44 MB, the models inside
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("fashionlens/released/")}
    for folder in hub.package_models_dir().iterdir():
        manifest = json.loads((folder / modeldir.MANIFEST_FILE).read_text())["files"]
        for name in [*manifest, modeldir.MANIFEST_FILE, "README.md"]:
            assert f"fashionlens/released/{folder.name}/{name}" in shipped
    assert not any(name.endswith(".onnx") for name in shipped)

    venv = _fresh_venv(tmp_path, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy2(PHOTO, outside / "photo.jpg")
    env = {"PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(tmp_path / "home"),
           "FASHIONLENS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8"}
    fashionlens = str(venv / "bin" / "fashionlens")

    code = ("import fashionlens, fashionlens.hub as h; "
            "print(fashionlens.__file__); print(h.resolve_model_dir('garment-attributes-lite0'))")
    where = _run([str(venv / "bin" / "python"), "-c", code], cwd=outside, env=env).split()
    site = str(venv / "lib")
    assert where[0].startswith(site) and where[1].startswith(site), where  # the wheel's, not the clone's

    listing = _run([fashionlens, "models"], cwd=outside, env=env)
    for name in NAMES:
        row = next(line for line in listing.splitlines() if line.startswith(name + " "))
        assert "package" in row and "MB" in row and " images)" in row

    results = {name: json.loads(_run([fashionlens, "predict", name, "photo.jpg", "--json"], cwd=outside,
                                     env=env).splitlines()[-1]) for name in NAMES}
    assert [results[name]["task"] for name in NAMES] == ["style", "clothing", "style"]
    # The photo (held out in training) is a black, solid, long-sleeved top (labels.csv).
    assert results[NAMES[0]]["labels"][0]["name"] == "sleeve_long"
    assert "sleeve_long" in [a["name"] for a in results[NAMES[1]]["attributes_by_type"]["part"][:3]]
