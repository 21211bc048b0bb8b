#!/usr/bin/env bash
# Train stablesr-mini on the frozen mini-sd prior: stage 1 (time-aware encoder + SFT, official eps-MSE) ->
# stage 2 (CFW fusion at w = 1) -> bundle + model card with the BSD100 w-sweep in assets/weights/stablesr-mini.
#
#   scripts/train_stablesr_mini.sh              # GPU; needs assets/weights/mini-sd (scripts/train_sd_minis.sh)
#   DEVICE=cpu THREADS=2 scripts/train_stablesr_mini.sh      # CPU variant (hours; undertrained)
#   STAGES=sft,cfw scripts/train_stablesr_mini.sh            # on a lent GPU (no eval images there); then
#   STAGES=export scripts/train_stablesr_mini.sh             # here: export + the w-sweep on BSD100 (CPU)
#
# Knobs: DEVICE, PACK, RUNS, STAGES (sft, cfw, export), BUDGET_SFT / BUDGET_CFW (minutes), THREADS, PY,
# PRIOR (default assets/weights/mini-sd), EXTRA_SFT / EXTRA_CFW (more --set key=value), EVAL_LIMIT.
# The CFW stage uses the shift-tolerant LPIPS when SR_LPIPS_WEIGHTS (or the stlpips wheel) is there, else
# pass EXTRA_CFW="--set lambda_lpips=0".  Cost (CPU, one thread, batch 2, HR 64, tiny prior of the tests):
# ~0.3 s per stage-1 step, ~0.5 s per stage-2 step; the mini prior is ~20x the tiny one.  GPU estimate
# (H100, bf16): stage 1 at batch 32 of 128-px HR crops ~40 ms/step (8 min ~ 12000 steps), stage 2 at
# batch 16 ~60 ms/step (5 min ~ 5000 steps) -- estimates, not measurements.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
DEVICE=${DEVICE:-auto}
PACK=${PACK:-packs/train_x4_s256_n320.npz}
RUNS=${RUNS:-runs}
STAGES=${STAGES:-sft,cfw,export}
THREADS=${THREADS:-}
PRIOR=${PRIOR:-assets/weights/mini-sd}
EVAL_LIMIT=${EVAL_LIMIT:-0}
if [ "$DEVICE" = "cpu" ]; then
  BUDGET_SFT=${BUDGET_SFT:-240}; BUDGET_CFW=${BUDGET_CFW:-120}; CPU_SETS=(--set batch_size=4)
else
  BUDGET_SFT=${BUDGET_SFT:-8}; BUDGET_CFW=${BUDGET_CFW:-5}; CPU_SETS=()
fi
COMMON=(--pack "$PACK" --device "$DEVICE" --no-val)
[ -n "$THREADS" ] && COMMON+=(--threads "$THREADS")
has() { [[ ",$STAGES," == *",$1,"* ]]; }

if [ ! -f "$PRIOR/unet/config.json" ]; then
  echo "no mini-sd prior at $PRIOR: run scripts/train_sd_minis.sh first (or set PRIOR=...)" >&2
  exit 2
fi
if has sft; then
  $PY -m sr_core.training stablesr-mini --out "$RUNS/stablesr-mini" --time-budget "$BUDGET_SFT" "${COMMON[@]}" \
      "${CPU_SETS[@]}" --set "prior_from=$PRIOR" ${EXTRA_SFT:-}
fi
if has cfw; then
  $PY -m sr_core.training stablesr-cfw-mini --out "$RUNS/stablesr-cfw-mini" --time-budget "$BUDGET_CFW" \
      "${COMMON[@]}" "${CPU_SETS[@]}" --set "prior_from=$PRIOR" --set "stage1_from=$RUNS/stablesr-mini" ${EXTRA_CFW:-}
fi
if has export; then
  LIMIT=(); [ "$EVAL_LIMIT" != "0" ] && LIMIT=(--eval-limit "$EVAL_LIMIT")
  $PY -m sr_core.training export "$RUNS/stablesr-cfw-mini" --id stablesr-mini "${LIMIT[@]}"
  cat assets/weights/stablesr-mini/MODEL_CARD.md
fi
