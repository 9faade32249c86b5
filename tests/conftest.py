"""Shared test fixtures: where the real data lives."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One torch thread per test process (and the CLI processes tests start): the tests' models are tiny, so
# a second thread mostly waits on the first, and on a shared CPU two threads wasted most of their time
# waiting for each other (the fast suite took 4 min 17 s beside a training job, 67 s with one thread).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The caches (annotations, checked photos, hub models, ONNX exports) in a folder of this test process,
# never the user's ~/.cache: what one run leaves there must not decide what the next one checks.
os.environ.setdefault("FASHIONLENS_CACHE", tempfile.mkdtemp(prefix="fashionlens-tests-"))
atexit.register(shutil.rmtree, os.environ["FASHIONLENS_CACHE"], ignore_errors=True)

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real images and annotations, read-only)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the repository)")
    return SHARED_DATA
