"""fashionlens: fashion image recognition (styles, category, attributes, landmarks)."""

__version__ = "0.1.0"
