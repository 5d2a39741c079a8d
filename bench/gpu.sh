#!/usr/bin/env bash
# The GPU figures of the throughput and packing benches in one call sized for about 3 minutes (not yet timed) on one CUDA
# GPU (H100/H200), sized for a 15-minute device lease that also runs bench/gpu_cars.sh:
#   bench/throughput.py  pipeline efficiency, images/s per model, K = 1 and 4 trainings packed
#   bench/study.py       trials/hour, train images/s and each trial's device and peak GPU memory
#                        with 1 and 4 workers packed on the GPU, small_cnn, 5-epoch trials at 224 px
# Each step has a time cap (STEP_S, default 90 s), so one slow step cannot eat the lease.
# Not in this call (each needs its own): torch.compile rows and efficientnet_b0 study rows
# (`bench/study.py --model efficientnet_b0 --compile …`).
# Usage: bash bench/gpu.sh [OUT_DIR]     (JSON results and the log land in OUT_DIR, default bench/results)
# Runs from the repo root without installing the package (PYTHONPATH). Where optuna and grad-cam
# are missing (the lent GPU machines lack optuna, sqlalchemy, alembic, Mako, colorlog, grad-cam,
# ttach, and Typer 0.29's pydantic), put their wheels in .whl/ and they are installed to /tmp/site
# first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: torch sees no CUDA GPU; the CPU figures come from bench/throughput.py and bench/study.py run directly')"
if [ -d .whl ] && ! python3 -c "import optuna, pytorch_grad_cam" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cap=${STEP_S:-90}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout -k 15 "$cap" python3 bench/throughput.py --images 1024 --batch 64 --steps 20 --rounds 3 \
    --packed 1 4 --window 5 --out "$out/throughput-gpu.json" || echo "throughput.py: exit $?"
  timeout -k 15 "$cap" python3 bench/study.py --model small_cnn --size 224 --per-class 60 --epochs 5 \
    --trials 4 --per-gpu 1 4 --out "$out/study-gpu-small_cnn.json" || echo "study.py: exit $?"
} 2>&1 | tee "$out/gpu.log"
