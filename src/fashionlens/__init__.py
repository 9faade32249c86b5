"""fashionlens: fashion image recognition (styles, category, attributes, landmarks)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fashionlens.inference import Predictor

__version__ = "0.1.0"


def load(model_dir: "str | os.PathLike[str]", runtime: str = "torch", device: str = "cpu") -> "Predictor":
    """Load a model directory for prediction (see :func:`fashionlens.inference.load`)."""
    from fashionlens.inference import load as _load  # here: `import fashionlens` stays light (no torch)

    return _load(model_dir, runtime=runtime, device=device)
