#!/usr/bin/env bash
# Every GPU figure of issues 5 and 13 in one call, on one CUDA GPU (H100/H200):
#   bench/throughput.py  pipeline efficiency, images/s per model, K = 1, 2, 4 trainings packed on the GPU
#   bench/study.py       trials/hour, train images/s and each trial's device and peak GPU memory with
#                        1, 2, 4 workers packed on the GPU (issue 13's placement and packing),
#                        10-epoch trials, with and without torch.compile, small_cnn and efficientnet_b0
# Usage: bash bench/gpu.sh [OUT_DIR]     (JSON results and the log land in OUT_DIR, default bench/results)
# Runs from the repo root without installing the package (PYTHONPATH). Where optuna and grad-cam
# are missing (the lent GPU machines lack optuna, sqlalchemy, alembic, Mako, colorlog, greenlet,
# grad-cam, ttach), put their wheels in .whl/ and they are installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: torch sees no CUDA GPU; the CPU figures come from bench/throughput.py and bench/study.py run directly')"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 bench/throughput.py --images 1024 --batch 64 --steps 20 --rounds 3 --packed 1 2 4 \
    --window 15 --out "$out/throughput-gpu.json"
  for model in small_cnn efficientnet_b0; do
    python3 bench/study.py --model "$model" --size 256 --per-class 100 --epochs 10 --trials 8 \
      --per-gpu 1 2 4 --compile --out "$out/study-gpu-$model.json"
  done
} 2>&1 | tee "$out/gpu.log"
