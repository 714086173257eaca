#!/usr/bin/env bash
# Issue 13's three arms at one wall-time budget, two seeds each, on the audit-fixed training data:
#   scratch  the student from scratch for the whole budget (facekd distill --teacher none)
#   distil   facekd pipeline: teacher, offline-distilled student, pruned to 80% and fine-tuned
#   wide     facekd pipeline --prune-from wide: teacher, resfpn_wide distilled, pruned under the limit
#   kd       the student offline-distilled from $TEACHER, a teacher trained earlier, for the whole
#            budget (the teacher's training is paid outside it; its soft targets are not, unless
#            $SOFT_TARGET_CACHE names a cache that already holds them)
#   kd_image   kd with dice_scope=image      (issue 13's per-image levers, measured against kd
#   kd_repeat  kd with repeat_threshold=$REPEAT_THRESHOLD (default 0.3)   under the same cache)
# Two runs share the machine at a time, one thread each; each arm runs in two different slots
# so that no arm has the machine to itself or only its quiet hours.
#   usage: benchmarks/equal_budget.sh DATA OUT MINUTES [ARM SEED ARM SEED ...]
# DATA: a fixed copy (`facekd audit --fix`). The ARM SEED pairs, two per slot, default to the
# three arms above, each in two slots.
set -euo pipefail
data=$1 out=$2 minutes=$3
py=${PYTHON:-python}
mkdir -p "$out"

matmul() { (cd "$(dirname "$0")" && $py -c "from bench_infer import matmul_gflops; print('matmul GFLOP/s', [round(matmul_gflops(), 1) for _ in range(3)])") >> "$out/matmul.log"; }

arm() {  # arm NAME SEED
  local name=$1 seed=$2 dir="$out/$1_s$2"
  local common=(--preset cpu --data "$data" --budget "$minutes" --out "$dir" --set threads=1 --set seed="$seed")
  case $name in
    scratch) $py -m facekd.app distill --teacher none "${common[@]}" ;;
    kd|kd_image|kd_repeat)
      local lever=()
      [ "$name" = kd_image ] && lever=(--set dice_scope=image)
      [ "$name" = kd_repeat ] && lever=(--set repeat_threshold="${REPEAT_THRESHOLD:-0.3}")
      $py -m facekd.app distill --teacher "$TEACHER" "${common[@]}" --set distill_mode=offline \
        --set soft_target_cache="${SOFT_TARGET_CACHE:-}" "${lever[@]}" ;;
    distil|wide) $py -m facekd.app pipeline --no-audit --prune-from "$([ "$name" = wide ] && echo wide || echo student)" \
                   "${common[@]}" --set distill_mode=offline --set soft_target_cache="$out/targets_$1_s$2" ;;
  esac > "$dir.log" 2>&1
}

slot() {  # two arms side by side
  echo "$(date -u +%FT%TZ) slot: $1_s$2 + $3_s$4" >> "$out/matmul.log"
  matmul
  arm "$1" "$2" & arm "$3" "$4" & wait
}

shift 3
(($#)) || set -- scratch 0 distil 0  wide 0 scratch 1  distil 1 wide 1
while (($# >= 4)); do
  slot "$1" "$2" "$3" "$4"
  shift 4
done
matmul
echo "$(date -u +%FT%TZ) done" >> "$out/matmul.log"
