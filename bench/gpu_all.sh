#!/usr/bin/env bash
# Every GPU bench in one device call of at most 10 minutes: bench/gpu.sh (about 3), then
# bench/gpu_cars.sh (the real-photo searches, what is left of the 575 s), then two archives of what
# they wrote. Prepare here first: `python bench/gpu_bundle.py SPLIT WEIGHTS` (makes .gpu/ and
# .whl/), then call the device with carry [".whl", ".gpu"] and the command `bash bench/gpu_all.sh`.
# Usage: bash bench/gpu_all.sh [OUT]      (default $OUT, the device's folder that comes back)
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-$OUT}")
mkdir -p "$out"
export COLUMNS=150 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site
python3 -c "import optuna, timm, typer, pytorch_grad_cam, optuna_dashboard, torch
print('optuna', optuna.__version__, 'timm', timm.__version__, 'torch', torch.__version__,
      torch.cuda.get_device_name())" || exit 4
echo "== ${SECONDS}s gpu.sh"
STEP_S=70 bash bench/gpu.sh "$out/bench" >"$out/gpu-bench.log" 2>&1
echo "gpu.sh exit $?"
echo "== ${SECONDS}s gpu_cars.sh"
TEACHER_S=100 STUDENTS_S=190 REPORTS_S=50 timeout -k 5 $((575 - SECONDS)) \
  bash bench/gpu_cars.sh .gpu/cars-crops .gpu/lite0-fp16.safetensors /tmp/gpu-cars \
  >"$out/gpu-cars.log" 2>&1
echo "gpu_cars.sh exit $?"
echo "== ${SECONDS}s archives"
cd /tmp/gpu-cars || exit 6
tar czf "$out/gpu-cars-text.tgz" --exclude='*.png' crops.db logs reports
find reports -name '*.png' -print0 | tar czf "$out/gpu-cars-png.tgz" --null -T -
ls -la "$out" "$out/bench"
tail -n 4 "$out/gpu-bench.log"
tail -n 25 "$out/gpu-cars.log"
echo "== ${SECONDS}s done"
