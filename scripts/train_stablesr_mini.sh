#!/usr/bin/env bash
# Train stablesr-mini on the frozen mini-sd prior: stage 1 (time-aware encoder + SFT, official eps-MSE) ->
# stage 2 (CFW fusion at w = 1) -> export (bundle + model card with the w-sweep: x4 PSNR-Y at
# w = 0, 0.25, 0.5, 0.75, 1 and bicubic on each eval set present, BSD100 included) -> eval (a cross-check
# through the CLI: `sr_core eval --method stablesr-mini --fidelity W` on EVAL_SETS_CLI, default Set5).
#
#   scripts/train_stablesr_mini.sh                           # GPU, one command (8 + 5 min training)
#   DEVICE=cpu THREADS=1 scripts/train_stablesr_mini.sh      # CPU variant (the bundled one; undertrained)
#   STAGES=sft,cfw scripts/train_stablesr_mini.sh            # on a GPU (no eval images there); then
#   STAGES=export,eval scripts/train_stablesr_mini.sh        # here: export + the w-sweep (CPU)
#   scripts/device.sh prep stablesr                          # a lent GPU machine (minutes, a 64 MiB tree,
#                                                            # <= 8 files back): see scripts/device.sh
#
# The prior: PRIOR (default assets/weights/mini-sd, an exported mini-sd folder).  When the default folder is
# absent and scripts/train_sd_minis.sh exists, it is trained first (STAGES=vae,sd of that script, same
# DEVICE/PACK/RUNS/THREADS) and exported without figures.
#
# Knobs (environment): DEVICE (auto|cuda|cpu), BATCH_SCALE (GPU: batch x K, lr x sqrt K; default 4), PACK, RUNS, STAGES (sft, cfw, export, eval), BUDGET_SFT /
# BUDGET_CFW (minutes; the recipes' max_steps 20000 / 10000 also end a stage), THREADS, PY, PRIOR, INIT_FROM, COMPILE,
# EXTRA_SFT / EXTRA_CFW (more `--set key=value`), EVAL_LIMIT (images per set in the export's sweep; 0 = all),
# EVAL_ROOT (default ../shared/data/eval; the export always reads that one), EVAL_SETS_CLI (sets of the
# eval stage, default "Set5"), ASSETS (bundle root, default assets/weights, the one `sr_core eval` serves).
# Stage 2 adds the shift-tolerant LPIPS (weight 0.1) when SR_LPIPS_WEIGHTS or the stlpips wheel is there;
# otherwise pass EXTRA_CFW="--set lambda_lpips=0" (L1 only).
#
# Costs, measured (CPU, one thread of this project's 2-core machine while another 2-thread training job ran,
# batch 4, LR patch 32 = HR 128 as the recipes, the mini-sd-sized prior with random weights, LPIPS off,
# forward + backward + AdamW): stage 1 ~0.23 s/step (6.4 M trainable of 14.0 M), stage 2 ~0.55 s/step
# (0.8 M trainable; backward through the VAE decoder at HR size).  FLOPs (torch.utils.flop_counter, one
# forward + backward): stage 1 3.2 GFLOP/sample, stage 2 14.3 GFLOP/sample.  Inference: ~3 s per BSD100
# image (LR 120x80, 20 steps, one thread), so the export's sweep (5 w + bicubic) costs ~25 min on BSD100
# and ~8 min more on Set5 + Set14 on the CPU (EVAL_LIMIT cuts it).
# GPU estimates (not measured; no GPU in the session that wrote this): stage 1 at batch 32 is ~0.1
# TFLOP/step, stage 2 at batch 16 ~0.23 TFLOP/step, both dominated by the kernel launches of the many small
# diffusers modules: ~30-40 ms and ~50-60 ms per step on one H100 (bf16), i.e. 8 min ~ 12000 steps and
# 5 min ~ 5000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
DEVICE=${DEVICE:-auto}
PACK=${PACK:-packs/train_x4_s256_n320.npz}
RUNS=${RUNS:-runs}
STAGES=${STAGES:-sft,cfw,export,eval}
THREADS=${THREADS:-}
PRIOR_DEFAULT=assets/weights/mini-sd
PRIOR=${PRIOR:-$PRIOR_DEFAULT}
EVAL_LIMIT=${EVAL_LIMIT:-0}
EVAL_ROOT=${EVAL_ROOT:-../shared/data/eval}
EVAL_SETS_CLI=${EVAL_SETS_CLI:-Set5}
ASSETS=${ASSETS:-assets/weights}
if [ "$DEVICE" = "cpu" ]; then
  # the bundled CPU-trained stablesr-mini (THREADS=1): stage 1 for 99 min (24, then resumed with
  # --time-budget 99), CFW for 80 min with L1 only (it ran beside stage 1 on the other core, from stage 1's
  # 24-min weights; the export takes stage 1's final ones)
  BUDGET_SFT=${BUDGET_SFT:-99}; BUDGET_CFW=${BUDGET_CFW:-80}
  CPU_SFT=(--set batch_size=8); CPU_CFW=(--set batch_size=4 --set lambda_lpips=0)
else
  # GPU: batch x BATCH_SCALE (default 4; lr x its square root).  The first lent H200 run (2026-11-30, recipe
  # batches) trained at 6 it/s (resshift-mini, batch 64) and 1 it/s (sinsr-mini): a few percent of the
  # FLOPs the recipes allow -- the step is bound by ~10^4 kernel launches (`python -m sr_core.training
  # profile RECIPE` counts them), so a larger batch costs little more time per step.  Not yet measured at
  # x4: the first call of a lent session can check it with `profile RECIPE --device cuda --random-sources`.
  BUDGET_SFT=${BUDGET_SFT:-8}; BUDGET_CFW=${BUDGET_CFW:-5}
  G=(--batch-scale "${BATCH_SCALE:-4}"); CPU_SFT=("${G[@]}"); CPU_CFW=("${G[@]}")
fi
COMMON=(--pack "$PACK" --device "$DEVICE" --no-val)
[ -n "$THREADS" ] && COMMON+=(--threads "$THREADS")
[ "${COMPILE:-0}" = 1 ] && COMMON+=(--compile)  # torch.compile'd loss (see train_resshift_minis.sh)
has() { [[ ",$STAGES," == *",$1,"* ]]; }
# warm start: INIT_FROM=a stablesr-mini bundle or run -> stage 1 continues from its encoder + SFT, stage 2 from
# its CFW fusion (encoder + SFT from this call's stage 1), at WARM_LR x the learning rate (default 0.5).  Only
# on the prior it was trained on (a new mini-sd means training from scratch)
INIT=()
[ -n "${INIT_FROM:-}" ] && INIT=(--set "init_from=$INIT_FROM" --lr-scale "${WARM_LR:-0.5}")

# preflight: the perceptual weights of stage 2 (or an explicit lambda_lpips=0)
if has cfw; then
  "$PY" -c "from sr_core.training.perceptual import resolve_lpips_weights as r; print('LPIPS weights:', r())" || {
    [[ "${EXTRA_CFW:-} ${CPU_CFW[*]:-}" == *"lambda_lpips=0"* ]] || {
      echo "no LPIPS weights: set SR_LPIPS_WEIGHTS or pass EXTRA_CFW=\"--set lambda_lpips=0\"" >&2; exit 1; }; }
fi

# the prior
if [ ! -f "$PRIOR/unet/config.json" ] && { has sft || has cfw || has export; }; then
  if [ "$PRIOR" = "$PRIOR_DEFAULT" ] && [ -x scripts/train_sd_minis.sh ]; then
    echo "== no mini-sd prior at $PRIOR: training it (scripts/train_sd_minis.sh, STAGES=vae,sd)"
    STAGES=vae,sd DEVICE="$DEVICE" PACK="$PACK" RUNS="$RUNS" THREADS="$THREADS" PY="$PY" scripts/train_sd_minis.sh
    "$PY" -m sr_core.training export "$RUNS/mini-sd" --no-eval | tee "$RUNS/mini-sd/export.json"
  else
    echo "no mini-sd prior at $PRIOR: run scripts/train_sd_minis.sh first (or set PRIOR=...)" >&2
    exit 2
  fi
fi

if [ ! -f "$PACK" ]; then
  echo "== building the training pack $PACK (../shared/data/train/*)"
  "$PY" -m sr_core.training pack --out "$PACK"
fi

if has sft; then
  echo "== stage 1: stablesr-mini (time-aware encoder + SFT on the frozen mini-sd, eps-MSE)"
  "$PY" -m sr_core.training stablesr-mini --out "$RUNS/stablesr-mini" --time-budget "$BUDGET_SFT" "${COMMON[@]}" \
      "${CPU_SFT[@]}" --set "prior_from=$PRIOR" "${INIT[@]}" ${EXTRA_SFT:-}
fi
if has cfw; then
  echo "== stage 2: stablesr-cfw-mini (CFW fusion at w = 1, on stage 1)"
  "$PY" -m sr_core.training stablesr-cfw-mini --out "$RUNS/stablesr-cfw-mini" --time-budget "$BUDGET_CFW" \
      "${COMMON[@]}" "${CPU_CFW[@]}" --set "prior_from=$PRIOR" --set "stage1_from=$RUNS/stablesr-mini" "${INIT[@]}" \
      ${EXTRA_CFW:-}
fi
if has export; then
  echo "== export: assets/weights/stablesr-mini + model card with the w-sweep"
  LIMIT=(); [ "$EVAL_LIMIT" != "0" ] && LIMIT=(--eval-limit "$EVAL_LIMIT")
  "$PY" -m sr_core.training export "$RUNS/stablesr-cfw-mini" --id stablesr-mini --assets "$ASSETS" "${LIMIT[@]}" \
      | tee "$RUNS/stablesr-cfw-mini/export.json"
  sed -n '/^## Fidelity/,$p' "$ASSETS/stablesr-mini/MODEL_CARD.md"
fi
if has eval && [ "$ASSETS" != "assets/weights" ]; then
  echo "(eval stage skipped: sr_core eval serves assets/weights/stablesr-mini, ASSETS is $ASSETS)"
elif has eval; then
  echo "== sr_core eval --method stablesr-mini over w (CLI cross-check; sets: $EVAL_SETS_CLI)"
  for s in $EVAL_SETS_CLI; do
    [ -d "$EVAL_ROOT/$s/HR" ] || { echo "($EVAL_ROOT/$s/HR absent: skipped)"; continue; }
    LIM=(); [ "$EVAL_LIMIT" != "0" ] && LIM=(--limit "$EVAL_LIMIT")
    for w in 0 0.25 0.5 0.75 1; do
      echo "-- $s, w = $w"
      "$PY" -m sr_core eval --method stablesr-mini --fidelity "$w" --hr "$EVAL_ROOT/$s/HR" --device "$DEVICE" \
        "${LIM[@]}" --json "$RUNS/stablesr-cfw-mini/eval_${s}_w$w.json" | tail -2
    done
  done
fi
echo "done: $ASSETS/stablesr-mini; runs in $RUNS/stablesr-mini, $RUNS/stablesr-cfw-mini"
