#!/usr/bin/env bash
# Set everything up, then run the demo: train and compare style models on real photos, offline, on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fashionlens demo "$@"
