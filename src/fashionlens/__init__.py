"""fashionlens: fashion image recognition (styles, category, attributes, landmarks)."""

__version__ = "0.1.0"


def load(model_dir, runtime: str = "torch", device: str = "cpu"):
    """Load a model directory for prediction (see :func:`fashionlens.inference.load`)."""
    from fashionlens.inference import load as _load

    return _load(model_dir, runtime=runtime, device=device)
