#!/usr/bin/env bash
# The real-photo searches on one CUDA GPU, in one call: the teacher search (studies/cars-teacher),
# then at once, on the same GPU, the scratch students with and without that teacher at PX px
# (default 192): the patient single-recipe pair (bench/studies/cars-student-long.toml, EPOCHS
# epochs, VIEWS cached views) and the cars-student search (its 10 trials); then `report` for each
# and one `compare`. Each stage has a time cap, so a slow stage leaves the next its time; `run`
# marks what a cap cut short FAIL and the reports use the trials that finished.
# Usage: bash bench/gpu_cars.sh DATA WEIGHTS OUT
#   DATA     `carbrand-search data split …/stanford-cars-brands-crops-224 DATA --min-per-class 50`
#   WEIGHTS  ImageNet weights for timm's tf_efficientnet_lite0 (safetensors)
#   OUT      the storage, the reports, compare and every log land here
# Knobs (environment): PX, EPOCHS (100), VIEWS (64 cached views; 0 runs the teacher on every
# batch, a fresh view each step), TEACHER_TRIALS (4), STUDENT_TRIALS (10), SEARCH_EPOCHS
# (the study file's 24), TEACHER_EPOCHS (the file's 8), TEACHER_S / STUDENTS_S / REPORTS_S (stage
# caps in seconds: 150, 240, 60).
set -uo pipefail
cd "$(dirname "$0")/.."
data=$(realpath "$1") weights=$(realpath "$2") out=$(realpath -m "$3")
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
px=${PX:-192}
store=(--storage "sqlite:///$out/crops.db" --artifacts "$out/artifacts")
where=("${store[@]}" --cache-dir "$out/cache")
student=(--data "$data" "${where[@]}" --set "data.image_size=$px" --set "data.cache_size=$((px + px / 6))")
student+=(--set "distill.views=${VIEWS:-64}")
plain=(--set 'distill.teacher=""' --set distill.alpha=0 --set distill.temperature=1)
search=(--n-trials "${STUDENT_TRIALS:-10}" --workers 4)
[ -n "${SEARCH_EPOCHS:-}" ] && search+=(--set "train.epochs=$SEARCH_EPOCHS")
teacher=(--n-trials "${TEACHER_TRIALS:-4}" --set "model.weights=$weights")
[ -n "${TEACHER_EPOCHS:-}" ] && teacher+=(--set "train.epochs=$TEACHER_EPOCHS")
cs=(python3 -m carbrand_search)
stamp() { echo "== $(date +%T) $*"; }

python3 -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
stamp "teacher search"
timeout -k 15 "${TEACHER_S:-150}" "${cs[@]}" run cars-teacher --workers 4 --data "$data" "${where[@]}" \
  "${teacher[@]}" 2>&1 | tee "$out/logs/cars-teacher.log"

stamp "students, four studies at once"
long=(bench/studies/cars-student-long.toml "${student[@]}" --set "train.epochs=${EPOCHS:-100}")
timeout -k 15 "${STUDENTS_S:-240}" "${cs[@]}" run "${long[@]}" --name "cars-student-long-$px" \
  --set distill.teacher=cars-teacher >"$out/logs/long-taught.log" 2>&1 &
timeout -k 15 "${STUDENTS_S:-240}" "${cs[@]}" run "${long[@]}" --name "cars-student-long-$px-alone" "${plain[@]}" \
  >"$out/logs/long-plain.log" 2>&1 &
timeout -k 15 "${STUDENTS_S:-240}" "${cs[@]}" run cars-student --name "cars-student-$px" "${student[@]}" \
  "${search[@]}" >"$out/logs/search-taught.log" 2>&1 &
timeout -k 15 "${STUDENTS_S:-240}" "${cs[@]}" run cars-student --name "cars-student-$px-alone" "${student[@]}" \
  "${search[@]}" "${plain[@]}" >"$out/logs/search-plain.log" 2>&1 &
wait
tail -n 3 "$out"/logs/{long,search}-*.log

stamp reports
studies=(cars-teacher "cars-student-long-$px" "cars-student-long-$px-alone" "cars-student-$px" \
  "cars-student-$px-alone")
for study in "${studies[@]}"; do
  timeout -k 15 "${REPORTS_S:-60}" "${cs[@]}" report "$study" --out "$out/reports/$study" "${where[@]}" >"$out/logs/report-$study.log" 2>&1 &
done
wait
timeout -k 15 "${REPORTS_S:-60}" "${cs[@]}" compare "${studies[@]}" --out "$out/reports/compare" "${where[@]}" 2>&1 | tee "$out/logs/compare.log"
"${cs[@]}" status "cars-student-$px" "${store[@]}" >"$out/logs/status-search-taught.log" 2>&1
"${cs[@]}" status "cars-student-$px-alone" "${store[@]}" >"$out/logs/status-search-plain.log" 2>&1
stamp done
